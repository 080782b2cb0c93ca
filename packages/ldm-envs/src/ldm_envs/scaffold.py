"""`ldm-envs new`: scaffold an env-library plugin package.

Writes `<dest_root>/ldm-envlib-<name>/` with everything a plugin needs: `pyproject.toml` (the
`ldm.env_libraries` entry point naming the manifest, as every plugin of this repository does),
the module `ldm_envlib_<name>` with its `manifest.yaml` (a valid `EnvLibrarySpec`), a README
saying what to edit next, and `tests/test_<name>.py` running the plugin contract. The spaces are
left out: `ldm-envs probe <name>` fills them from the real library. Without env ids the manifest
declares the single placeholder env `PLACEHOLDER_ENV_ID`, and the first probe replaces it with
the envs the library registers. The guide is `docs/adding-a-library.md`.
"""

from __future__ import annotations

import fnmatch
import json
import keyword
import os
import re
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement

from ldm_envs.errors import LDMEnvsError, ManifestError
from ldm_envs.manifest import (
    RANKING_SUBSET_SIZE,
    Api,
    IsolatedEnvironment,
    parse_manifest,
    read_manifest,
)
from ldm_envs.plugins import DISTRIBUTION_PREFIX, ENTRY_POINT_GROUP
from ldm_envs.probe import PLACEHOLDER_ENV_ID

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
DEFAULT_PYTHON: str = IsolatedEnvironment.model_fields["python"].default


class ScaffoldError(LDMEnvsError, ValueError):
    """The plugin cannot be scaffolded as asked; the message names the problem."""


def module_name(name: str) -> str:
    """The plugin's import name: `ldm_envlib_<name with underscores>`."""
    return "ldm_envlib_" + name.replace("-", "_")


def plugin_dir(name: str, dest_root: Path = Path("plugins")) -> Path:
    """Where `scaffold_plugin` writes the package of library `name`."""
    return Path(dest_root) / (DISTRIBUTION_PREFIX + name)


def _core_range() -> str:
    """`>=X.Y,<X.(Y+1)`: the ldm-envs releases this plugin is written against."""
    try:
        current = version("ldm-envs")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        current = "0.1.0"
    major, minor = (int(p) for p in current.split(".")[:2])
    return f">={major}.{minor},<{major}.{minor + 1}"


def _check_name(name: str) -> None:
    if name.startswith(DISTRIBUTION_PREFIX):
        raise ScaffoldError(
            f"give the library name, not the package name: {name[len(DISTRIBUTION_PREFIX) :]!r} "
            f"(the package becomes {name!r})"
        )
    if not _NAME.match(name):
        raise ScaffoldError(
            f"bad library name {name!r}: use lower-case letters and digits, words joined by "
            "single hyphens (e.g. 'toy-text'); it names the entry point, the package "
            f"{DISTRIBUTION_PREFIX}<name> and the module {module_name('<name>')}"
        )


def _check_inputs(requirements: list[str], api: str, python: str, modules: list[str]) -> None:
    if not requirements:
        raise ScaffoldError(
            "no requirements: give at least one pip requirement of the isolated environment "
            "(e.g. -r 'gymnasium==1.4.0'); pin them, the environment is cached by their hash"
        )
    for req in requirements:
        try:
            Requirement(req)
        except InvalidRequirement as exc:
            raise ScaffoldError(f"bad requirement {req!r}: {exc}") from None
    apis = [a.value for a in Api]
    if api not in apis:
        raise ScaffoldError(f"unknown api {api!r}: use one of {', '.join(apis)}")
    if not re.match(r"^\d+\.\d+(\.\d+)?$", python):
        raise ScaffoldError(f"bad python version {python!r}: use X.Y, e.g. 3.8 or 3.11")
    for module in modules:
        if not _MODULE.match(module) or any(keyword.iskeyword(p) for p in module.split(".")):
            raise ScaffoldError(f"bad module {module!r}: give an importable dotted name")


def _workspace_globs(pyproject: Path) -> dict[str, list[str]] | None:
    """`members`/`exclude` of `[tool.uv.workspace]`, or None when the file declares none.

    A small reader for this one table (tomllib arrives only with Python 3.11).
    """
    try:
        text = pyproject.read_text()
    except OSError:
        return None
    table = re.search(r"^\[tool\.uv\.workspace\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if table is None:
        return None
    globs: dict[str, list[str]] = {}
    for key in ("members", "exclude"):
        found = re.search(rf"^{key}\s*=\s*\[(.*?)\]", table.group(1), re.M | re.S)
        globs[key] = re.findall(r"[\"']([^\"']+)[\"']", found.group(1)) if found else []
    return globs


def find_workspace_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` whose pyproject.toml declares a uv workspace."""
    for folder in [start, *start.parents]:
        if _workspace_globs(folder / "pyproject.toml") is not None:
            return folder
    return None


def workspace_member(root: Path, package: Path) -> bool:
    """Whether `package` matches one of the workspace's `members` globs (and no `exclude`)."""
    globs = _workspace_globs(root / "pyproject.toml") or {}
    try:
        rel = package.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return False
    if any(fnmatch.fnmatch(rel, glob) for glob in globs.get("exclude", [])):
        return False
    return any(fnmatch.fnmatch(rel, glob) for glob in globs.get("members", []))


def _q(value: object) -> str:
    """A YAML scalar or flow list (JSON is valid YAML)."""
    return json.dumps(value)


def _manifest_text(
    name: str,
    description: str,
    requirements: list[str],
    api: str,
    python: str,
    modules: list[str],
    env_ids: list[str],
) -> str:
    envs = env_ids or [PLACEHOLDER_ENV_ID]
    subset = env_ids[:RANKING_SUBSET_SIZE]
    lines = [
        f"# Manifest of the {name} env library. ldm-envs reads it without importing the library.",
        "# Fields: packages/ldm-envs/README.md (Plugins); guide: docs/adding-a-library.md.",
        f"# `uv run ldm-envs probe {name}` fills the envs' spaces from the real library and",
        "# rewrites this file (without these comments).",
        f"name: {name}",
        "version: 0.1.0",
        f"description: {_q(description)}",
        f"requires_core: {_q(_core_range())}",
        "environment:",
        f"  python: {_q(python)}  # the library's own Python (found or downloaded by uv)",
        f"  api: {api}  # gymnasium | gym26 | gym21: the reset/step semantics the library speaks",
        "  requirements:  # pin them: the venv / image is cached by the hash of this block",
        *[f"    - {_q(r)}" for r in requirements],
        "  build_constraints: []  # e.g. 'setuptools<66' for an old sdist",
        "  apt_packages: []  # system libraries: docker installs them, venv names missing ones",
        "  env_vars: {}",
        "  base_image: null  # docker: e.g. python:3.10-slim; default: local ldm-base:pyX.Y",
        f"imports: {_q(modules)}  # modules the worker imports so that the envs register",
        "# The ranking stage trains every candidate on these 5 envs (all when fewer): pick",
        "# diverse spaces, fast steps and typical difficulty (see the guide). Empty: the first 5.",
        f"ranking_subset: {_q(subset)}",
        "envs:",
    ]
    if not env_ids:
        lines.append(
            f"  # placeholder: `ldm-envs probe {name}` replaces it by the envs the library "
            "registers"
        )
    for env_id in envs:
        lines.append(f"  - id: {_q(env_id)}")
    return "\n".join(lines) + "\n"


def _pyproject_text(name: str, description: str, ruff_extend: str | None) -> str:
    module = module_name(name)
    core = _core_range()
    text = f"""[project]
name = "{DISTRIBUTION_PREFIX}{name}"
version = "0.1.0"
description = {_q("ldm env library: " + description)}
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["ldm-envs{core}"]

[project.entry-points."{ENTRY_POINT_GROUP}"]
{name} = "{module}:MANIFEST"

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["src/{module}"]
"""
    if ruff_extend is not None:
        text += f'\n[tool.ruff]\nextend = "{ruff_extend}"\n'
    return text


def _init_text(name: str, description: str, api: str, python: str) -> str:
    about = _fill(description)
    return f'''"""ldm env library {name}.

{about}

The library runs in its own Python {python} environment (api {api}), built by the venv or
docker backend from `manifest.yaml`; this package only carries the manifest and never imports
the library.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
'''


def _fill(text: str, indent: str = "") -> str:
    return textwrap.fill(
        text,
        width=96,
        initial_indent=indent,
        subsequent_indent=" " * len(indent),
        break_on_hyphens=False,
        break_long_words=False,
    )


def _readme_text(
    name: str, description: str, api: str, python: str, requirements: list[str], env_ids: list[str]
) -> str:
    module = module_name(name)
    dist = DISTRIBUTION_PREFIX + name
    reqs = "\n".join(f"    {r}" for r in requirements)
    envs = (
        "declared: " + ", ".join(f"`{e}`" for e in env_ids)
        if env_ids
        else "none declared yet: the first `probe` adds the envs the library registers"
    )
    intro = _fill(
        f"Plugin for `ldm-envs` declaring the environments of {name}: {description} The package "
        f"holds only the manifest (`src/{module}/manifest.yaml`); the library itself lives in an "
        f"isolated environment (Python {python}, api {api}) that the `venv` (or `docker`) backend "
        "builds from the manifest. Scaffolded by `ldm-envs new`; the guide is "
        "`docs/adding-a-library.md`."
    )
    steps = [
        f"`src/{module}/manifest.yaml`: pin `environment.requirements`, check `python` and `api` "
        "(gymnasium; gym26 for gym 0.26; gym21 for gym <= 0.21 and its 4-tuple `step`), set "
        f"`imports` to the modules that register the envs, list the `envs` ({envs}) with their "
        "`kwargs`, `max_episode_steps` or `wrappers` where needed.",
        f"Register and install the package, from the repository root: `uv add {dist}` (adds it "
        "to the root `dependencies` and `[tool.uv.sources]`, updates `uv.lock`, installs it). "
        f"`uv run ldm-envs show {name}` then shows it.",
        f"`uv run ldm-envs probe {name}` fills the spaces from the real library (`--env ID` adds "
        "or refreshes one env, `--discover` adds every env the library registers).",
        "Set `max_episode_steps` where the library has no time limit, and choose the 5-env "
        "`ranking_subset` (every space kind, fast to step, typical difficulty).",
        f"`uv run ldm-envs check {name}` (and `--backend docker`), then `uv run pytest "
        f"plugins/{dist}` (`-m 'not slow'` skips the rollouts).",
        "Replace this section by what the other plugins' READMEs say: why the environment is "
        "pinned as it is, the library's quirks, the envs table and measurements.",
    ]
    numbered = "\n".join(_fill(step, f"{i}. ") for i, step in enumerate(steps, 1))
    return f"""# {dist}

{intro}

## What to edit next

{numbered}

## Isolated environment

- Python **{python}**, API **{api}**.
- Requirements:

```
{reqs}
```
"""


def _test_text(name: str) -> str:
    dist = DISTRIBUTION_PREFIX + name
    return f'''"""The plugin contract of this library (as in tests/ldm_envs/test_libraries.py).

Needs the package installed in the workspace:
    uv add {dist}
Run (rollouts build the venv and are marked `slow`; the docker check needs an engine):
    uv run pytest plugins/{dist}
"""

import numpy as np
import pytest

from ldm_envs.backends import get_backend
from ldm_envs.checker import check_library
from ldm_envs.errors import LDMEnvsError
from ldm_envs.manifest import RANKING_SUBSET_SIZE
from ldm_envs.plugins import registry

LIBRARY = "{name}"
DISTRIBUTION = "{dist}"


@pytest.fixture(scope="module")
def spec():
    """The manifest, discovered through the package's real entry point."""
    try:
        return registry().get(LIBRARY)
    except LDMEnvsError as exc:
        pytest.fail(f"{{exc}}\\n(install the plugin: `uv add {{DISTRIBUTION}}`)")


def test_the_entry_point_names_this_package_and_its_manifest(spec):
    """The entry point of this distribution names its manifest.yaml."""
    entry = registry().entry(LIBRARY)
    assert entry.distribution == DISTRIBUTION
    assert entry.source is not None and entry.source.name == "manifest.yaml"


def test_every_env_is_probed_and_the_ranking_subset_is_complete(spec):
    """Spaces are declared (filled by `ldm-envs probe`) and five envs are ranked."""
    unprobed = [e.id for e in spec.envs if not e.probed]
    assert not unprobed, f"run `uv run ldm-envs probe {{LIBRARY}}`: {{unprobed}}"
    assert len(spec.ranking_envs) == min(RANKING_SUBSET_SIZE, len(spec.envs))


def _assert_all_ok(report):
    failures = {{e.env_id: e.problems for e in report.envs if not e.ok}}
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
'''


def scaffold_plugin(
    name: str,
    *,
    dest_root: Path = Path("plugins"),
    requirements: list[str],
    api: str | Api = Api.GYMNASIUM,
    python: str | None = None,
    modules: list[str] | None = None,
    env_ids: list[str] | None = None,
    description: str = "",
    force: bool = False,
) -> Path:
    """Write the plugin package `ldm-envlib-<name>` under `dest_root` and return its folder.

    Args:
        name: the library name (lower-case kebab-case), also the entry point's name.
        dest_root: the folder that holds the plugins (the workspace's `plugins/`).
        requirements: pip requirements of the isolated environment (pin them).
        api: which semantics the library speaks: gymnasium, gym26 or gym21.
        python: the isolated environment's Python (default: the manifest default).
        modules: modules the worker imports so that the envs register.
        env_ids: envs to declare; none: a placeholder that `ldm-envs probe` replaces.
        description: one line about the library.
        force: overwrite the scaffold's files in an existing folder (other files are kept).

    Raises:
        ScaffoldError: for a bad name, requirement, api, python, module or env id, or an
            existing folder without `force`.
    """
    _check_name(name)
    api = Api(api).value if isinstance(api, Api) else str(api)
    python = python or DEFAULT_PYTHON
    modules = list(modules or [])
    env_ids = list(dict.fromkeys(env_ids or []))
    _check_inputs(list(requirements), api, python, modules)
    description = description or f"the {name} environments."
    description = description if description.endswith(".") else description + "."
    root = plugin_dir(name, dest_root)
    if root.exists() and not force:
        raise ScaffoldError(
            f"{root} already exists: pick another name, remove it, or pass --force to overwrite "
            "the scaffold's files in it"
        )
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"{root} exists and is not a folder")
    manifest = _manifest_text(name, description, list(requirements), api, python, modules, env_ids)
    # validate before writing anything, with the same reader the registry uses
    package = root / "src" / module_name(name)
    try:
        parse_manifest(yaml.safe_load(manifest), name)
    except ManifestError as exc:
        raise ScaffoldError(str(exc)) from None
    workspace = find_workspace_root(Path(dest_root).resolve())
    ruff_extend = None
    if workspace is not None:
        ruff_extend = Path(os.path.relpath(workspace / "pyproject.toml", root.resolve()))
    files = {
        root / "pyproject.toml": _pyproject_text(
            name, description, ruff_extend.as_posix() if ruff_extend else None
        ),
        root / "README.md": _readme_text(
            name, description, api, python, list(requirements), env_ids
        ),
        package / "__init__.py": _init_text(name, description, api, python),
        package / "manifest.yaml": manifest,
        package / "py.typed": "",
        root / "tests" / f"test_{name.replace('-', '_')}.py": _test_text(name),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    read_manifest(package / "manifest.yaml", name)  # the written file reads back
    return root


def next_steps(name: str, root: Path) -> list[str]:
    """What to do after `scaffold_plugin`, as shell-ready lines for the CLI to print."""
    dist = DISTRIBUTION_PREFIX + name
    manifest = root / "src" / module_name(name) / "manifest.yaml"
    steps = [f"edit {manifest}: requirements (pinned), python, api, imports, envs"]
    workspace = find_workspace_root(root.resolve())
    if workspace is None:
        steps.append(
            f"install the package where ldm-envs runs: `uv pip install -e {root}` "
            "(it is in no uv workspace)"
        )
    else:
        if not workspace_member(workspace, root):
            rel = os.path.relpath(root.resolve(), workspace.resolve())
            steps.append(
                f"add {rel!r} to [tool.uv.workspace] members in {workspace / 'pyproject.toml'}"
            )
        steps.append(
            f"register and install it, from {workspace}: `uv add {dist}` (adds it to the root "
            "dependencies and [tool.uv.sources], updates uv.lock, installs it)"
        )
    steps += [
        f"`uv run ldm-envs probe {name}` (fills the spaces from the real library; "
        "`--env ID` adds an env, `--discover` adds all the library registers)",
        "choose the 5-env ranking_subset in the manifest (see docs/adding-a-library.md)",
        f"`uv run ldm-envs check {name}` (and `--backend docker`)",
        f"`uv run pytest {root}`",
    ]
    return steps
