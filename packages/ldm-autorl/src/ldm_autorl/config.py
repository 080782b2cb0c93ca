"""The autorl stage's config: what `ldm-autorl rank`, `train`, `filter` and `run` do with a library.

One model for the whole stage (rank -> train -> filter): `ldm-autorl`'s options are derived
from its fields (`ldm_envs.cli_options`), so each default and help text is written here once,
and a suite library (`ldm_eval.suite.config.LibraryConfig`) embeds it. The budgets, top-N,
candidates, env ids, seeds, backend and random episodes decide what the stage makes; the
executor, its address, the parallel runs and the restarts only how it runs. A light module
(pydantic and `ldm_envs.backends`): the suite loads it without SB3, and the stage's modules
take their defaults from it (`jobs.MAX_WORKER_RESTARTS`, `random_baseline.DEFAULT_EPISODES`,
the budgets).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ldm_envs.backends import BACKENDS, DEFAULT_BACKEND

__all__ = ["EXECUTION_FIELDS", "AutoRLConfig"]

#: Fields that say how the stage runs, not what it makes.
EXECUTION_FIELDS: frozenset[str] = frozenset({"executor", "address", "parallel", "max_restarts"})


class AutoRLConfig(BaseModel):
    """Everything the autorl stage needs besides the library and the data root."""

    model_config = ConfigDict(extra="forbid")

    rank_budget: int = Field(default=10_000, gt=0, description="transitions per ranking run")
    train_budget: int = Field(default=20_000, gt=0, description="transitions per reference run")
    top_n: int = Field(default=3, gt=0, description="best compatible candidates per env")
    #: None: every registered candidate (`ldm-autorl list LIB`).
    candidates: list[str] | None = Field(
        default=None, min_length=1, description="only these candidates"
    )
    #: Ranking always uses the library's 5-env ranking subset.
    envs: list[str] | None = Field(
        default=None,
        min_length=1,
        description="reference runs on these env ids only (default: all)",
    )
    seeds: list[int] = Field(default=[0], min_length=1, description="seed(s), repeatable")
    backend: str = Field(default=DEFAULT_BACKEND, description="isolation backend: venv | docker")
    random_episodes: int = Field(
        default=20,
        ge=0,
        description="episodes of a random policy per env, the bar a reference must clear and "
        "the zero of %-of-zoo (measured once per data root; 0: skip)",
    )
    executor: str = Field(default="local", description="local | ray")
    address: str | None = Field(
        default=None, description="Ray cluster address (default: a local Ray)"
    )
    parallel: int | None = Field(
        default=None, gt=0, description="parallel runs (local executor; default: cores)"
    )
    max_restarts: int = Field(
        default=3,
        ge=0,
        description="env-worker restarts a run survives (each cuts its envs' episodes, which "
        "are marked and left out of the statistics); one more fails the run, naming the cause",
    )

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; known: {', '.join(BACKENDS)}")
        return value

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str) -> str:
        from ldm_autorl.executors import EXECUTORS

        if value not in EXECUTORS:
            raise ValueError(f"unknown executor {value!r}; known: {', '.join(EXECUTORS)}")
        return value
