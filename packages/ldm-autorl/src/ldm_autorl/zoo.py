"""rl-baselines3-zoo's published benchmark: how good a tuned SB3 policy gets on an env.

The paper normalizes the LDM against its own reference runs; a reader also needs to know how
good those references are. `data/zoo_benchmark.csv` holds the zoo's published scores
(`benchmark.md`, one run per algorithm and env, deterministic evaluation) for the envs an ldm
library declares, with the zoo's own env id beside ldm's and a note where versions differ.

`% of zoo` puts a return on the scale random policy = 0, best zoo policy = 1:
`(return - random) / (zoo best - random)`. It is None where either end is unknown or the zoo
is not better than random (nothing to scale by).
"""

from __future__ import annotations

import math
from functools import cache
from importlib.resources import files

import polars as pl
from pydantic import BaseModel

__all__ = ["ZOO_SOURCE", "ZooScore", "pct_of_zoo", "zoo_best", "zoo_table"]

ZOO_SOURCE = "https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md"


class ZooScore(BaseModel):
    """The zoo's best published mean return on one env, and what produced it."""

    library: str
    env_id: str
    algo: str
    zoo_env_id: str
    mean_reward: float
    std_reward: float
    n_timesteps: int
    note: str = ""


@cache
def zoo_table() -> pl.DataFrame:
    """Every shipped benchmark row (library, env_id, algo, mean_reward, n_timesteps, ...)."""
    path = files("ldm_autorl") / "data" / "zoo_benchmark.csv"
    with path.open("rb") as fh:
        return pl.read_csv(fh, comment_prefix="#", schema_overrides={"note": pl.String})


def zoo_best(library: str, env_id: str) -> ZooScore | None:
    """The zoo's highest mean return on this env over its algorithms (None: not benchmarked).

    Ties go to the smallest training budget: what it takes to get there.
    """
    rows = zoo_table().filter((pl.col("library") == library) & (pl.col("env_id") == env_id))
    if rows.is_empty():
        return None
    # ties (CartPole's 500 by six algorithms) go to the smallest budget, then the name
    best = rows.sort(["mean_reward", "n_timesteps", "algo"], descending=[True, False, False]).row(
        0, named=True
    )
    return ZooScore.model_validate({**best, "note": best["note"] or ""})


def pct_of_zoo(value: float | None, random: float | None, zoo: float | None) -> float | None:
    """`(value - random) / (zoo - random)`: 0 at the random policy, 1 at the zoo's best."""
    if value is None or random is None or zoo is None:
        return None
    if not all(math.isfinite(x) for x in (value, random, zoo)) or zoo <= random:
        return None
    return (value - random) / (zoo - random)
