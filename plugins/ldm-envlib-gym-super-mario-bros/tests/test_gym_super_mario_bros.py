"""The plugin contract of this library (as in tests/ldm_envs/test_libraries.py).

Needs the package installed in the workspace:
    uv add ldm-envlib-gym-super-mario-bros
Run (rollouts build the venv and are marked `slow`; the docker check needs an engine):
    uv run pytest plugins/ldm-envlib-gym-super-mario-bros
"""

import numpy as np
import pytest

from ldm_envs.backends import get_backend
from ldm_envs.checker import check_library
from ldm_envs.errors import LDMEnvsError
from ldm_envs.manifest import RANKING_SUBSET_SIZE
from ldm_envs.plugins import registry

LIBRARY = "gym-super-mario-bros"
DISTRIBUTION = "ldm-envlib-gym-super-mario-bros"


@pytest.fixture(scope="module")
def spec():
    """The manifest, discovered through the package's real entry point."""
    try:
        return registry().get(LIBRARY)
    except LDMEnvsError as exc:
        pytest.fail(f"{exc}\n(install the plugin: `uv add {DISTRIBUTION}`)")


def test_the_entry_point_names_this_package_and_its_manifest(spec):
    """The entry point of this distribution names its manifest.yaml."""
    entry = registry().entry(LIBRARY)
    assert entry.distribution == DISTRIBUTION
    assert entry.source is not None and entry.source.name == "manifest.yaml"


def test_every_env_is_probed_and_the_ranking_subset_is_complete(spec):
    """Spaces are declared (filled by `ldm-envs probe`) and five envs are ranked."""
    unprobed = [e.id for e in spec.envs if not e.probed]
    assert not unprobed, f"run `uv run ldm-envs probe {LIBRARY}`: {unprobed}"
    assert len(spec.ranking_envs) == min(RANKING_SUBSET_SIZE, len(spec.envs))


def _assert_all_ok(report):
    failures = {e.env_id: e.problems for e in report.envs if not e.ok}
    assert not failures, failures
    assert all(e.steps > 0 for e in report.envs)


@pytest.mark.slow
def test_every_env_checks_out_through_venv(spec):
    """Random rollouts: spaces, shapes, dtypes, bounds and rewards as declared."""
    _assert_all_ok(check_library(spec, get_backend("venv"), steps=40))


@pytest.mark.docker
def test_every_env_checks_out_through_docker(spec, docker_backend):
    """The same rollouts in the library's container."""
    _assert_all_ok(check_library(spec, docker_backend, steps=40))


def _rollout(spec, env_id, seed):
    from ldm_envs.pool import EnvPool

    with EnvPool(spec, env_id, num_envs=1) as pool:
        space = pool.action_spaces[0].to_gymnasium()
        space.seed(0)
        frames = [pool.reset(seed=seed)[0]]
        frames += [pool.step(np.stack([space.sample()])).obs for _ in range(8)]
        return np.stack(frames)


@pytest.mark.slow
def test_seeded_rollouts_of_the_ranking_subset_are_reproducible(spec):
    """A seeded reset followed by the same actions gives the same observations."""
    for env_id in spec.ranking_envs:
        np.testing.assert_array_equal(
            _rollout(spec, env_id, 3), _rollout(spec, env_id, 3), err_msg=env_id
        )
