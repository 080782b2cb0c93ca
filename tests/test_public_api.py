"""The four packages' public API: `__all__`, `__version__`, lazy imports, the `LDM*` spelling."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest

from ldm_envs._lazy import UNKNOWN_VERSION, distribution_version

PACKAGES = {
    "ldm_envs": "ldm-envs",
    "ldm_autorl": "ldm-autorl",
    "ldm_model": "ldm-model",
    "ldm_eval": "ldm-eval",
}
#: Modules no package may load at `import <package>` time: today none does, and the CLIs'
#: `--help`, plugins and workers import the packages.
HEAVY = (
    "torch",
    "transformers",
    "mlflow",
    "stable_baselines3",
    "sb3_contrib",
    "ray",
    "matplotlib",
    "scipy",
    "polars",
    "pyarrow",
    "gymnasium",
    "numpy",
    "docker",
)
#: Names a package resolves lazily but leaves out of `__all__` (they need an optional extra,
#: and `from <package> import *` must work without it).
OUTSIDE_ALL = {"ldm_envs": {"LDMSB3VecEnv"}}
#: Old spellings kept for one release: module, old name, new name.
DEPRECATED = [
    ("ldm_envs.vector", "LdmVectorEnv", "LDMVectorEnv"),
    ("ldm_envs.sb3", "LdmSB3VecEnv", "LDMSB3VecEnv"),
    ("ldm_envs.errors", "LdmError", "LDMError"),
    ("ldm_envs.errors", "LdmEnvsError", "LDMEnvsError"),
]


def _type_checking_imports(package: str) -> dict[str, str]:
    """Name -> module of the `if TYPE_CHECKING:` imports in the package's `__init__.py`."""
    path = Path(importlib.import_module(package).__file__ or "")
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    found.update({a.asname or a.name: stmt.module or "" for a in stmt.names})
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_import_loads_no_heavy_module(package: str) -> None:
    code = f"import json, sys, {package}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = set(json.loads(out))
    assert not loaded & set(HEAVY), f"import {package} loads {sorted(loaded & set(HEAVY))}"


@pytest.mark.parametrize(("package", "distribution"), PACKAGES.items())
def test_version_is_the_distribution_version(package: str, distribution: str) -> None:
    assert importlib.import_module(package).__version__ == version(distribution)


def test_version_falls_back_when_not_installed() -> None:
    assert distribution_version("ldm-no-such-distribution") == UNKNOWN_VERSION


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in [*module.__all__, *OUTSIDE_ALL.get(package, ())]:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)
    assert set(module.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = module.not_a_name


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_map_matches_the_static_imports(package: str) -> None:
    """What type checkers see (`if TYPE_CHECKING:`) is what `__getattr__` imports."""
    module = importlib.import_module(package)
    exports = module._EXPORTS
    assert _type_checking_imports(package) == exports
    assert set(exports) == set(module.__all__) | OUTSIDE_ALL.get(package, set())
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_use_the_ldm_spelling(package: str) -> None:
    module = importlib.import_module(package)
    assert [n for n in module.__all__ if n[:3].lower() == "ldm" and n[:3] != "LDM"] == []


@pytest.mark.parametrize(("module_name", "old", "new"), DEPRECATED)
def test_old_names_warn_and_resolve(module_name: str, old: str, new: str) -> None:
    module = importlib.import_module(module_name)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*use {module_name}.{new}"):
        value = getattr(module, old)
    assert value is getattr(module, new)
    assert old not in module.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(module, new)  # the new name does not warn
