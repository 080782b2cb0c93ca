"""Reference choice and normalization against hand-computed values; per-env scoring rules."""

import math

import polars as pl
import pytest

from ldm_eval.normalize import edge_means, normalized_score, reference_runs
from ldm_eval.scores import ROLLOUT_SCHEMA, score_envs

RUN_COLS = {
    "run_key": pl.String,
    "library": pl.String,
    "env_id": pl.String,
    "candidate": pl.String,
    "seed": pl.Int64,
    "mlflow_run_id": pl.String,
    "observation_space": pl.String,
    "action_space": pl.String,
    "kept": pl.Boolean,
    "shard_path": pl.String,
    "part": pl.Int64,
}


def make_index(spec):
    """spec: list of (env, run_key, kept, parts) with parts = list of [(return, complete)]."""
    runs, episodes = [], []
    for env, run_key, kept, parts in spec:
        for part, eps in enumerate(parts):
            shard = f"{env}/{run_key}-{part}.arrow"
            runs.append(
                {
                    "run_key": run_key,
                    "library": "lib",
                    "env_id": env,
                    "candidate": f"cand-{run_key}",
                    "seed": 0,
                    "mlflow_run_id": f"mlf-{run_key}",
                    "observation_space": "{}",
                    "action_space": "{}",
                    "kept": kept,
                    "shard_path": shard,
                    "part": part,
                }
            )
            for k, (ret, complete) in enumerate(eps):
                episodes.append(
                    {
                        "run_key": run_key,
                        "shard_path": shard,
                        "start": 10 * k,
                        "return": float(ret),
                        "complete": complete,
                    }
                )
    runs_df = pl.DataFrame(runs, schema=RUN_COLS)
    # shards listed in reverse: the reference must order episodes by part and offset itself
    return runs_df.reverse(), pl.DataFrame(episodes).reverse()


def test_edge_means_use_ceil_of_ten_percent():
    assert edge_means([]) == (None, None)
    assert edge_means([3.0]) == (3.0, 3.0)
    assert edge_means(list(range(1, 11))) == (1.0, 10.0)  # k = 1
    assert edge_means(list(range(1, 12))) == (1.5, 10.5)  # 11 episodes: k = 2
    assert edge_means(list(range(1, 21))) == (1.5, 19.5)


def test_normalized_score():
    assert normalized_score(-700.0, -1200.0, -200.0) == pytest.approx(0.5)
    assert normalized_score(-1200.0, -1200.0, -200.0) == 0.0
    assert normalized_score(100.0, 0.0, 50.0) == pytest.approx(2.0)
    assert normalized_score(-10.0, 0.0, 50.0) == pytest.approx(-0.2)
    assert normalized_score(1.0, 5.0, 5.0) is None  # empty range
    assert normalized_score(1.0, 6.0, 5.0) is None  # inverted range
    assert normalized_score(None, 0.0, 1.0) is None
    assert normalized_score(1.0, None, 1.0) is None
    assert normalized_score(math.nan, 0.0, 1.0) is None


def test_reference_is_the_best_kept_run_over_all_its_parts():
    a_part0 = [(r, True) for r in range(1, 13)] + [(999, False)]  # incomplete: ignored
    a_part1 = [(r, True) for r in range(13, 21)]
    runs, episodes = make_index(
        [
            ("A-v0", "r1", True, [a_part0, a_part1]),  # first10 1.5, last10 19.5
            ("A-v0", "r2", True, [[(5, True)] * 9 + [(30, True)]]),  # 5 -> 30: the best kept
            ("A-v0", "r3", False, [[(0, True)] * 9 + [(100, True)]]),  # dropped: never chosen
            ("B-v0", "b1", False, [[(1, True), (2, True)]]),
            ("D-v0", "d1", True, [[(4, True)] * 10]),  # flat: degenerate range
            ("E-v0", "e2", True, [[(0, True)] * 9 + [(10, True)]]),
            ("E-v0", "e1", True, [[(2, True)] * 9 + [(10, True)]]),  # tie on last10: e1 < e2
        ]
    )
    pairs = [("lib", e) for e in ("A-v0", "B-v0", "C-v0", "D-v0", "E-v0")]
    refs = {r["env_id"]: r for r in reference_runs(runs, episodes, pairs).iter_rows(named=True)}
    a = refs["A-v0"]
    assert a["reference_status"] == "ok"
    assert a["reference_run_key"] == "r2" and a["reference_candidate"] == "cand-r2"
    assert (a["ref_first10"], a["ref_last10"]) == (5.0, 30.0)
    assert (a["kept_runs"], a["runs"]) == (2, 3)
    assert refs["B-v0"]["reference_status"] == "no kept run"
    assert refs["B-v0"]["ref_first10"] is None
    assert refs["C-v0"]["reference_status"] == "not in index"
    assert refs["D-v0"]["reference_status"] == "degenerate"
    assert refs["E-v0"]["reference_run_key"] == "e1"
    # the multi-part run's windows span both parts, in part order
    only_r1 = reference_runs(runs.filter(pl.col("run_key") == "r1"), episodes, [("lib", "A-v0")])
    assert only_r1.row(0, named=True)["ref_first10"] == 1.5
    assert only_r1.row(0, named=True)["ref_last10"] == 19.5
    assert only_r1.row(0, named=True)["ref_episodes"] == 20


def rollout(policy, env, r, status, returns=(), attempt=1, cause=None):
    return {
        "policy": policy,
        "library": "lib",
        "env_id": env,
        "rollout": r,
        "attempt": attempt,
        "seed": r,
        "status": status,
        "cause": cause,
        "returns": list(returns),
        "lengths": [1] * len(returns),
        "terminated": [True] * len(returns),
        "steps": len(returns),
        "wall_s": 0.1,
    }


def test_scores_count_only_complete_envs_with_a_reference():
    runs, episodes = make_index(
        [
            ("A-v0", "a", True, [[(0, True)] * 9 + [(100, True)]]),
            ("F-v0", "f", True, [[(0, True)] * 9 + [(10, True)]]),
            ("M-v0", "m", True, [[(0, True)] * 9 + [(10, True)]]),
            ("R-v0", "r", True, [[(0, True)] * 9 + [(10, True)]]),
        ]
    )
    pairs = [("lib", e) for e in ("A-v0", "F-v0", "M-v0", "R-v0", "X-v0")]
    refs = reference_runs(runs, episodes, pairs)
    rows = [
        rollout("ldm", "A-v0", 0, "ok", [40, 60]),
        rollout("ldm", "A-v0", 1, "failed", attempt=1, cause="boom"),
        rollout("ldm", "A-v0", 1, "ok", [80, 100], attempt=2),  # the retry counts
        rollout("ldm", "F-v0", 0, "ok", [10, 10]),
        rollout("ldm", "F-v0", 1, "failed", cause="worker died", attempt=1),
        rollout("ldm", "F-v0", 1, "failed", cause="worker died again", attempt=2),
        rollout("ldm", "M-v0", 0, "ok", [5, 5]),  # rollout 1 never recorded
        rollout("ldm", "R-v0", 0, "timeout", cause="too long"),
        rollout("ldm", "X-v0", 0, "ok", [1]),
        rollout("ldm", "X-v0", 1, "ok", [3]),
    ]
    scores = score_envs(pl.DataFrame(rows, schema=ROLLOUT_SCHEMA), refs, pairs, ["ldm"], 2)
    by = {r["env_id"]: r for r in scores.iter_rows(named=True)}
    a = by["A-v0"]
    assert a["status"] == "ok" and a["attempts"] == 3 and a["episodes"] == 4
    assert a["return_mean"] == pytest.approx(70.0)
    assert a["rollout_means"] == [50.0, 90.0]
    assert a["score"] == pytest.approx(0.7) and a["scored"]
    f = by["F-v0"]
    assert f["status"] == "failed" and f["cause"] == "worker died again"
    assert f["score"] is None and f["return_mean"] is None and not f["scored"]
    assert by["M-v0"]["status"] == "missing" and by["M-v0"]["score"] is None
    assert by["R-v0"]["status"] == "timeout" and not by["R-v0"]["scored"]
    x = by["X-v0"]
    assert x["status"] == "ok" and x["return_mean"] == 2.0
    assert x["reference_status"] == "not in index" and not x["scored"]


def test_the_filters_whole_run_means_win_over_recomputing_from_parts():
    # a run on two parallel envs: each part alone goes 0 -> 10, but the filter, which saw the
    # episodes in the order they finished, recorded -500 -> -182 for the whole run
    part = [(0, True)] * 9 + [(10, True)]
    runs, episodes = make_index([("A-v0", "r1", True, [part, part])])
    stats = '{"first10_mean": -500.0, "last10_mean": -182.0, "kept": true}'
    runs = runs.with_columns(pl.lit(stats).alias("stats"))
    ref = reference_runs(runs, episodes, [("lib", "A-v0")]).row(0, named=True)
    assert (ref["ref_first10"], ref["ref_last10"]) == (-500.0, -182.0)
    assert ref["reference_status"] == "ok"
