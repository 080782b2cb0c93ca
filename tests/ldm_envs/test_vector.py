"""`LDMVectorEnv`'s autoreset modes against Gymnasium's own `SyncVectorEnv`, step for step.

Both modes run through real workers (venv, with its shared-memory steps, and in-process) on
ShortCartPole (CartPole cut at 10 steps), so episodes end often, by termination and by
truncation, and the step after an end (held in `NEXT_STEP`) comes up dozens of times.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers.vector import NormalizeObservation, RecordEpisodeStatistics

from ldm_envs.pool import EnvPool
from ldm_envs.vector import LDMVectorEnv, resolve_autoreset_mode

pytestmark = pytest.mark.slow
NUM_ENVS = 3
STEPS = 80


@pytest.fixture(scope="module", params=["venv", "inprocess"])
def backend(request):
    return request.param


def sync_env(mode: AutoresetMode) -> SyncVectorEnv:
    """Gymnasium's anchor: the same envs in this process (ShortCartPole is CartPole at 10)."""
    make = [lambda: gym.make("CartPole-v1", max_episode_steps=10) for _ in range(NUM_ENVS)]
    return SyncVectorEnv(make, autoreset_mode=mode)


def actions(steps: int = STEPS) -> np.ndarray:
    """Mostly pushing right, so some poles fall (terminated) before the limit (truncated)."""
    return (np.random.default_rng(3).random((steps, NUM_ENVS)) < 0.8).astype(np.int64)


def rollout(env, mode: AutoresetMode) -> list[tuple]:
    obs, _ = env.reset(seed=7)
    out = [(obs,)]
    for a in actions():
        obs, rew, term, trunc, info = env.step(a)
        done = term | trunc
        final = None
        if mode is AutoresetMode.SAME_STEP and done.any():
            final = (info["_final_obs"], np.stack(info["final_obs"][done]))
        out.append((obs, rew, term, trunc, final))
    return out


def assert_same(ours: list[tuple], theirs: list[tuple]) -> None:
    assert len(ours) == len(theirs)
    for t, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_array_equal(a[0], b[0], err_msg=f"obs at step {t}")
        if t == 0:
            continue
        for k, name in ((1, "reward"), (2, "terminated"), (3, "truncated")):
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name} at step {t}")
        if b[4] is None:
            assert a[4] is None, f"final_obs at step {t}"
        else:
            np.testing.assert_array_equal(a[4][0], b[4][0], err_msg=f"_final_obs at step {t}")
            np.testing.assert_array_equal(a[4][1], b[4][1], err_msg=f"final_obs at step {t}")


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_both_modes_step_like_gymnasiums_sync_vector_env(toy, backend, mode):
    env = LDMVectorEnv(toy, "ShortCartPole-v1", NUM_ENVS, backend=backend, autoreset_mode=mode)
    try:
        assert env.metadata["autoreset_mode"] is mode
        ours = rollout(env, mode)
    finally:
        env.close()
    theirs = rollout(sync_env(mode), mode)
    assert_same(ours, theirs)
    # the comparison saw both kinds of endings, and steps right after them
    term = np.stack([s[2] for s in theirs[1:]])
    trunc = np.stack([s[3] for s in theirs[1:]])
    assert term.sum() >= 5 and trunc.sum() >= 5


def test_next_step_is_the_default_as_in_gymnasium(toy):
    env = LDMVectorEnv(toy, "CartPole-v1", 2, backend="inprocess")
    assert env.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert env.autoreset_mode is SyncVectorEnv([lambda: gym.make("CartPole-v1")]).autoreset_mode
    env.close()
    same = LDMVectorEnv(toy, "CartPole-v1", 2, backend="inprocess", autoreset_mode="same_step")
    assert same.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    same.close()
    assert resolve_autoreset_mode("NextStep") is AutoresetMode.NEXT_STEP
    with pytest.raises(ValueError, match=r"offers autoreset_mode .*NEXT_STEP.*not 'Disabled'"):
        LDMVectorEnv(toy, "CartPole-v1", 2, backend="inprocess", autoreset_mode="Disabled")


def test_normalize_observation_and_episode_statistics_in_next_step(toy, backend):
    """Gymnasium's stateful wrappers take `NEXT_STEP`, and normalize exactly as over Sync."""

    def run(env):
        env = RecordEpisodeStatistics(NormalizeObservation(env))
        obs, _ = env.reset(seed=7)
        seen, returns = [obs], []
        for a in actions():
            obs, _, _, _, info = env.step(a)
            seen.append(obs)
            if "episode" in info:
                returns += info["episode"]["r"][info["_episode"]].tolist()
        env.close()
        return np.stack(seen), returns

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "missing autoreset_mode" or similar warning
        ours, our_returns = run(LDMVectorEnv(toy, "ShortCartPole-v1", NUM_ENVS, backend=backend))
    theirs, their_returns = run(sync_env(AutoresetMode.NEXT_STEP))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert our_returns == their_returns and len(our_returns) >= 10
    # SAME_STEP is refused by the wrapper, as it refuses Gymnasium's own SAME_STEP envs
    same = LDMVectorEnv(toy, "ShortCartPole-v1", 2, backend="inprocess", autoreset_mode="SameStep")
    with pytest.raises(ValueError, match="NEXT_STEP"):
        NormalizeObservation(same)
    same.close()


def test_a_held_env_is_not_stepped(toy):
    """The pool's `hold`: the env answers its first observation again, reward 0, no end."""
    with EnvPool(toy, "CartPole-v1", num_envs=2, backend="inprocess") as pool:
        first, _ = pool.reset(seed=0)
        r = pool.step(np.array([1, 1]), hold=[1])
        np.testing.assert_array_equal(r.obs[1], first[1])
        assert r.rewards.tolist() == [1.0, 0.0] and not (r.terminated | r.truncated).any()
        assert not np.array_equal(r.obs[0], first[0])
        with pytest.raises(ValueError, match="env indices go from 0 to 1"):
            pool.step(np.array([1, 1]), hold=[2])


def test_a_restarted_worker_ends_episodes_the_next_step_way(toy):
    """Killed mid-episode: last observation and truncated now, the new first one next step."""
    import os
    import signal

    env = LDMVectorEnv(toy, "CartPole-v1", 2, backend="venv", max_restarts=1)
    try:
        env.reset(seed=0)
        before, *_ = env.step(np.array([0, 1]))
        os.kill(env.pool.workers[0].client.hello["pid"], signal.SIGKILL)
        obs, rew, term, trunc, info = env.step(np.array([0, 1]))
        assert trunc.all() and not term.any()
        np.testing.assert_array_equal(obs, before)  # the episode's last observation
        assert "killed by signal 9" in info["worker_restarted"][0]
        first, rew, term, trunc, info = env.step(np.array([0, 1]))  # actions ignored: resets
        assert rew.tolist() == [0.0, 0.0] and not (term | trunc).any()
        assert "worker_restarted" not in info  # said once, on the ending step
        assert not np.array_equal(first, before)
        after, rew, *_ = env.step(np.array([0, 1]))  # and stepping goes on from there
        assert rew.tolist() == [1.0, 1.0] and not np.array_equal(after, first)
    finally:
        env.close()
