"""Welch ranking and both filters on known inputs."""

import numpy as np
import pytest
from scipy import stats as sps

from ldm_autorl.stats import (
    decide,
    greater,
    improvement,
    performance_threshold,
    rank_candidates,
    window,
)

rng = np.random.default_rng(0)


def test_windows_take_at_least_one_episode():
    assert window(range(100), "first").tolist() == list(range(10))
    assert window(range(100), "last").tolist() == list(range(90, 100))
    assert window([5.0, 6.0, 7.0], "last").tolist() == [7.0]  # ceil(0.3) = 1
    assert window([], "first").size == 0


def test_greater_is_a_one_tailed_welch_test():
    a, b = rng.normal(10, 1, 30), rng.normal(9, 3, 12)
    significant, p = greater(a, b)
    expected = sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    assert p == pytest.approx(expected) and significant == (expected < 0.05)
    assert not greater(b - 5, a)[0]  # one-tailed: the other direction is not a win
    assert greater([500.0] * 5, [200.0] * 5) == (True, 0.0)  # both constant: compare means
    assert not greater([1.0], [0.0])[0]  # too few samples


def test_ranking_sums_pairwise_points_over_envs():
    good, mid, bad = rng.normal(100, 5, 20), rng.normal(50, 5, 20), rng.normal(0, 5, 20)
    table = rank_candidates(
        {
            "A-v0": {"ppo": good, "dqn": mid, "a2c": bad},
            "B-v0": {"ppo": mid, "dqn": good, "a2c": bad},
            "C-v0": {"ppo": good, "a2c": mid},  # dqn incompatible here: no points for or against
        }
    )
    rows = {r["candidate"]: r for r in table.iter_rows(named=True)}
    assert rows["ppo"]["points"] == 2 + 1 + 1
    assert rows["dqn"]["points"] == 1 + 2
    assert rows["a2c"]["points"] == 0
    assert rows["dqn"]["envs"] == 2
    assert table["candidate"].to_list() == ["ppo", "dqn", "a2c"]
    assert table["rank"].to_list() == [1, 2, 3]


def test_ranking_ties_break_on_normalized_score():
    same = rng.normal(10, 50, 10)
    table = rank_candidates({"A-v0": {"x": same, "y": same + 1.0}})
    assert table["points"].to_list() == [0, 0]
    assert table["candidate"].to_list() == ["y", "x"]


def test_improvement_filter_on_known_curves():
    learning = np.concatenate([rng.normal(20, 5, 50), rng.normal(200, 5, 50)])
    flat = rng.normal(20, 5, 100)
    assert improvement(learning)[0]
    assert not improvement(flat)[0]
    first, last = improvement(learning)[2:]
    assert first == pytest.approx(np.mean(learning[:10]))
    assert last == pytest.approx(np.mean(learning[-10:]))


def test_performance_threshold_is_sound_for_negative_and_zero_returns():
    assert performance_threshold(200.0, 0.0) == pytest.approx(190.0)  # 95% of the best
    # Pendulum: untrained ~ -1400, best -150: a run at -200 is kept, one at -250 is not
    t = performance_threshold(-150.0, -1400.0)
    assert t == pytest.approx(-1400 + 0.95 * 1250)
    assert -200 > t > -250
    assert performance_threshold(0.0, 0.0) == 0.0
    assert performance_threshold(-10.0, -5.0) == -5.0  # nothing improved: best must be matched


def test_decide_applies_both_filters_with_reasons():
    up = lambda start, end: np.concatenate([rng.normal(start, 3, 30), rng.normal(end, 3, 30)])  # noqa: E731
    decisions = decide(
        {
            "best": up(-1400, -150),
            "close": up(-1400, -190),
            "weak": up(-1400, -700),
            "flat": rng.normal(-1400, 3, 60),
            "empty": [],
        }
    )
    assert decisions["best"].kept and decisions["close"].kept
    assert not decisions["weak"].kept and "below 95%" in decisions["weak"].reason
    assert not decisions["flat"].kept and "no significant improvement" in decisions["flat"].reason
    assert not decisions["empty"].kept and decisions["empty"].reason == "no complete episode"
    assert decisions["best"].threshold == decisions["weak"].threshold


def test_when_no_run_ended_an_episode_every_run_is_dropped_with_that_reason():
    decisions = decide({"a": [], "b": []})
    assert set(decisions) == {"a", "b"}
    assert all(not d.kept and d.reason == "no complete episode" for d in decisions.values())


def _record(candidate="a2c-default", returns=()):
    from ldm_autorl.jobs import RunResult

    return RunResult(
        run_key="k",
        stage="ranking",
        library="atari",
        env_id="ALE/Pong-v5",
        candidate=candidate,
        seed=0,
        budget=1000,
        mlflow_run_id="r",
        episode_returns=list(returns),
        episode_lengths=[1] * len(returns),
        first10_mean=float(np.mean(returns)) if returns else float("nan"),
        last10_mean=float(np.mean(returns)) if returns else float("nan"),
        seconds=1.0,
        learn_seconds=1.0,
        record_seconds=0.0,
    )


def test_a_run_without_episodes_reads_back_from_its_record(tmp_path):
    """Its NaN means are written as NaN (JSON null would not validate as a float)."""
    from ldm_autorl.jobs import load_result

    record = _record()
    path = tmp_path / "run.json"
    path.write_text(record.model_dump_json())
    back = load_result(path)
    assert back is not None and np.isnan(back.first10_mean) and np.isnan(back.last10_mean)
    path.write_text(path.read_text().replace("NaN", "null"))  # as older records hold it
    back = load_result(path)
    assert back is not None and np.isnan(back.first10_mean)


def test_an_empty_ranking_stops_the_reference_stage_by_name(tmp_path):
    """Not a silent fallback to every registered candidate."""
    import json

    from ldm_autorl import layout, pipeline
    from ldm_autorl.executors import LocalExecutor

    path = layout.ranking_path(tmp_path, "toy")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"ranking": []}))
    with pytest.raises(pipeline.EmptyRankingError, match=r"ranking of library 'toy'.*is empty"):
        pipeline.train("toy", executor=LocalExecutor(max_workers=1), root=tmp_path)


def test_a_candidate_that_ended_no_episode_is_named_not_dropped_silently():
    from ldm_autorl.pipeline import _without_episodes

    results = [_record("a2c-default"), _record("a2c-default"), _record("ppo-default", [1.0])]
    unranked = _without_episodes(results, ranked={"ppo-default"})
    assert list(unranked) == ["a2c-default"]
    assert (
        "none of its 2 ranking run(s) ended an episode at budget 1,000" in unranked["a2c-default"]
    )


# -- alpha = 0.05: data whose one-tailed Welch p-value lies between 0.01 and 0.10 ----------------

#: ten evenly spread returns around 0: `shift + spread * _Z` vs `spread * _Z` has a one-tailed
#: Welch p-value of ~0.03 at spread 16.5 and ~0.07 at spread 21.5 (shift 10), so alpha = 0.01
#: or 0.10 instead of the paper's 0.05 changes which of the two counts as significant.
_Z = np.linspace(-1.0, 1.0, 10)
_SIGNIFICANT, _NOT_SIGNIFICANT = 16.5, 21.5


def _welch_p(a, b):
    return sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue


def test_alpha_is_005_in_the_ranking():
    near = {"x": 10 + _SIGNIFICANT * _Z, "y": _SIGNIFICANT * _Z}  # x wins (p ~ 0.03)
    far = {"x": _NOT_SIGNIFICANT * _Z, "y": 10 + _NOT_SIGNIFICANT * _Z}  # y does not (p ~ 0.07)
    assert 0.01 < _welch_p(near["x"], near["y"]) < 0.05
    assert 0.05 < _welch_p(far["y"], far["x"]) < 0.10
    table = rank_candidates({"A-v0": near, "B-v0": far})
    points = dict(zip(table["candidate"], table["points"], strict=True))
    assert points == {"x": 1, "y": 0}  # alpha 0.01: x 0; alpha 0.10: y 1 too
    assert table["candidate"].to_list() == ["x", "y"]


def test_alpha_is_005_in_the_improvement_filter():
    def curve(spread):  # first 10% around 0, last 10% around 10: both above the threshold
        return np.concatenate([spread * _Z, np.zeros(80), 10 + spread * _Z])

    runs = {"p03": curve(_SIGNIFICANT), "p07": curve(_NOT_SIGNIFICANT)}
    p = {key: _welch_p(r[-10:], r[:10]) for key, r in runs.items()}
    assert 0.01 < p["p03"] < 0.05 and 0.05 < p["p07"] < 0.10
    decisions = decide(runs)
    assert decisions["p03"].improvement_p == pytest.approx(p["p03"])
    assert decisions["p07"].improvement_p == pytest.approx(p["p07"])
    assert decisions["p03"].threshold == pytest.approx(9.5)
    assert decisions["p03"].kept and decisions["p03"].reason == "kept"  # alpha 0.01: dropped
    assert not decisions["p07"].kept  # alpha 0.10: kept
    assert decisions["p07"].reason.startswith("no significant improvement")
    assert ">= 0.05" in decisions["p07"].reason
