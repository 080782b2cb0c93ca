"""Aggregates over normalized scores: threshold curves, IQM and median with bootstrap CIs.

Pure functions over Polars frames and NumPy arrays; nothing here steps an env.

* **Performance-threshold curve** (paper section 5.1): for x from 0% to 150% of reference, the
  number and the fraction of envs whose score is at least x, per library and over all envs.
  The denominator is the scored envs: failed envs are listed beside the curve (`failed_envs`)
  rather than counted as zero, because a worker crash says nothing about the policy.
* **IQM and median** (rliable's recommendation for few-run RL results) with **stratified
  bootstrap** confidence intervals: each resample draws envs with replacement *within each
  library*, so a library with many envs cannot crowd out one with few. It is
  `scipy.stats.bootstrap` with one sample per library (scipy resamples each sample on its own).
  A library with a single env has nothing to resample: it enters every resample unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
from scipy import stats

__all__ = [
    "ALL",
    "SUMMARY_SCHEMA",
    "THRESHOLDS",
    "fraction_at_least",
    "iqm",
    "stratified_bootstrap_ci",
    "summarize",
    "threshold_curve",
]

#: Label of the row/curve that pools every library.
ALL = "all"
#: Thresholds of the curve, as fractions of reference: 0%, 1%, ..., 150%.
THRESHOLDS = np.round(np.arange(0, 151) / 100, 2)
#: Scores are ratios of float differences: a score of 0.8 may come out as 0.7999999999.
_EPS = 1e-9


SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "policy": pl.String(),
    "library": pl.String(),
    "envs": pl.Int64(),
    "scored_envs": pl.Int64(),
    "failed_envs": pl.Int64(),
    "missing_envs": pl.Int64(),
    "unreferenced_envs": pl.Int64(),
    **{
        f"{stat}{end}": pl.Float64()
        for stat in ("iqm", "median", "mean")
        for end in ("", "_low", "_high")
    },
    "frac_at_least_80": pl.Float64(),
    "frac_at_least_100": pl.Float64(),
}


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (25% trimmed at each end)."""
    return stats.trim_mean(x, 0.25, axis=axis)


def fraction_at_least(scores: Sequence[float] | np.ndarray, threshold: float) -> float:
    """Share of `scores` at or above `threshold` (NaN when there are none).

    The trainer's scaling metric: share of envs at >= 80% of reference is
    `fraction_at_least(scores, 0.8)`.
    """
    arr = np.asarray(scores, dtype=np.float64)
    return float(np.mean(arr >= threshold - _EPS)) if arr.size else float("nan")


def stratified_bootstrap_ci(
    strata: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    method: str = "percentile",
    seed: int = 0,
) -> tuple[float, float]:
    """Confidence interval of `statistic(pooled scores)` resampling within each stratum.

    Args:
        strata: one array of scores per stratum (library).
        statistic: `f(x, axis=-1)` over pooled scores (`iqm`, `np.median`, `np.mean`).
        confidence: the interval's level.
        n_resamples: bootstrap resamples.
        method: scipy's `percentile`, `basic` or `BCa`.
        seed: the resampling RNG's seed (the interval is reproducible).

    Returns:
        (low, high); (nan, nan) when no stratum has two scores (nothing to resample).
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in strata if len(s)]
    varying = [a for a in arrays if a.size >= 2]
    fixed = np.concatenate([a for a in arrays if a.size < 2] or [np.empty(0)])
    if not varying:
        return float("nan"), float("nan")

    def pooled(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = samples[0].shape[:-1]
        parts = [*samples, np.broadcast_to(fixed, (*lead, fixed.size))]
        return statistic(np.concatenate(parts, axis=-1), axis=-1)

    res = stats.bootstrap(
        tuple(varying),
        pooled,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _libraries(scores: pl.DataFrame) -> list[str]:
    return sorted(scores["library"].unique().to_list())


def threshold_curve(scores: pl.DataFrame, thresholds: np.ndarray = THRESHOLDS) -> pl.DataFrame:
    """Envs at or above each threshold, per policy and library, and pooled (`library="all"`).

    Args:
        scores: `scores.score_envs`'s frame (`policy`, `library`, `score`, `scored`, `status`).
        thresholds: fractions of reference.

    Returns:
        Columns `policy`, `library`, `threshold` (fraction), `threshold_pct`, `envs_at_least`,
        `fraction`, `scored_envs`, `failed_envs`.
    """
    rows = []
    for policy in scores["policy"].unique(maintain_order=True).to_list():
        mine = scores.filter(pl.col("policy") == policy)
        for library in [ALL, *_libraries(mine)]:
            part = mine if library == ALL else mine.filter(pl.col("library") == library)
            values = part.filter(pl.col("scored"))["score"].to_numpy()
            failed = part.filter(pl.col("status").is_in(["failed", "timeout"])).height
            counts = (values[None, :] >= thresholds[:, None] - _EPS).sum(axis=1)
            for x, c in zip(thresholds, counts, strict=True):
                rows.append(
                    {
                        "policy": policy,
                        "library": library,
                        "threshold": float(x),
                        "threshold_pct": round(float(x) * 100, 6),
                        "envs_at_least": int(c),
                        "fraction": float(c / values.size) if values.size else None,
                        "scored_envs": int(values.size),
                        "failed_envs": failed,
                    }
                )
    return pl.DataFrame(
        rows,
        schema={
            "policy": pl.String,
            "library": pl.String,
            "threshold": pl.Float64,
            "threshold_pct": pl.Float64,
            "envs_at_least": pl.Int64,
            "fraction": pl.Float64,
            "scored_envs": pl.Int64,
            "failed_envs": pl.Int64,
        },
    )


def summarize(
    scores: pl.DataFrame,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pl.DataFrame:
    """IQM, median and mean with bootstrap CIs, per policy and library, and pooled.

    A library's interval resamples its envs; the pooled (`all`) interval is stratified by
    library. Also counts envs by outcome and the shares at >= 80% and >= 100% of reference.
    """
    rows = []
    for policy in scores["policy"].unique(maintain_order=True).to_list():
        mine = scores.filter(pl.col("policy") == policy)
        libraries = _libraries(mine)
        for library in [ALL, *libraries]:
            part = mine if library == ALL else mine.filter(pl.col("library") == library)
            groups = [library] if library != ALL else libraries
            strata = [
                part.filter(pl.col("scored") & (pl.col("library") == g))["score"].to_numpy()
                for g in groups
            ]
            values = np.concatenate(strata) if strata else np.empty(0)
            row = {
                "policy": policy,
                "library": library,
                "envs": part.height,
                "scored_envs": int(values.size),
                "failed_envs": part.filter(pl.col("status").is_in(["failed", "timeout"])).height,
                "missing_envs": part.filter(pl.col("status") == "missing").height,
                "unreferenced_envs": part.filter(
                    (pl.col("status") == "ok") & ~pl.col("scored")
                ).height,
            }
            for name, fn in (("iqm", iqm), ("median", np.median), ("mean", np.mean)):
                point = float(fn(values)) if values.size else None
                low, high = (
                    stratified_bootstrap_ci(
                        strata, fn, confidence=confidence, n_resamples=n_resamples, seed=seed
                    )
                    if values.size
                    else (None, None)
                )
                row.update({name: point, f"{name}_low": low, f"{name}_high": high})
            row["frac_at_least_80"] = fraction_at_least(values, 0.8) if values.size else None
            row["frac_at_least_100"] = fraction_at_least(values, 1.0) if values.size else None
            rows.append(row)
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA)
