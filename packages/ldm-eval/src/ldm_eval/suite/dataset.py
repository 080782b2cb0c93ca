"""What the suite's dataset root holds for the suite's envs, read from its index.

The autorl stage logs it, the report shows it: read from the index (not from the evaluation,
which only plans the envs the model was trained on), so an env whose runs were all dropped is
still listed, with the filter's reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldm_eval.suite.config import Suite

__all__ = ["dataset_summary", "suite_references"]


def dataset_summary(root: Path, suite: Suite) -> Any:
    """Per library: envs, runs, kept runs, transitions (kept / all) of the suite's envs."""
    import polars as pl

    from ldm_envs.dataset.index import read_index

    runs, _ = read_index(root)
    wanted = suite.env_ids()
    rows = []
    for library, envs in wanted.items():
        part = runs.filter((pl.col("library") == library) & pl.col("env_id").is_in(envs))
        kept = part.filter(pl.col("kept").fill_null(False))
        rows.append(
            {
                "library": library,
                "envs": len(envs),
                "envs_with_runs": part["env_id"].n_unique(),
                "envs_kept": kept["env_id"].n_unique(),
                "runs": part.select(pl.col("run_key").n_unique()).item(),
                "runs_kept": kept.select(pl.col("run_key").n_unique()).item(),
                "transitions": int(part["rows"].sum() or 0),
                "transitions_kept": int(kept["rows"].sum() or 0),
            }
        )
    return pl.DataFrame(rows)


def suite_references(suite: Suite) -> Any:
    """Every env of the suite with its reference run, or why it has none.

    Read from the dataset index (not the evaluation, which only plans the envs the model was
    trained on), so an env whose runs were all dropped is listed with the filter's reasons.
    """
    import polars as pl

    from ldm_envs.dataset.index import read_index
    from ldm_eval.normalize import reference_runs

    pairs = [(lib, env) for lib, envs in suite.env_ids().items() for env in envs]
    runs, episodes = read_index(suite.dataset_root)
    refs = reference_runs(runs, episodes, pairs)
    reasons = (
        runs.filter(~pl.col("kept").fill_null(False))
        .group_by("library", "env_id")
        .agg(pl.col("reason").drop_nulls().unique().sort().str.join("; ").alias("dropped"))
    )
    return refs.join(reasons, on=["library", "env_id"], how="left")
