"""Benchmark: CartPole env-steps/s through the isolated backends vs Gymnasium's vector envs.

Usage: uv run python tools/bench_envs.py [--backend venv --backend docker] [--workers 2]
(the same as `uv run ldm-envs bench`). Figures go into packages/ldm-envs/README.md.
"""

from ldm_envs.cli import app

if __name__ == "__main__":
    app(["bench", *__import__("sys").argv[1:]])
