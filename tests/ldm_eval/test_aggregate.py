"""Threshold curves, IQM and stratified bootstrap CIs against hand-computed values."""

import math

import numpy as np
import polars as pl
import pytest

from ldm_eval.aggregate import (
    fraction_at_least,
    iqm,
    stratified_bootstrap_ci,
    summarize,
    threshold_curve,
)


def scores_frame(rows):
    """rows: (policy, library, score or None, status)."""
    return pl.DataFrame(
        [
            {"policy": p, "library": lib, "score": s, "scored": s is not None, "status": st}
            for p, lib, s, st in rows
        ],
        schema={
            "policy": pl.String,
            "library": pl.String,
            "score": pl.Float64,
            "scored": pl.Boolean,
            "status": pl.String,
        },
    )


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm(np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])) == pytest.approx(0.5)  # [0, 0, 1, 1]
    assert iqm(np.array([-100.0, 1.0, 2.0, 100.0])) == pytest.approx(1.5)  # outliers trimmed


def test_fraction_at_least_tolerates_rounding():
    assert fraction_at_least([0.5, 0.8, 1.0, 1.2], 0.8) == 0.75
    assert fraction_at_least([(0.9 - 0.1) / 1.0], 0.8) == 1.0  # 0.8000000000000002 or 0.79999..
    assert fraction_at_least([0.79], 0.8) == 0.0
    assert math.isnan(fraction_at_least([], 0.8))


def test_threshold_curve_counts_per_library_and_pooled():
    df = scores_frame(
        [
            ("ldm", "a", 0.5, "ok"),
            ("ldm", "a", 0.8, "ok"),
            ("ldm", "b", 1.0, "ok"),
            ("ldm", "b", 1.2, "ok"),
            ("ldm", "b", None, "failed"),
            ("ldm", "b", -0.3, "ok"),
            ("random", "a", 0.0, "ok"),
        ]
    )
    curve = threshold_curve(df)
    assert curve.filter(pl.col("policy") == "ldm").height == 3 * 151  # all, a, b

    def at(policy, library, pct):
        row = curve.filter(
            (pl.col("policy") == policy)
            & (pl.col("library") == library)
            & (pl.col("threshold_pct") == pct)
        ).row(0, named=True)
        return row["envs_at_least"], row["fraction"]

    assert at("ldm", "all", 0) == (4, 4 / 5)  # -0.3 is below 0%
    assert at("ldm", "all", 80) == (3, 3 / 5)
    assert at("ldm", "all", 100) == (2, 2 / 5)
    assert at("ldm", "all", 121) == (0, 0.0)
    assert at("ldm", "all", 150) == (0, 0.0)
    assert at("ldm", "a", 80) == (1, 1 / 2)
    assert at("ldm", "b", 100) == (2, 2 / 3)
    assert at("random", "all", 0) == (1, 1.0)
    pooled = curve.filter((pl.col("policy") == "ldm") & (pl.col("library") == "all"))
    assert set(pooled["scored_envs"]) == {5} and set(pooled["failed_envs"]) == {1}
    assert pooled["threshold_pct"].to_list() == list(range(151))


def test_stratified_bootstrap_resamples_within_libraries():
    zeros, ones = np.zeros(3), np.ones(3)
    # every stratified resample holds three 0s and three 1s: the IQM never moves
    assert stratified_bootstrap_ci([zeros, ones], iqm, n_resamples=500) == (0.5, 0.5)
    # pooled without strata it would (resamples with more 0s or more 1s)
    low, high = stratified_bootstrap_ci([np.r_[zeros, ones]], iqm, n_resamples=500)
    assert low < 0.5 < high
    # a single-env library enters every resample unchanged
    assert stratified_bootstrap_ci([np.array([2.0]), np.full(4, 2.0)], np.mean) == (2.0, 2.0)
    assert all(math.isnan(x) for x in stratified_bootstrap_ci([np.array([1.0])], np.mean))


def test_bootstrap_ci_is_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    strata = [rng.normal(0.6, 0.2, 12), rng.normal(1.0, 0.3, 7)]
    ci1 = stratified_bootstrap_ci(strata, iqm, n_resamples=1000, seed=3)
    ci2 = stratified_bootstrap_ci(strata, iqm, n_resamples=1000, seed=3)
    assert ci1 == ci2
    point = iqm(np.concatenate(strata))
    assert ci1[0] < point < ci1[1]
    wide = stratified_bootstrap_ci(strata, iqm, n_resamples=1000, seed=3, confidence=0.99)
    assert wide[0] <= ci1[0] and wide[1] >= ci1[1]


def test_summarize_counts_and_point_estimates():
    df = scores_frame(
        [
            ("ldm", "a", 0.0, "ok"),
            ("ldm", "a", 1.0, "ok"),
            ("ldm", "b", 0.5, "ok"),
            ("ldm", "b", 2.0, "ok"),
            ("ldm", "b", None, "failed"),
            ("ldm", "b", None, "missing"),
            ("ldm", "b", None, "ok"),  # no reference
        ]
    )
    summary = summarize(df, n_resamples=200)
    rows = {r["library"]: r for r in summary.iter_rows(named=True)}
    pooled = rows["all"]
    assert (pooled["envs"], pooled["scored_envs"], pooled["failed_envs"]) == (7, 4, 1)
    assert (pooled["missing_envs"], pooled["unreferenced_envs"]) == (1, 1)
    assert pooled["iqm"] == pytest.approx(0.75)  # mean of 0.5 and 1.0
    assert pooled["median"] == pytest.approx(0.75)
    assert pooled["mean"] == pytest.approx(0.875)
    assert pooled["frac_at_least_80"] == 0.5 and pooled["frac_at_least_100"] == 0.5
    assert pooled["iqm_low"] <= pooled["iqm"] <= pooled["iqm_high"]
    assert rows["a"]["median"] == 0.5 and rows["b"]["scored_envs"] == 2
