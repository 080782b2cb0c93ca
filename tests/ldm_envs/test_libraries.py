"""What spans the installed env libraries; each library's own contract (venv and docker checks,
seeded rollouts) lives beside it in `plugins/<name>/tests/`, as `ldm-envs new` writes it."""

from pathlib import Path

import numpy as np
import pytest

from ldm_envs.plugins import registry
from ldm_envs.pool import EnvPool

LIBRARIES = [name for name in registry().names() if name != "toy"]


def test_every_library_declares_its_spaces_and_ranking_subset():
    for name in LIBRARIES:
        spec = registry().get(name)
        assert all(e.probed for e in spec.envs), f"{name}: run `ldm-envs probe {name}`"
        assert len(spec.ranking_envs) == min(5, len(spec.envs))
    assert not registry().broken, registry().broken


def test_every_shipped_library_has_its_contract_test():
    """A plugin added under plugins/ without the contract test `ldm-envs new` writes fails here."""
    plugins = Path(__file__).resolve().parents[2] / "plugins"
    for name in LIBRARIES:
        dist = registry().entry(name).distribution
        assert dist is not None, name
        test = plugins / dist / "tests" / f"test_{name.replace('-', '_')}.py"
        assert test.is_file(), f"{name}: no {test}"


@pytest.mark.slow
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
