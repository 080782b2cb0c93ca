"""EnvPool and the Gymnasium VectorEnv through real venv workers (built with uv once a session)."""

import os
import signal
import time

import numpy as np
import pytest

from ldm_envs.backends import get_backend
from ldm_envs.errors import (
    ActionError,
    BuildError,
    EnvRaisedError,
    LDMEnvsError,
    WorkerCrashedError,
    WorkerTimeoutError,
)
from ldm_envs.manifest import parse_manifest
from ldm_envs.pool import EnvPool
from ldm_envs.spaces import DiscreteSpace
from ldm_envs.vector import LDMVectorEnv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["venv", "inprocess"])
def backend(request):
    return request.param


def test_vector_env_steps_and_autoresets(toy, backend):
    env = LDMVectorEnv(toy, "ShortCartPole-v1", 3, backend=backend, autoreset_mode="SameStep")
    obs, _ = env.reset(seed=1)
    assert obs.shape == (3, 4) and obs.dtype == np.float32
    assert env.observation_space.shape == (3, 4)
    ends = 0
    for _ in range(25):
        obs, rew, term, trunc, info = env.step(np.ones(3, np.int64))
        assert rew.shape == (3,) and np.all(rew == 1.0)
        if np.any(term | trunc):
            ends += int(np.sum(term | trunc))
            done = np.flatnonzero(term | trunc)
            assert info["_final_obs"][done].all()
            assert np.all(info["final_info"]["episode"]["l"][done] <= 10)
    assert ends >= 6
    env.close()


def test_seeding_is_reproducible(toy, backend):
    def rollout(seed):
        with EnvPool(toy, "CartPole-v1", num_envs=2, backend=backend) as pool:
            obs, _ = pool.reset(seed=seed)
            seq = [obs]
            for i in range(30):
                seq.append(pool.step(np.array([i % 2, (i // 3) % 2])).obs)
            return np.stack(seq)

    a, b, c = rollout(5), rollout(5), rollout(6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mixed_spaces_and_several_workers(toy):
    with EnvPool(toy, ["CartPole-v1", "Pendulum-v1", "CartPole-v1"], num_workers=2) as pool:
        assert not pool.homogeneous and len(pool.workers) == 2
        obs, _ = pool.reset(seed=0)
        assert [o.shape for o in obs] == [(4,), (3,), (4,)]
        r = pool.step([1, np.array([0.3], np.float32), 0])
        assert r.rewards[0] == 1.0 and r.rewards[1] < 0
        with pytest.raises(ActionError, match=r"env 'Pendulum-v1' \(index 1\) is outside"):
            pool.step([1, np.array([5.0], np.float32), 0])


def test_one_worker_with_one_observation_space_and_two_action_spaces(toy, backend):
    """MountainCar and MountainCarContinuous share Box(2) observations, not their actions.

    The worker stacks such observations; the pool must still hand them out per env (the LDM's
    in-training evaluation once got `None` observations from exactly this pair of envs).
    """
    import gymnasium as gym

    from ldm_envs.spaces import from_gymnasium

    envs = []
    for env_id in ("MountainCar-v0", "MountainCarContinuous-v0"):
        made = gym.make(env_id)
        envs.append(
            toy.env("CartPole-v1").model_copy(
                update={
                    "id": env_id,
                    "gym_id": None,
                    "max_episode_steps": 200,
                    "observation_space": from_gymnasium(made.observation_space),
                    "action_space": from_gymnasium(made.action_space),
                }
            )
        )
        made.close()
    spec = toy.model_copy(update={"envs": envs})
    ids = ["MountainCar-v0", "MountainCarContinuous-v0"]
    with EnvPool(spec, ids, num_workers=1, backend=backend) as pool:
        assert not pool.homogeneous and len(pool.workers) == 1
        obs, _ = pool.reset(seed=0)
        for _ in range(3):
            r = pool.step([1, np.array([0.5], np.float32)])
            assert all(isinstance(o, np.ndarray) and o.shape == (2,) for o in r.obs), r.obs
            assert not np.array_equal(r.obs[0], obs[0])  # the car moved
            obs = r.obs


def test_out_of_space_actions_are_refused_with_the_env_id(toy):
    with EnvPool(toy, "CartPole-v1", num_envs=2) as pool:
        pool.reset()
        with pytest.raises(ActionError, match=r"action 2 for env 'CartPole-v1' \(index 1\)"):
            pool.step(np.array([0, 2]))
        with pytest.raises(ActionError, match="do not fit 2 envs"):
            pool.step(np.array([0, 1, 1]))
        pool.step(np.array([0, 1]))  # the pool is still usable


def worker_pid(pool, k=0):
    return pool.workers[k].client.hello["pid"]


def test_killed_worker_is_restarted_and_reported(toy):
    with EnvPool(toy, "CartPole-v1", num_envs=2, max_restarts=1) as pool:
        pool.reset(seed=0)
        pool.step(np.array([0, 1]))
        os.kill(worker_pid(pool), signal.SIGKILL)  # mid-episode
        r = pool.step(np.array([0, 1]))
        assert r.truncated.all() and not r.terminated.any()
        assert "killed by signal 9" in r.infos[0]["worker_restarted"]
        assert r.infos[0]["final_obs"].shape == (4,)
        assert pool.failures[0]["envs"] == ["CartPole-v1", "CartPole-v1"]
        pool.step(np.array([0, 1]))  # stepping goes on in the fresh worker
        os.kill(worker_pid(pool), signal.SIGKILL)
        with pytest.raises(
            WorkerCrashedError, match=r"library 'toy', env\(s\) CartPole-v1.*signal 9"
        ):
            pool.step(np.array([0, 1]))


def test_worker_that_exits_is_reported_with_its_code(toy):
    with EnvPool(toy, "CartPole-v1", num_envs=1, max_restarts=0) as pool:
        client = pool.workers[0].client
        client.send({"cmd": "crash", "code": 7})
        with pytest.raises(WorkerCrashedError, match="exited with code 7"):
            client.recv(5)


def test_hung_worker_is_detected_within_the_timeout(toy):
    with EnvPool(toy, "CartPole-v1", num_envs=1, step_timeout=1.0, max_restarts=1) as pool:
        pool.reset()
        client = pool.workers[0].client
        client.send({"cmd": "hang", "seconds": 60})
        start = time.monotonic()
        with pytest.raises(WorkerTimeoutError, match="did not answer within 1 s"):
            client.recv(1.0)
        assert time.monotonic() - start < 20  # its 1 s timeout, not the 60 s hang
        # through step(): a hang is restarted like a crash
        pool.workers[0].client.close()
        pool.workers[0].client = get_backend("venv").spawn(toy)
        pool.workers[0].client.send({"cmd": "hang", "seconds": 60})
        pool.workers[0].client.recv  # noqa: B018 - the next recv happens inside step
        r = pool.step_recv()
        assert r.truncated.all() and "did not answer" in r.infos[0]["worker_restarted"]


def test_env_that_cannot_be_made_is_named(toy, backend):
    with pytest.raises(
        EnvRaisedError, match=r"env\(s\) Unmakeable-v0: TypeError.*no_such_argument"
    ):
        EnvPool(toy, ["CartPole-v1", "Unmakeable-v0"], backend=backend)


def test_build_failure_shows_the_resolver_log(tmp_path):
    spec = parse_manifest(
        {
            "name": "unresolvable",
            "version": "0",
            "environment": {"requirements": ["gymnasium==1.2.2", "numpy==0.0.1"]},
            "envs": [{"id": "CartPole-v1"}],
        },
        "unresolvable",
    )
    backend = get_backend("venv")
    with pytest.raises(
        BuildError, match=r"'unresolvable' failed at installing the requirements"
    ) as exc:
        backend.prepare(spec)
    assert "numpy==0.0.1" in exc.value.log
    assert not backend.is_ready(spec)


def test_declared_spaces_must_match_the_library(toy):
    env = toy.env("CartPole-v1").model_copy(update={"action_space": DiscreteSpace(n=3)})
    wrong = toy.model_copy(update={"envs": [env]})
    with pytest.raises(LDMEnvsError, match=r"manifest declares .* run `ldm-envs probe toy`"):
        EnvPool(wrong, "CartPole-v1")
