"""Benchmark: SB3 PPO trainings running side by side, as ldm-autorl runs them, per transport.

Usage: uv run python tools/bench_envs_loaded.py [--trainings 2] [--rounds 2] [--timesteps 12000]

Shared-memory steps spin while they wait; on a machine whose cores are all busy, spinning
would take a core from the process waited for. This times N concurrent trainings (each its own
process, 8 CartPole envs, `one-epoch` PPO) in-process, through venv with shared memory (the
default, spinning only while a CPU is free), and through venv with the socket alone, and prints
the summed steps/s of each round and the ratios to in-process. Figures go into
packages/ldm-envs/README.md.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from typing import Annotated

import typer

MODES = ("in-process", "shared-memory", "socket")


def _one(mode: str, timesteps: int) -> float:
    from stable_baselines3.common.env_util import make_vec_env

    from ldm_envs.bench import ENV_ID, LIBRARY, PPO_CONFIGS, _ppo_steps_per_second
    from ldm_envs.plugins import registry
    from ldm_envs.sb3 import LDMSB3VecEnv

    spec = registry().get(LIBRARY)
    if mode == "in-process":
        return _ppo_steps_per_second(
            lambda: make_vec_env(ENV_ID, n_envs=8, seed=0), timesteps, PPO_CONFIGS["one-epoch"]
        )
    return _ppo_steps_per_second(
        lambda: LDMSB3VecEnv(spec, ENV_ID, 8, shared_memory=mode == "shared-memory"),
        timesteps,
        PPO_CONFIGS["one-epoch"],
    )


def main(
    trainings: Annotated[int, typer.Option(help="concurrent trainings")] = 2,
    rounds: Annotated[int, typer.Option(help="rounds; each times every mode once")] = 2,
    timesteps: Annotated[int, typer.Option(help="PPO transitions per training")] = 12_000,
    child: Annotated[str, typer.Option(hidden=True)] = "",
) -> None:
    if child:
        print(_one(child, timesteps))
        return
    totals: dict[str, list[float]] = {mode: [] for mode in MODES}
    for r in range(rounds):
        for mode in MODES:
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--child", mode, "--timesteps", str(timesteps)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(trainings)
            ]
            outs = [p.communicate()[0] for p in procs]
            if any(p.returncode for p in procs):
                raise SystemExit(f"a {mode} training failed")
            total = sum(float(o.strip().splitlines()[-1]) for o in outs)
            totals[mode].append(total)
            print(f"round {r + 1}: {trainings} x PPO {mode}: {total:,.0f} steps/s in all")
    base = totals["in-process"]
    for mode in MODES[1:]:
        ratios = [a / b for a, b in zip(totals[mode], base, strict=True)]
        print(
            f"{mode} / in-process, {trainings} trainings at once: median "
            f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})"
        )


if __name__ == "__main__":
    typer.run(main)
