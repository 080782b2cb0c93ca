"""The docker backend against a real engine (started by .ci/run through tools/docker)."""

import time

import numpy as np
import pytest

from ldm_envs.errors import WorkerCrashedError
from ldm_envs.pool import EnvPool
from ldm_envs.vector import LDMVectorEnv

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def backend(docker_backend):
    return docker_backend


def test_image_is_tagged_by_manifest_hash(toy, backend):
    tag = backend.prepare(toy)
    assert tag == backend.image_tag(toy) and backend.is_ready(toy)
    changed = toy.model_copy(
        update={
            "environment": toy.environment.model_copy(
                update={"requirements": [*toy.environment.requirements, "six"]}
            )
        }
    )
    assert backend.image_tag(changed) != tag


def test_steps_like_venv_with_isolation_enforced(toy, backend):
    env = LDMVectorEnv(toy, "CartPole-v1", 2, backend=backend)
    env.reset(seed=0)
    for _ in range(20):
        env.step(np.array([0, 1]))
    client = env.pool.workers[0].client
    attrs = client.process.container.attrs
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["Memory"] > 0 and host["PidsLimit"] == backend.pids_limit
    assert attrs["Config"]["User"] == "1000:1000"
    env.close()


def test_same_trajectory_as_venv(toy, backend):
    def rollout(b):
        with EnvPool(toy, "CartPole-v1", num_envs=2, backend=b) as pool:
            out = [pool.reset(seed=11)[0]]
            out += [pool.step(np.array([i % 2, 1])).obs for i in range(15)]
            return np.stack(out)

    np.testing.assert_array_equal(rollout(backend), rollout("venv"))


def test_killed_container_is_restarted_then_reported(toy, backend):
    with EnvPool(toy, "CartPole-v1", num_envs=1, backend=backend, max_restarts=1) as pool:
        pool.reset()
        pool.workers[0].client.process.container.kill()
        r = pool.step(np.array([1]))
        assert r.truncated[0] and "exited with code" in r.infos[0]["worker_restarted"]
        pool.workers[0].client.process.container.kill()
        start = time.monotonic()
        with pytest.raises(WorkerCrashedError, match=r"library 'toy'.*docker worker.*exited"):
            pool.step(np.array([1]))
        # noticed when the container's socket closes, not after the 30 s step timeout
        assert time.monotonic() - start < 20
