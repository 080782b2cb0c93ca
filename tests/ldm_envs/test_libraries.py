"""Contract test over every installed env library: each declared env checks out through venv
and docker (spaces as declared, observations inside them, finite rewards, episodes end)."""

import pytest
from ldm_envs.backends import get_backend
from ldm_envs.checker import check_library, last_check
from ldm_envs.plugins import registry

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
    spec = registry().get(library)
    _assert_all_ok(check_library(spec, docker_backend, steps=40))


def test_every_library_declares_its_spaces_and_ranking_subset():
    for name in LIBRARIES:
        spec = registry().get(name)
        assert all(e.probed for e in spec.envs), f"{name}: run `ldm-envs probe {name}`"
        assert len(spec.ranking_envs) == min(5, len(spec.envs))
    assert not registry().broken, registry().broken
