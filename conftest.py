"""Fixtures for tests/ and plugins/*/tests: an isolated data home, the toy spec, docker."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.plugins import TEST_PLUGINS_ENV, registry

# the toy plugin is a test-only plugin (`ldm.env_libraries.test`): the tests, and the processes
# they start, load it; users never see it
os.environ[TEST_PLUGINS_ENV] = "1"


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep venvs and check results out of the user's data home, shared across the session.

    `LDM_TEST_HOME` reuses a folder between runs (CI caches nothing; locally it saves builds).
    """
    keep = os.environ.get("LDM_TEST_HOME")
    home = Path(keep) if keep else tmp_path_factory.mktemp("ldm-home")
    old = os.environ.get("LDM_HOME")
    os.environ["LDM_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("LDM_HOME", None)
    else:
        os.environ["LDM_HOME"] = old
    if not keep:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def toy() -> EnvLibrarySpec:
    """The toy plugin's manifest, discovered through its real entry point."""
    return registry().get("toy")


@pytest.fixture(scope="session")
def docker_backend():
    """A docker backend on a running engine.

    Skipped without an engine, except in CI, where .ci/run starts one and its absence fails.
    """
    from ldm_envs.backends.docker import DockerBackend, connect
    from ldm_envs.errors import LDMEnvsError

    try:
        connect()
    except LDMEnvsError as exc:
        if os.environ.get("CI") and not os.environ.get("LDM_SKIP_DOCKER"):
            raise
        pytest.skip(str(exc))
    return DockerBackend()
