"""`environment.local_packages`: worker-side code a plugin ships into its isolated environment
(e.g. envs built on data a manifest cannot carry), installed by the backends and hashed into
their cache keys."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ldm_envs.backends.venv import VenvBackend
from ldm_envs.errors import ManifestError
from ldm_envs.manifest import read_manifest
from ldm_envs.pool import EnvPool

SHIM_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "ldm-test-shim"
version = "0.1.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["ldm_test_shim"]
"""

SHIM_MODULE = '''\
"""Registers an env whose observation is a constant the test edits."""
import gymnasium as gym
import numpy as np

MARK = 7.0


class MarkEnv(gym.Env):
    observation_space = gym.spaces.Box(-100.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([MARK, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([MARK, float(action)], np.float32)
        return obs, 1.0, self.t >= 5, False, {}


gym.register("ShimMark-v0", entry_point=MarkEnv)
'''


def _plugin(root: Path, *, local: list[str]) -> Path:
    """A plugin folder: manifest.yaml beside a local package `shim/` whose import registers
    `ShimMark-v0`."""
    shim = root / "shim"
    (shim / "ldm_test_shim").mkdir(parents=True)
    (shim / "pyproject.toml").write_text(SHIM_PYPROJECT)
    (shim / "ldm_test_shim" / "__init__.py").write_text(SHIM_MODULE)
    manifest = {
        "name": "shim-lib",
        "version": "0.1.0",
        "environment": {
            "python": "3.11",
            "requirements": ["gymnasium==1.2.2", "numpy>=1.26,<3"],
            "local_packages": local,
        },
        "imports": ["ldm_test_shim"],
        "envs": [
            {
                "id": "ShimMark-v0",
                "max_episode_steps": 5,
                "observation_space": {
                    "type": "box",
                    "shape": [2],
                    "dtype": "float32",
                    "low": -100.0,
                    "high": 100.0,
                },
                "action_space": {"type": "discrete", "n": 2},
            }
        ],
    }
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_local_packages_are_resolved_beside_the_manifest(tmp_path):
    spec = read_manifest(_plugin(tmp_path, local=["shim"]), "shim-lib")
    assert spec.source_dir == tmp_path
    assert spec.local_package_dirs() == [(tmp_path / "shim").resolve()]


def test_the_cache_key_follows_the_local_sources_but_not_their_build_leftovers(tmp_path):
    path = _plugin(tmp_path, local=["shim"])
    before = read_manifest(path, "shim-lib").environment_hash()
    cache = tmp_path / "shim" / "ldm_test_shim" / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    assert read_manifest(path, "shim-lib").environment_hash() == before
    module = tmp_path / "shim" / "ldm_test_shim" / "__init__.py"
    module.write_text(module.read_text().replace("MARK = 7.0", "MARK = 8.0"))
    assert read_manifest(path, "shim-lib").environment_hash() != before


def test_without_local_packages_the_cache_key_is_unchanged(toy):
    """Environments built before the field existed keep their venv and image."""
    assert toy.environment_hash() == toy.environment.content_hash()
    legacy = toy.environment.model_dump(mode="json")
    del legacy["local_packages"]
    expected = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert toy.environment_hash() == expected


@pytest.mark.parametrize("entry", ["/abs/shim", "../elsewhere", "shim/../../x"])
def test_entries_outside_the_plugin_are_refused_naming_the_field(tmp_path, entry):
    with pytest.raises(
        ManifestError, match=r"field environment\.local_packages: .*inside the plugin"
    ):
        read_manifest(_plugin(tmp_path, local=[entry]), "shim-lib")


def test_a_missing_or_unbuildable_folder_is_named(tmp_path):
    spec = read_manifest(_plugin(tmp_path, local=["nope"]), "shim-lib")
    with pytest.raises(ManifestError, match=r"'shim-lib'.*local_packages: 'nope'.*does not exist"):
        spec.environment_hash()
    spec = read_manifest(_plugin(tmp_path / "b", local=["shim/ldm_test_shim"]), "shim-lib")
    with pytest.raises(ManifestError, match=r"has no pyproject\.toml or setup\.py"):
        spec.local_package_dirs()


def test_a_spec_built_in_code_has_nothing_to_resolve_against(tmp_path):
    spec = read_manifest(_plugin(tmp_path, local=["shim"]), "shim-lib")
    detached = type(spec).model_validate(spec.model_dump())
    with pytest.raises(ManifestError, match="needs a manifest read from a file"):
        detached.local_package_dirs()


@pytest.mark.slow
def test_the_venv_installs_the_local_package_and_rebuilds_when_it_changes(tmp_path):
    path = _plugin(tmp_path / "plugin", local=["shim"])
    backend = VenvBackend(root=tmp_path / "venvs")

    def first_obs() -> float:
        spec = read_manifest(path, "shim-lib")
        with EnvPool(spec, "ShimMark-v0", num_envs=1, backend=backend) as pool:
            obs = pool.reset(seed=0)[0]
            assert np.all(pool.step(np.array([1])).obs[0] == [obs[0][0], 1.0])
        return float(obs[0][0])

    assert first_obs() == 7.0
    module = tmp_path / "plugin" / "shim" / "ldm_test_shim" / "__init__.py"
    module.write_text(module.read_text().replace("MARK = 7.0", "MARK = 8.0"))
    assert first_obs() == 8.0
    assert len([p for p in (tmp_path / "venvs").iterdir() if p.is_dir()]) == 2
