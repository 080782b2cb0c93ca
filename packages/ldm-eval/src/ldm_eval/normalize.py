"""Reference-normalized scores: 0% at a reference run's first 10% of episodes, 100% at its last.

Each env is scored against one *reference run* of the dataset index (paper section 5.1): the
mean return of that run's first 10% of episodes is 0%, of its last 10% is 100%.

**Which run.** AutoRL keeps up to N runs per env (top-N candidates, filtered), so there may be
several. The reference is the kept run with the highest last-10% mean return (ties: the
smallest run key). The filter keeps only runs within 95% of the best final performance, so
this is the level the dataset's best demonstrator reached on that env: 100% means the LDM
matches the best policy it learned from, not an average of them. Both ends come from the same
run, so the 0%-100% range is one learning curve. Envs with runs but none kept have no
reference (`reference_status = "no kept run"`), envs absent from the index neither
(`"not in index"`); their scores stay null. A range that is empty or inverted (last <= first)
cannot normalize anything (`"degenerate"`).

The 10% windows are recomputed from the episodes table over *all* parts of a run (a run may be
sharded), with the filter's rule: ceil(10%) of the complete episodes, at least one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import polars as pl

from ldm_envs.stats import first_last_means as edge_means

__all__ = [
    "REFERENCE_RULE",
    "REFERENCE_SCHEMA",
    "edge_means",
    "normalized_score",
    "reference_runs",
]

REFERENCE_RULE = "best kept run by last-10% mean return"

REFERENCE_SCHEMA: dict[str, pl.DataType] = {
    "library": pl.String(),
    "env_id": pl.String(),
    "reference_status": pl.String(),
    "reference_run_key": pl.String(),
    "reference_candidate": pl.String(),
    "reference_seed": pl.Int64(),
    "reference_mlflow_run_id": pl.String(),
    "ref_first10": pl.Float64(),
    "ref_last10": pl.Float64(),
    "ref_episodes": pl.Int64(),
    # what the filter recorded (ldm-autorl): a random policy's mean return on the env, the
    # best score rl-baselines3-zoo publishes for it, and the reference's last-10% on that scale
    "ref_random_mean": pl.Float64(),
    "zoo_best": pl.Float64(),
    "zoo_algo": pl.String(),
    "zoo_budget": pl.Int64(),
    "ref_pct_of_zoo": pl.Float64(),
    # the reference's final policy acting deterministically (what the zoo reports)
    "ref_final_mean": pl.Float64(),
    "ref_final_pct_of_zoo": pl.Float64(),
    "ref_beats_random": pl.Boolean(),
    # the reference's improvement (last - first 10%) is within the spread of its own windows,
    # or it is not better than random: scores normalized by it swing wildly
    "ref_ill_conditioned": pl.Boolean(),
    "kept_runs": pl.Int64(),
    "runs": pl.Int64(),
    "index_observation_space": pl.String(),
    "index_action_space": pl.String(),
}


def normalized_score(value: float | None, first: float | None, last: float | None) -> float | None:
    """`(value - first) / (last - first)`: 0.0 at the reference's start, 1.0 at its end.

    None when any input is missing or the range is empty or inverted.
    """
    if value is None or first is None or last is None:
        return None
    if not all(math.isfinite(x) for x in (value, first, last)) or last <= first:
        return None
    return (value - first) / (last - first)


def _run_returns(runs: pl.DataFrame, episodes: pl.DataFrame) -> dict[str, list[float]]:
    """Complete-episode returns of each run, in order, across its shards."""
    if episodes.is_empty():
        return {}
    parts = runs.select("shard_path", "part")
    ordered = (
        episodes.filter(pl.col("complete"))
        .join(parts, on="shard_path", how="left")
        .sort("run_key", "part", "start")
        .group_by("run_key", maintain_order=True)
        .agg(pl.col("return"))
    )
    return dict(zip(ordered["run_key"].to_list(), ordered["return"].to_list(), strict=True))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _filter_context(stats: str | None, first: float | None, last: float | None) -> dict:
    """Random, zoo and noise columns of a run from its filter stats (empty when absent)."""
    try:
        data = json.loads(stats) if stats else {}
    except ValueError:
        data = {}
    spreads = [_number(data.get("first10_std")), _number(data.get("last10_std"))]
    noisy = None
    if first is not None and last is not None and all(x is not None for x in spreads):
        pooled = math.sqrt((spreads[0] ** 2 + spreads[1] ** 2) / 2)  # type: ignore[operator]
        noisy = (last - first) <= pooled
    beats = data.get("beats_random")
    beats = beats if isinstance(beats, bool) else None
    return {
        "ref_random_mean": _number(data.get("random_mean")),
        "zoo_best": _number(data.get("zoo_best")),
        "zoo_algo": data.get("zoo_algo") if isinstance(data.get("zoo_algo"), str) else None,
        "zoo_budget": int(data["zoo_budget"]) if _number(data.get("zoo_budget")) else None,
        "ref_pct_of_zoo": _number(data.get("pct_of_zoo")),
        "ref_final_mean": _number(data.get("final_mean")),
        "ref_final_pct_of_zoo": _number(data.get("final_pct_of_zoo")),
        "ref_beats_random": beats,
        "ref_ill_conditioned": None
        if noisy is None and beats is None
        else bool(noisy) or beats is False,
    }


def _filter_edges(stats: str | None) -> tuple[float | None, float | None]:
    """The first/last-10% means the filter computed for the whole run, when it recorded them.

    They are preferred over recomputing from the episodes table: a run trained on n parallel
    envs is stored as n shards (parts), one per env, and only the filter saw the episodes in
    the order they finished across them. Concatenating parts would put env 0's whole training
    first and env n-1's last.
    """
    if not stats:
        return None, None
    try:
        data = json.loads(stats)
    except ValueError:
        return None, None
    first, last = data.get("first10_mean"), data.get("last10_mean")
    if isinstance(first, int | float) and isinstance(last, int | float):
        return float(first), float(last)
    return None, None


def reference_runs(
    runs: pl.DataFrame,
    episodes: pl.DataFrame,
    envs: Sequence[tuple[str, str]] | None = None,
) -> pl.DataFrame:
    """One row per env: its reference run and the run's first/last-10% mean returns.

    Args:
        runs: the index's runs table (one row per shard).
        episodes: the index's episodes table.
        envs: (library, env_id) pairs to describe; envs not in the index get a row with
            `reference_status = "not in index"`. Default: every env of the index.

    Returns:
        A frame with `REFERENCE_SCHEMA`'s columns; `reference_status` is `ok` when the env
        has a usable reference.
    """
    returns = _run_returns(runs, episodes)
    per_run = (
        runs.group_by("run_key", maintain_order=True)
        .agg(
            pl.col("library").first(),
            pl.col("env_id").first(),
            pl.col("candidate").first(),
            pl.col("seed").first(),
            pl.col("mlflow_run_id").first(),
            pl.col("observation_space").first(),
            pl.col("action_space").first(),
            # every shard of a run carries the run's decision; undecided counts as not kept
            pl.col("kept").fill_null(False).all().alias("kept"),
            *([pl.col("stats").first()] if "stats" in runs.columns else []),
        )
        .to_dicts()
    )
    by_env: dict[tuple[str, str], list[dict]] = {}
    for run in per_run:
        first, last = _filter_edges(run.get("stats"))
        if first is None or last is None:
            first, last = edge_means(returns.get(run["run_key"], []))
        run.update(first10=first, last10=last, n_episodes=len(returns.get(run["run_key"], [])))
        by_env.setdefault((run["library"], run["env_id"]), []).append(run)
    wanted = list(envs) if envs is not None else sorted(by_env)
    rows = []
    for library, env_id in wanted:
        candidates = by_env.get((library, env_id), [])
        kept = [r for r in candidates if r["kept"] and r["last10"] is not None]
        row: dict = {
            "library": library,
            "env_id": env_id,
            "kept_runs": sum(r["kept"] for r in candidates),
            "runs": len(candidates),
            "index_observation_space": candidates[0]["observation_space"] if candidates else None,
            "index_action_space": candidates[0]["action_space"] if candidates else None,
        }
        if not candidates:
            row["reference_status"] = "not in index"
        elif not kept:
            row["reference_status"] = "no kept run"
        else:
            best = min(kept, key=lambda r: (-r["last10"], r["run_key"]))
            degenerate = normalized_score(best["last10"], best["first10"], best["last10"]) is None
            row.update(
                reference_status="degenerate" if degenerate else "ok",
                reference_run_key=best["run_key"],
                reference_candidate=best["candidate"],
                reference_seed=best["seed"],
                reference_mlflow_run_id=best["mlflow_run_id"],
                ref_first10=best["first10"],
                ref_last10=best["last10"],
                ref_episodes=best["n_episodes"],
                **_filter_context(best.get("stats"), best["first10"], best["last10"]),
            )
        rows.append(row)
    return pl.DataFrame(rows, schema=REFERENCE_SCHEMA)
