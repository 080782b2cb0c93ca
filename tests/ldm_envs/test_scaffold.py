"""`ldm-envs new`: the scaffold validates, its entry point resolves, probe fills it, check passes.

Everything runs through the inprocess backend on the host's Gymnasium (no venv is built).
"""

import importlib
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from ldm_envs.backends import get_backend
from ldm_envs.checker import check_library
from ldm_envs.cli import app
from ldm_envs.errors import UnknownEnvError
from ldm_envs.manifest import read_manifest, write_manifest
from ldm_envs.plugins import ENTRY_POINT_GROUP, LibraryRegistry
from ldm_envs.probe import PLACEHOLDER_ENV_ID, probe_library
from ldm_envs.scaffold import ScaffoldError, next_steps, scaffold_plugin

REPO = Path(__file__).resolve().parents[2]
CLASSIC = read_manifest(
    REPO / "plugins/ldm-envlib-classic-control/src/ldm_envlib_classic_control/manifest.yaml"
)
runner = CliRunner()


def _scaffold(tmp_path, name="scaffold-cc", env_ids=("CartPole-v1", "Acrobot-v1"), **kw):
    kw.setdefault("requirements", CLASSIC.environment.requirements)
    return scaffold_plugin(name, dest_root=tmp_path, env_ids=list(env_ids), **kw)


def _manifest(root):
    return next((root / "src").glob("*/manifest.yaml"))


def test_scaffold_writes_a_valid_plugin_package(tmp_path):
    root = _scaffold(tmp_path)
    assert root == tmp_path / "ldm-envlib-scaffold-cc"
    pkg = root / "src" / "ldm_envlib_scaffold_cc"
    for rel in ("pyproject.toml", "README.md", "tests/test_scaffold_cc.py"):
        assert (root / rel).is_file(), rel
    assert (pkg / "__init__.py").is_file() and (pkg / "py.typed").is_file()

    spec = read_manifest(pkg / "manifest.yaml", "scaffold-cc")  # the registry's validator
    assert spec.name == "scaffold-cc" and spec.version == "0.1.0"
    assert spec.environment == CLASSIC.environment.model_copy(update={"env_vars": {}})
    assert spec.env_ids == ["CartPole-v1", "Acrobot-v1"]
    assert spec.ranking_subset == ["CartPole-v1", "Acrobot-v1"]
    assert not any(e.probed for e in spec.envs)
    assert spec.requires_core == CLASSIC.requires_core

    # the entry point is written exactly as the existing plugins write theirs
    text = (root / "pyproject.toml").read_text()
    assert '[project.entry-points."ldm.env_libraries"]\n' in text
    assert 'scaffold-cc = "ldm_envlib_scaffold_cc:MANIFEST"\n' in text
    data = tomllib.loads(text)
    assert data["project"]["name"] == "ldm-envlib-scaffold-cc"
    assert data["project"]["dependencies"] == ["ldm-envs>=0.1,<0.2"]
    assert data["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [
        "src/ldm_envlib_scaffold_cc"
    ]
    classic = tomllib.loads(
        (REPO / "plugins/ldm-envlib-classic-control/pyproject.toml").read_text()
    )
    assert data["build-system"] == classic["build-system"]
    assert data["project"]["dependencies"] == classic["project"]["dependencies"]
    assert "tool" not in data or "ruff" not in data["tool"]  # no workspace above tmp_path


def test_the_entry_point_resolves_to_the_manifest(tmp_path, monkeypatch):
    root = _scaffold(tmp_path, name="scaffold-ep")
    monkeypatch.syspath_prepend(str(root / "src"))
    importlib.invalidate_caches()
    [(name, value)] = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "entry-points"
    ][ENTRY_POINT_GROUP].items()
    reg = LibraryRegistry.from_entry_points([EntryPoint(name, value, ENTRY_POINT_GROUP)])
    assert not reg.broken, reg.broken
    entry = reg.entry("scaffold-ep")
    assert entry.source == _manifest(root)
    assert entry.spec.env_ids == ["CartPole-v1", "Acrobot-v1"]


def test_probe_fills_the_scaffold_and_check_passes_inprocess(tmp_path):
    path = _manifest(_scaffold(tmp_path))
    backend = get_backend("inprocess")
    spec, changes = probe_library(read_manifest(path), backend)
    for env_id in ("CartPole-v1", "Acrobot-v1"):
        mine, theirs = spec.env(env_id), CLASSIC.env(env_id)
        assert (mine.observation_space, mine.action_space) == (
            theirs.observation_space,
            theirs.action_space,
        )
        assert mine.max_episode_steps == 500  # from gymnasium's registry
    assert "CartPole-v1: max_episode_steps 500 (registered)" in changes
    assert any(c.startswith("CartPole-v1: observation box[4]") for c in changes), changes
    write_manifest(spec, path)
    assert read_manifest(path) == spec

    report = check_library(read_manifest(path), backend, steps=30)
    assert report.ok, [e.problems for e in report.envs]

    # an undeclared id is added (registered limit, spaces) and the ranking subset stays valid
    spec2, changes = probe_library(spec, backend, ["Pendulum-v1"])
    assert spec2.env_ids == ["CartPole-v1", "Acrobot-v1", "Pendulum-v1"]
    assert spec2.env("Pendulum-v1").max_episode_steps == 200
    assert spec2.env("Pendulum-v1").action_space == CLASSIC.env("Pendulum-v1").action_space
    assert spec2.ranking_subset == ["CartPole-v1", "Acrobot-v1", "Pendulum-v1"]
    assert any(c.startswith("added Pendulum-v1") for c in changes)

    with pytest.raises(UnknownEnvError, match=r"registers no env CartPol-v1.*CartPole-v1"):
        probe_library(spec, backend, ["CartPol-v1"])


REGISTERING_MODULE = """
import gymnasium
import numpy as np
from gymnasium.envs.registration import register


class Huge(gymnasium.Env):
    observation_space = gymnasium.spaces.Box(-1, 1, (200,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        return np.zeros(200, np.float32), {}

    def step(self, action):
        return np.zeros(200, np.float32), 0.0, True, False, {}


class Broken(gymnasium.Env):
    def __init__(self):
        raise RuntimeError("needs a licence file")


register("ScaffoldGood-v0", "gymnasium.envs.classic_control.cartpole:CartPoleEnv",
         max_episode_steps=50)
register("ScaffoldHuge-v0", __name__ + ":Huge")
register("ScaffoldBroken-v0", __name__ + ":Broken")
"""


def test_probe_discovers_the_registered_envs_of_a_placeholder_scaffold(tmp_path, monkeypatch):
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "ldm_scaffold_registering.py").write_text(REGISTERING_MODULE)
    monkeypatch.syspath_prepend(str(modules))
    root = _scaffold(
        tmp_path, name="scaffold-disc", env_ids=(), modules=["ldm_scaffold_registering"]
    )
    placeholder = read_manifest(_manifest(root))
    assert placeholder.env_ids == [PLACEHOLDER_ENV_ID] and placeholder.ranking_subset == []

    spec, changes = probe_library(placeholder, get_backend("inprocess"))
    assert spec.env_ids == ["ScaffoldGood-v0"]  # only the module's envs, the bad ones left out
    assert spec.env("ScaffoldGood-v0").max_episode_steps == 50
    assert spec.env("ScaffoldGood-v0").probed
    text = "\n".join(changes)
    assert "added ScaffoldGood-v0: observation box[4] float32, action discrete(2)" in text
    assert "skipped ScaffoldHuge-v0" in text and "128" in text
    assert "skipped ScaffoldBroken-v0: RuntimeError: needs a licence file" in text
    assert f"removed the scaffold placeholder {PLACEHOLDER_ENV_ID}" in text


def test_refusals_name_the_problem_and_write_nothing(tmp_path):
    bad = {
        "Bad_Name": "bad library name 'Bad_Name'",
        "trailing-": "bad library name 'trailing-'",
        "ldm-envlib-foo": "give the library name, not the package name: 'foo'",
    }
    for name, message in bad.items():
        with pytest.raises(ScaffoldError, match=message):
            _scaffold(tmp_path, name=name)
    with pytest.raises(ScaffoldError, match="no requirements"):
        _scaffold(tmp_path, requirements=[])
    with pytest.raises(ScaffoldError, match=r"bad requirement 'gym 0\.17': Expected semicolon"):
        _scaffold(tmp_path, requirements=["gym 0.17"])
    with pytest.raises(ScaffoldError, match="unknown api 'gym100': use one of gymnasium, gym26"):
        _scaffold(tmp_path, api="gym100")
    with pytest.raises(ScaffoldError, match="bad python version '3'"):
        _scaffold(tmp_path, python="3")
    with pytest.raises(ScaffoldError, match="bad module 'or-gym'"):
        _scaffold(tmp_path, modules=["or-gym"])
    with pytest.raises(ScaffoldError, match=r"field envs\.0\.id: .*'CartPole' must look like"):
        _scaffold(tmp_path, env_ids=["CartPole"])
    assert list(tmp_path.iterdir()) == []

    root = _scaffold(tmp_path)
    (root / "NOTES.md").write_text("mine")
    with pytest.raises(ScaffoldError, match=r"ldm-envlib-scaffold-cc already exists.*--force"):
        _scaffold(tmp_path, env_ids=["Pendulum-v1"])
    _scaffold(tmp_path, env_ids=["Pendulum-v1"], force=True)
    assert read_manifest(_manifest(root)).env_ids == ["Pendulum-v1"]
    assert (root / "NOTES.md").read_text() == "mine"


def test_a_legacy_gym_library_on_another_python(tmp_path):
    root = _scaffold(
        tmp_path,
        name="old-ops",
        env_ids=["Newsvendor-v0"],
        requirements=["or-gym==0.5.0", "gym==0.17.3", "numpy==1.24.4"],
        api="gym21",
        python="3.8",
        modules=["or_gym"],
    )
    spec = read_manifest(_manifest(root))
    assert spec.environment.python == "3.8" and spec.environment.api.value == "gym21"
    assert spec.imports == ["or_gym"]
    assert "Python **3.8**, API **gym21**" in (root / "README.md").read_text()


def test_inside_a_workspace_the_steps_say_uv_add(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "w"\n\n[tool.uv.workspace]\nmembers = ["packages/*", "plugins/*"]\n'
    )
    root = _scaffold(tmp_path / "plugins")
    assert 'extend = "../../pyproject.toml"' in (root / "pyproject.toml").read_text()
    steps = "\n".join(next_steps("scaffold-cc", root))
    assert "`uv add ldm-envlib-scaffold-cc`" in steps
    assert "`uv run ldm-envs probe scaffold-cc`" in steps
    assert "`uv run ldm-envs check scaffold-cc`" in steps
    assert "members" not in steps

    elsewhere = _scaffold(tmp_path / "extra")
    assert "add 'extra/ldm-envlib-scaffold-cc' to [tool.uv.workspace] members" in "\n".join(
        next_steps("scaffold-cc", elsewhere)
    )


def test_cli_new_prints_its_steps_intact_inside_a_workspace(tmp_path):
    """The steps name `[tool.uv.sources]` and `[tool.uv.workspace]`: no markup may eat them."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "w"\n\n[tool.uv.workspace]\nmembers = ["plugins/*"]\n'
    )
    for out, table in (("plugins", "[tool.uv.sources]"), ("extra", "[tool.uv.workspace]")):
        result = runner.invoke(
            app,
            ["new", "scaffold-ws", "-r", "gymnasium[box2d]==1.4.0", "--out", str(tmp_path / out)],
        )
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert f"{table}" in text, text
    assert "adds it to the root dependencies and [tool.uv.sources], updates uv.lock" in text


def test_generated_python_passes_the_repository_lint(tmp_path):
    pytest.importorskip("ruff")
    root = _scaffold(tmp_path, name="a-library-with-a-rather-long-name-to-lint")
    config = ["--config", str(REPO / "pyproject.toml"), str(root)]
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, *config],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"ruff {command}: {result.stdout}{result.stderr}"


def test_cli_new_prints_the_next_steps_and_refuses_taken_names(tmp_path):
    result = runner.invoke(
        app,
        [
            *("new", "scaffold-cli", "-r", "gymnasium==1.4.0", "--env", "CartPole-v1"),
            *("--module", "gymnasium.envs.classic_control", "--out", str(tmp_path)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "created" in result.output and "next steps" in result.output
    assert "ldm-envs probe scaffold-cli" in result.output
    spec = read_manifest(_manifest(tmp_path / "ldm-envlib-scaffold-cli"))
    assert spec.imports == ["gymnasium.envs.classic_control"]

    result = runner.invoke(app, ["new", "scaffold-cli", "-r", "x==1", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(app, ["new", "toy", "-r", "x==1", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "'toy' is already provided by the installed plugin ldm-envlib-toy" in result.output
    result = runner.invoke(app, ["new", "Toy", "-r", "x==1", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "bad library name 'Toy'" in result.output


def test_the_scaffolded_contract_test_passes_for_an_installed_library(tmp_path):
    """The generated test file, scaffolded under an installed library's name, runs green."""
    root = _scaffold(tmp_path, name="classic-control", env_ids=["CartPole-v1"])
    test_file = root / "tests" / "test_classic_control.py"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-c", str(REPO / "pyproject.toml"), "-m", "not slow and not docker", str(test_file)),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed, 3 deselected" in result.stdout, result.stdout
