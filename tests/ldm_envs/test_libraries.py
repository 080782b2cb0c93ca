"""Contract test over every installed env library: each declared env checks out through venv
and docker (spaces as declared, observations inside them, finite rewards, episodes end)."""

import numpy as np
import pytest

from ldm_envs.backends import get_backend
from ldm_envs.checker import check_library, last_check
from ldm_envs.plugins import registry
from ldm_envs.pool import EnvPool

LIBRARIES = [name for name in registry().names() if name != "toy"]

pytestmark = pytest.mark.slow


def _assert_all_ok(report):
    failures = {e.env_id: e.problems for e in report.envs if not e.ok}
    assert not failures, failures
    assert all(e.steps > 0 for e in report.envs)


@pytest.mark.parametrize("library", LIBRARIES)
def test_library_checks_through_venv(library):
    spec = registry().get(library)
    report = check_library(spec, get_backend("venv"), steps=40)
    _assert_all_ok(report)
    assert last_check(library, "venv") == report


@pytest.mark.docker
@pytest.mark.parametrize("library", LIBRARIES)
def test_library_checks_through_docker(library, docker_backend):
    """The image is built and its worker serves the ranking subset.

    Per-env behaviour is the venv test's job (same worker, same pins); all envs through docker
    is `ldm-envs check LIB --backend docker`, run for every library (figures in the plugins'
    READMEs). Checking only the subset keeps Atari's 57 containers-worth of games out of CI.
    """
    spec = registry().get(library)
    _assert_all_ok(check_library(spec, docker_backend, env_ids=spec.ranking_envs, steps=40))


def test_every_library_declares_its_spaces_and_ranking_subset():
    for name in LIBRARIES:
        spec = registry().get(name)
        assert all(e.probed for e in spec.envs), f"{name}: run `ldm-envs probe {name}`"
        assert len(spec.ranking_envs) == min(5, len(spec.envs))
    assert not registry().broken, registry().broken


def _rollout(spec, env_id, seed):
    with EnvPool(spec, env_id, num_envs=1) as pool:
        space = pool.action_spaces[0].to_gymnasium()
        space.seed(0)
        frames = [pool.reset(seed=seed)[0]]
        frames += [pool.step(np.stack([space.sample()])).obs for _ in range(8)]
        return np.stack(frames)


@pytest.mark.parametrize("library", LIBRARIES)
def test_seeded_rollouts_are_reproducible(library):
    spec = registry().get(library)
    for env_id in spec.ranking_envs:
        np.testing.assert_array_equal(
            _rollout(spec, env_id, 3), _rollout(spec, env_id, 3), err_msg=env_id
        )


def test_envs_with_actions_of_different_sizes_share_one_worker():
    spec = registry().get("box2d")
    ids = ["LunarLander-v3", "LunarLanderContinuous-v3", "BipedalWalker-v3"]  # 1, 2, 4 numbers
    with EnvPool(spec, ids) as pool:
        assert len(pool.workers) == 1 and not pool.homogeneous
        pool.reset(seed=0)
        spaces = [s.to_gymnasium() for s in pool.action_spaces]
        for s in spaces:
            s.seed(0)
        for _ in range(5):
            r = pool.step([s.sample() for s in spaces])
            assert [o.shape for o in r.obs] == [(8,), (8,), (24,)]
            assert np.all(np.isfinite(r.rewards))
        # each env got its own action: the same actions one env at a time give the same obs
        pool.reset(seed=1)
        actions = [1, np.array([0.5, -0.5], np.float32), np.full(4, 0.3, np.float32)]
        together = pool.step(actions).obs
    for env_id, action, obs in zip(ids, actions, together, strict=True):
        with EnvPool(spec, env_id, num_envs=1) as alone:
            alone.reset(seed=1 + ids.index(env_id))
            np.testing.assert_array_equal(alone.step(np.stack([action])).obs[0], obs)
