"""The plugin contract of this library, as `ldm-envs new` writes it for a new plugin.

Changed for a shipped library: its docker check covers the ranking subset, not every env, and
is marked `slow` as well (it builds an image), so `-m 'not slow'` stays a fast loop.
Run (rollouts build the venv and are marked `slow`; the docker check needs an engine):
    uv run pytest plugins/ldm-envlib-gymnasium-robotics
"""

import numpy as np
import pytest

from ldm_envs.backends import get_backend
from ldm_envs.checker import check_library, last_check
from ldm_envs.errors import LDMEnvsError
from ldm_envs.manifest import RANKING_SUBSET_SIZE
from ldm_envs.plugins import registry

LIBRARY = "gymnasium-robotics"
DISTRIBUTION = "ldm-envlib-gymnasium-robotics"


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
    report = check_library(spec, get_backend("venv"), steps=40)
    _assert_all_ok(report)
    assert last_check(LIBRARY, "venv") == report  # what `ldm-envs list` shows


@pytest.mark.slow
@pytest.mark.docker
def test_the_ranking_subset_checks_out_through_docker(spec, docker_backend):
    """The image is built and its worker serves the ranking subset.

    Per-env behaviour is the venv test's job (same worker, same pins); every env through docker
    is `ldm-envs check LIBRARY --backend docker`, run by hand (figures in the README). Only the
    subset here keeps large libraries (Atari's 57 games) out of CI.
    """
    _assert_all_ok(check_library(spec, docker_backend, env_ids=spec.ranking_envs, steps=40))


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
