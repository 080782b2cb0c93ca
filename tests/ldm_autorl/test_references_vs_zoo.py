"""References against rl-baselines3-zoo's published scores and a random policy."""

import math

import numpy as np
import pytest

from ldm_autorl.pipeline import ZooComparison
from ldm_autorl.stats import decide
from ldm_autorl.zoo import ZOO_SOURCE, pct_of_zoo, zoo_best, zoo_table


def test_the_shipped_benchmark_names_its_source_and_maps_to_declared_envs():
    from importlib.resources import files

    from ldm_envs.plugins import get_library

    text = files("ldm_autorl").joinpath("data", "zoo_benchmark.csv").read_text()
    assert "rl-baselines3-zoo" in text.splitlines()[0] and "benchmark.md" in text
    assert ZOO_SOURCE.endswith("benchmark.md")
    table = zoo_table()
    assert set(table.columns) >= {"library", "env_id", "algo", "mean_reward", "n_timesteps"}
    for library in ("classic-control", "box2d"):
        declared = set(get_library(library).env_ids)
        listed = set(table.filter(table["library"] == library)["env_id"].to_list())
        assert listed and listed <= declared, listed - declared


@pytest.mark.parametrize(
    ("library", "env_id", "algo", "score", "budget"),
    [
        # the best published score over the zoo's algorithms, with what produced it
        ("classic-control", "CartPole-v1", "ars", 500.0, 50_000),  # a tie: smallest budget
        ("classic-control", "Pendulum-v1", "td3", -151.855, 20_000),
        ("classic-control", "MountainCarContinuous-v0", "ars", 96.672, 500_000),
        ("box2d", "LunarLander-v3", "ppo", 242.119, 1_000_000),
        ("box2d", "LunarLanderContinuous-v3", "tqc", 277.956, 500_000),
    ],
)
def test_zoo_best_is_the_highest_published_mean(library, env_id, algo, score, budget):
    best = zoo_best(library, env_id)
    assert best is not None
    assert best.mean_reward == pytest.approx(score)
    if algo is not None:
        assert (best.algo, best.n_timesteps) == (algo, budget)


def test_an_env_the_zoo_never_ran_has_no_score():
    assert zoo_best("classic-control", "NoSuchEnv-v0") is None
    assert zoo_best("minigrid", "MiniGrid-Empty-5x5-v0") is None


def test_pct_of_zoo_puts_random_at_zero_and_the_zoo_at_one():
    assert pct_of_zoo(-33.0, -33.0, 97.0) == 0.0
    assert pct_of_zoo(97.0, -33.0, 97.0) == 1.0
    assert pct_of_zoo(-43.0, -33.0, 97.0) == pytest.approx(-10 / 130)
    # nothing to scale by: an end unknown, or a zoo no better than random
    assert pct_of_zoo(1.0, None, 97.0) is None
    assert pct_of_zoo(1.0, 0.0, None) is None
    assert pct_of_zoo(1.0, 5.0, 5.0) is None
    assert pct_of_zoo(math.nan, 0.0, 1.0) is None


def _improving(start: float, end: float, n: int = 200, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(np.linspace(start, end, n) + rng.normal(0, 0.5, n))


def test_a_reference_worse_than_random_is_dropped_and_says_so():
    # MountainCarContinuous at a small budget: learns to push less, -52 -> -43, while random
    # scores -33; it passes the paper's two filters, so only the random bar catches it
    runs = {"a": _improving(-52, -43)}
    plain = decide(runs)["a"]
    assert plain.kept and plain.beats_random is None and plain.random_mean is None
    flagged = decide(runs, random_mean=-33.0)["a"]
    assert not flagged.kept
    assert flagged.beats_random is False and flagged.random_mean == -33.0
    assert "not better than a random policy" in flagged.reason and "-33" in flagged.reason
    better = decide(runs, random_mean=-60.0)["a"]
    assert better.kept and better.beats_random is True


def test_decisions_carry_the_spread_of_their_windows():
    returns = [0.0, 2.0] * 10 + [10.0, 14.0] * 10  # first 10%: 0,2,0,2; last: 10,14,10,14
    d = decide({"a": returns})["a"]
    assert d.first10_std == pytest.approx(1.0)
    assert d.last10_std == pytest.approx(2.0)


def test_zoo_comparison_of_a_decision():
    d = decide({"a": _improving(-500, -100)}, random_mean=-500.0)["a"]
    cmp = ZooComparison.of(d, zoo_best("classic-control", "Acrobot-v1"), final_mean=-80.0)
    assert cmp.zoo_algo == "qrdqn" and cmp.zoo_best == pytest.approx(-69.135)
    assert cmp.pct_of_zoo == pytest.approx((d.last10_mean + 500) / (-69.135 + 500))
    assert cmp.final_pct_of_zoo == pytest.approx(420 / (-69.135 + 500))
    none = ZooComparison.of(d, None, final_mean=-80.0)
    assert none.pct_of_zoo is None and none.final_mean == -80.0


def test_a_final_policy_worse_than_random_is_dropped_since_it_relabels_the_data():
    # CartPole dqn-zoo at 50k: training's last 10% at 134, the greedy final policy at 20
    runs = {"collapsed": _improving(20, 134), "fine": _improving(20, 130, seed=1)}
    finals = {"collapsed": 19.8, "fine": 480.0}
    decisions = decide(runs, random_mean=21.0, final_means=finals)
    assert not decisions["collapsed"].kept
    assert decisions["collapsed"].final_beats_random is False
    assert decisions["collapsed"].beats_random is True  # its training returns looked fine
    assert "final policy not better than a random policy" in decisions["collapsed"].reason
    assert decisions["fine"].kept and decisions["fine"].final_beats_random is True
    # unknown final (a ranking run, an old record): no verdict, nothing dropped for it
    assert decide(runs, random_mean=21.0)["collapsed"].final_beats_random is None
