"""How likely each run is to give a window: the sampler's `weighting`.

The choice decides what the model sees most: with `"transitions"` one large env dominates the
data, so the default weighs envs (or libraries, then their envs) equally and only then runs by
their rows. The result is one probability per run; the sampler draws from its cumulative sum.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

__all__ = ["WEIGHTINGS", "Weighting", "run_probabilities"]

Weighting = Literal["transitions", "env", "library"]
WEIGHTINGS: tuple[str, ...] = ("transitions", "env", "library")


def run_probabilities(
    weighting: Weighting, envs: pl.DataFrame, run_env: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Probability of each run per window.

    Args:
        weighting: `"transitions"` (every transition equally likely), `"env"` (every env, then
            its runs by rows) or `"library"` (every library, then its envs, then runs by rows).
        envs: one row per env with `library` and `transitions` (their sum over its runs).
        run_env: the env (row of `envs`) of each run.
        rows: the rows of each run.
    """
    if weighting == "transitions":
        return rows / rows.sum()
    env_rows = envs["transitions"].to_numpy()[run_env].astype(np.float64)
    share = np.full(envs.height, 1.0 / envs.height)
    if weighting == "library":
        libs = envs["library"].to_numpy()
        names, lib_of, per_lib = np.unique(libs, return_inverse=True, return_counts=True)
        share = 1.0 / (len(names) * per_lib[lib_of])
    return share[run_env] * rows / env_rows
