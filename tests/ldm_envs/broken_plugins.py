"""Targets for hand-made entry points in test_plugins.py (each broken in one way)."""

from pathlib import Path

GOOD = {
    "name": "good",
    "version": "1.0",
    "environment": {"requirements": ["gymnasium"]},
    "envs": [{"id": "CartPole-v1"}],
}
UNKNOWN_FIELD = {**GOOD, "name": "unknown-field", "colour": "blue"}
BAD_ENV_ID = {**GOOD, "name": "bad-env-id", "envs": [{"id": "CartPole"}]}
BAD_SUBSET = {**GOOD, "name": "bad-subset", "ranking_subset": ["Nope-v0"]}
WRONG_NAME = {**GOOD, "name": "something-else"}
BAD_API = {**GOOD, "name": "bad-api", "environment": {"requirements": ["x"], "api": "gym99"}}
TOO_BIG = {
    **GOOD,
    "name": "too-big",
    "envs": [
        {
            "id": "Big-v0",
            "observation_space": {"type": "box", "shape": [200], "low": 0.0, "high": 1.0},
            "action_space": {"type": "discrete", "n": 2},
        }
    ],
}
MISSING_FILE = Path("/nonexistent/manifest.yaml")


def make_good():
    return GOOD


def raises():
    raise RuntimeError("boom while building the manifest")
