"""The paper's statistics (LDM-v0 section 4.2): Welch ranking and the two run filters.

Pure functions over episode returns, so they are tested on known inputs and reused by the
ranking, filter and evaluation stages alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from itertools import permutations

import numpy as np
import polars as pl
from pydantic import BaseModel
from scipy import stats

from ldm_envs.stats import WINDOW_FRACTION, first_last_window

#: Significance level of every one-tailed Welch test.
ALPHA = 0.05
#: A run is kept when it reaches this share of the best run's improvement on the same env.
PERFORMANCE_FRACTION = 0.95


def window(returns: Sequence[float], which: str, fraction: float = WINDOW_FRACTION) -> np.ndarray:
    """The first or last `fraction` of episodes (at least one episode, at most all of them)."""
    first, last = first_last_window(np.asarray(returns, dtype=np.float64), fraction)
    return first if which == "first" else last


def greater(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alpha: float = ALPHA
) -> tuple[bool, float]:
    """One-tailed Welch t-test of mean(a) > mean(b); returns (significant, p-value).

    Samples too small or without variance are decided on their means only when both are
    constant (a degenerate but common case: CartPole capped at 500); otherwise not significant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return False, 1.0
    if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        if np.ptp(a) == 0 and np.ptp(b) == 0 and a.size >= 2 and b.size >= 2:
            return bool(a[0] > b[0]), 0.0 if a[0] > b[0] else 1.0
        return False, 1.0
    with warnings.catch_warnings():
        # near-identical samples (returns at a cap) trip scipy's precision warning; the test's
        # p-value is still right for them and the warning would only alarm the user
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    p = float(result.pvalue)
    return bool(p < alpha), p


def rank_candidates(last_returns: Mapping[str, Mapping[str, Sequence[float]]]) -> pl.DataFrame:
    """Rank candidates by Welch points summed over envs.

    Args:
        last_returns: env id -> candidate -> returns of the last 10% of its training episodes.
            A candidate absent for an env (incompatible or failed) neither scores nor concedes
            points there.

    Returns:
        One row per candidate, best first: candidate, points, envs (how many it ran on),
        mean_score (mean over envs of its last-10% mean, min-max normalized per env across
        candidates, the tie-breaker), rank.
    """
    points: dict[str, int] = {}
    envs: dict[str, int] = {}
    normalized: dict[str, list[float]] = {}
    for per_candidate in last_returns.values():
        means = {c: float(np.mean(r)) for c, r in per_candidate.items() if len(r)}
        lo, hi = (min(means.values()), max(means.values())) if means else (0.0, 0.0)
        for cand, mean in means.items():
            envs[cand] = envs.get(cand, 0) + 1
            points.setdefault(cand, 0)
            normalized.setdefault(cand, []).append((mean - lo) / (hi - lo) if hi > lo else 1.0)
        for a, b in permutations(means, 2):
            if greater(per_candidate[a], per_candidate[b])[0]:
                points[a] += 1
    rows = [
        {
            "candidate": c,
            "points": points[c],
            "envs": envs[c],
            "mean_score": float(np.mean(normalized[c])),
        }
        for c in points
    ]
    schema = {"candidate": pl.Utf8, "points": pl.Int64, "envs": pl.Int64, "mean_score": pl.Float64}
    df = pl.DataFrame(rows, schema=schema).sort(
        ["points", "mean_score", "candidate"], descending=[True, True, False]
    )
    return df.with_columns(pl.int_range(1, df.height + 1).alias("rank"))


class FilterDecision(BaseModel):
    """Whether a reference run's data enters the dataset, and why."""

    kept: bool
    reason: str
    first10_mean: float
    last10_mean: float
    improvement_p: float
    best_last10_mean: float
    baseline: float
    threshold: float
    #: Spread of the two windows: an improvement smaller than them is within the run's noise.
    first10_std: float = float("nan")
    last10_std: float = float("nan")
    #: A random policy's mean return on the env (None: not measured) and whether the run's
    #: last-10% mean is above it.
    random_mean: float | None = None
    beats_random: bool | None = None
    #: The final policy's deterministic mean return (it relabels the data) and whether it is
    #: above the random policy's.
    final_mean: float | None = None
    final_beats_random: bool | None = None


def improvement(returns: Sequence[float]) -> tuple[bool, float, float, float]:
    """Significant improvement, last 10% vs first 10% of episodes (one-tailed Welch).

    Returns:
        (significant, p-value, first-10% mean, last-10% mean).
    """
    first, last = window(returns, "first"), window(returns, "last")
    significant, p = greater(last, first)
    mean = lambda x: float(np.mean(x)) if x.size else float("nan")  # noqa: E731
    return significant, p, mean(first), mean(last)


def performance_threshold(best_last: float, baseline: float) -> float:
    """The final return a run needs: 95% of the best run's improvement over the baseline.

    The paper keeps runs at >= 95% of the best run on the env. Taken literally that breaks
    for negative returns (95% of -150 is -142.5, above the best) and means nothing at zero.
    So the 95% applies to the improvement over the env's baseline (the mean first-10% return
    of all its runs, i.e. roughly an untrained policy): threshold = baseline + 0.95 * (best -
    baseline). With a baseline of 0 and positive returns this is exactly 95% of the best; it
    is shift-invariant, so Pendulum's negative returns are handled the same way; and when no
    run improves on the baseline, the threshold is the best itself (only the best is kept).
    """
    gain = max(best_last - baseline, 0.0)
    return baseline + PERFORMANCE_FRACTION * gain


def _std(values: np.ndarray) -> float:
    return float(np.std(values)) if values.size else float("nan")


def decide(
    runs: Mapping[str, Sequence[float]],
    random_mean: float | None = None,
    final_means: Mapping[str, float | None] | None = None,
) -> dict[str, FilterDecision]:
    """Apply both filters to the runs of one env (run key -> its episode returns in order).

    With `random_mean` (a random policy's mean return on the env), a run whose last-10% mean
    is not above it is dropped too, and says so: it passed the paper's filters only because
    it improved on a start worse than random (MountainCarContinuous learning to push less
    hard, from -52 to -43, while random scores -33), and its data teaches nothing. So is a
    run whose final policy, acting deterministically (`final_means`, per run key), is not
    above random: that policy relabels every recorded action, and a DQN that collapsed in its
    last updates (CartPole at 50k: last-10% 134, final policy 20) would teach its collapse.
    """
    final_means = final_means or {}
    summary = {key: improvement(r) for key, r in runs.items() if len(r)}
    if summary:
        best_last = max(s[3] for s in summary.values())
        baseline = float(np.mean([s[2] for s in summary.values()]))
        threshold = performance_threshold(best_last, baseline)
    else:  # no run ended an episode: every run is dropped, with that reason
        best_last = baseline = threshold = float("nan")
    out: dict[str, FilterDecision] = {}
    for key in runs:
        if key not in summary:
            out[key] = FilterDecision(
                kept=False,
                reason="no complete episode",
                first10_mean=float("nan"),
                last10_mean=float("nan"),
                improvement_p=1.0,
                best_last10_mean=best_last,
                baseline=baseline,
                threshold=threshold,
                random_mean=random_mean,
            )
            continue
        significant, p, first, last = summary[key]
        beats_random = None if random_mean is None else bool(last > random_mean)
        final = final_means.get(key)
        final_beats = None if random_mean is None or final is None else bool(final > random_mean)
        if not significant:
            reason, kept = f"no significant improvement (Welch p={p:.3g} >= {ALPHA})", False
        elif last < threshold - 1e-9:
            reason = (
                f"final return {last:.4g} below {PERFORMANCE_FRACTION:.0%} of the best run's "
                f"improvement (threshold {threshold:.4g}, best {best_last:.4g}, "
                f"baseline {baseline:.4g})"
            )
            kept = False
        elif beats_random is False:
            reason = (
                f"not better than a random policy (last-10% {last:.4g} <= random {random_mean:.4g})"
            )
            kept = False
        elif final_beats is False:
            reason = (
                f"final policy not better than a random policy (deterministic mean {final:.4g} "
                f"<= random {random_mean:.4g}); it relabels the data"
            )
            kept = False
        else:
            reason, kept = "kept", True
        out[key] = FilterDecision(
            kept=kept,
            reason=reason,
            first10_mean=first,
            last10_mean=last,
            improvement_p=p,
            best_last10_mean=best_last,
            baseline=baseline,
            threshold=threshold,
            first10_std=_std(window(runs[key], "first")),
            last10_std=_std(window(runs[key], "last")),
            random_mean=random_mean,
            beats_random=beats_random,
            final_mean=final,
            final_beats_random=final_beats,
        )
    return out
