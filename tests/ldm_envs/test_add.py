"""`ldm-envs add`: the manifest's new fields, bound messages, the in-process core and real runs.

The core runs in process on a module written here (envs that pass, leave their bounds, raise on
reset, are too big, hold an image in a Dict). The slow tests build real venvs from the package
index into a temporary workspace, and show the refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from ldm_envs.add import AddError, AddOptions, add_library
from ldm_envs.add.plugin import RECORD, choose_ranking_subset
from ldm_envs.add.trial import EnvTrial, probe_spaces, roll_out
from ldm_envs.backends import get_backend
from ldm_envs.checker import check_library
from ldm_envs.errors import ManifestError
from ldm_envs.manifest import EnvLibrarySpec, parse_manifest, read_manifest
from ldm_envs.spaces import BoxSpace, DiscreteSpace

REPO = Path(__file__).resolve().parents[2]

FAKE_LIBRARY = '''
import gymnasium
import numpy as np
from gymnasium.envs.registration import register


class Drifting(gymnasium.Env):
    """Declares Box(-1, 1) but dim 1 climbs to 3: the library's bounds are wrong."""

    observation_space = gymnasium.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([0.0, min(self.t / 10, 3.0), 0.5], np.float32)
        return obs, 1.0, False, self.t >= 40, {}


class Raises(Drifting):
    def reset(self, seed=None, options=None):
        raise RuntimeError("missing texture file")


class Huge(Drifting):
    observation_space = gymnasium.spaces.Box(-1, 1, (200,), np.float32)


class ImageInDict(Drifting):
    observation_space = gymnasium.spaces.Dict(
        {"pixels": gymnasium.spaces.Box(0, 255, (8, 8, 3), np.uint8),
         "state": gymnasium.spaces.Box(-1, 1, (2,), np.float32)})


for name in ("Drifting", "Raises", "Huge", "ImageInDict"):
    register(id="%s-v0" % name, entry_point="%s:%s" % (__name__, name), max_episode_steps=40)
register(id="BoundedModule-v0", entry_point=__name__ + ":Drifting", max_episode_steps=50)


class Task(Drifting):
    """One of several tasks behind a single id, seeded only at construction (Meta-World v3)."""

    observation_space = gymnasium.spaces.Box(-5, 5, (3,), np.float32)

    def __init__(self, task, seed):
        self.goal = float(TASKS[task] + np.random.default_rng(seed).uniform())

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        obs[2] = self.goal
        return obs, reward, terminated, truncated, info


TASKS = {"walk-v1": 0, "run-v1": 1}
register(id="Fake/tasks", entry_point=__name__ + ":Task", max_episode_steps=40)
'''


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    """An importable module registering the fake library's envs (once per process)."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "ldm_fake_envlib.py").write_text(FAKE_LIBRARY)
    monkeypatch.syspath_prepend(str(folder))
    return "ldm_fake_envlib"


def _options(module, **kw):
    return AddOptions(name="fake-lib", imports=[module], register_plugin=False, steps=60, **kw)


# --- manifest fields ------------------------------------------------------------------------


def _manifest_data(**env):
    return {
        "name": "m",
        "version": "0.1.0",
        "environment": {"requirements": ["gymnasium"]},
        "envs": [{"id": "CartPole-v1", **env}],
    }


def test_wrappers_take_kwargs_beside_the_plain_string_form():
    spec = parse_manifest(
        _manifest_data(
            wrappers=[
                "gymnasium.wrappers:FlattenObservation",
                {"name": "gymnasium.wrappers:ClipObservation", "kwargs": {"low": -1, "high": 1}},
            ]
        ),
        "m",
    )
    env = spec.env("CartPole-v1")
    assert env.wrapper_calls() == [
        ("gymnasium.wrappers:FlattenObservation", {}),
        ("gymnasium.wrappers:ClipObservation", {"low": -1, "high": 1}),
    ]
    assert env.worker_request()["wrappers"][0] == "gymnasium.wrappers:FlattenObservation"
    with pytest.raises(ManifestError, match=r"wrappers.*'module:Class'"):
        parse_manifest(_manifest_data(wrappers=[{"name": "NoColon"}]), "m")


def test_a_wrapper_with_kwargs_runs_in_the_worker_and_probe_sees_its_space():
    from ldm_envs.probe import probe_library

    wrapper = {
        "name": "gymnasium.wrappers:RescaleObservation",
        "kwargs": {"min_obs": -2, "max_obs": 2},
    }
    data = _manifest_data(wrappers=[wrapper], max_episode_steps=20)
    data["envs"][0]["id"] = "Pendulum-v1"
    probed, _ = probe_library(parse_manifest(data, "m"), get_backend("inprocess"))
    obs = probed.env("Pendulum-v1").observation_space
    assert isinstance(obs, BoxSpace)
    assert obs.low == -2.0 and obs.high == 2.0
    assert check_library(probed, get_backend("inprocess"), steps=20).ok


def test_excluded_envs_need_a_cause_and_must_not_be_declared():
    data = _manifest_data()
    data["excluded"] = {"PandaFlip-v3": "reset raises: missing texture file"}
    assert parse_manifest(data, "m").excluded == data["excluded"]
    data["excluded"] = {"CartPole-v1": "why"}
    with pytest.raises(ManifestError, match=r"excluded.*also declared.*CartPole-v1"):
        parse_manifest(data, "m")
    data["excluded"] = {"Other-v0": " "}
    with pytest.raises(ManifestError, match=r"no cause.*Other-v0"):
        parse_manifest(data, "m")


# --- bound violations -------------------------------------------------------------------------


def test_check_names_the_env_dimension_value_and_bound(fake_module):
    import importlib

    importlib.import_module(fake_module)
    data = _manifest_data(max_episode_steps=40)
    data["envs"][0]["id"] = "Drifting-v0"
    data["imports"] = [fake_module]
    spec = parse_manifest(data, "m")
    from ldm_envs.probe import probe_library

    spec, _ = probe_library(spec, get_backend("inprocess"))
    report = check_library(spec, get_backend("inprocess"), steps=30, num_envs=1)
    problems = report.envs[0].problems
    assert not report.ok
    assert problems[0].startswith("Drifting-v0: observation dim 1 = 1.1 ")
    assert "outside the declared bounds [-1, 1] (beyond the high 1)" in problems[0]

    # widened through the manifest, no glue package: the worker declares it, check passes
    data["envs"][0]["observation_bounds"] = {"high": [1, float("inf"), 1]}
    widened, _ = probe_library(parse_manifest(data, "m"), get_backend("inprocess"))
    obs = widened.env("Drifting-v0").observation_space
    assert isinstance(obs, BoxSpace) and obs.high == [1.0, float("inf"), 1.0]
    assert check_library(widened, get_backend("inprocess"), steps=30, num_envs=1).ok
    data["envs"][0]["observation_bounds"] = {"high": [1, 2]}
    with pytest.raises(Exception, match=r"observation_bounds.high has 2 values.*3 dims"):
        probe_library(parse_manifest(data, "m"), get_backend("inprocess"))


# --- the core, in process ---------------------------------------------------------------------


def test_add_keeps_passing_envs_records_failures_widens_bounds_and_writes_a_plugin(
    tmp_path, fake_module
):
    dest = tmp_path / "plugins"
    result = add_library(
        ["fake-lib>=0"],
        _options(fake_module, exclude=["Bounded*"]),
        dest_root=dest,
        backend="inprocess",
    )
    spec = read_manifest(result.manifest)
    assert spec.env_ids == ["Drifting-v0"]
    assert set(spec.excluded) == {"Raises-v0", "Huge-v0", "ImageInDict-v0"}
    assert "missing texture file" in spec.excluded["Raises-v0"]
    assert "200 dims" in spec.excluded["Huge-v0"] and "limit is 128" in spec.excluded["Huge-v0"]
    assert "image inside a Dict" in spec.excluded["ImageInDict-v0"]
    env = spec.env("Drifting-v0")
    assert env.max_episode_steps == 40  # the registered limit
    assert env.observation_bounds is not None
    assert env.observation_bounds.high == [1.0, float("inf"), 1.0]
    assert env.observation_bounds.low == [-1.0, float("-inf"), -1.0]  # symmetric: both sides
    assert spec.ranking_envs == ["Drifting-v0"]
    readme = (result.root / "README.md").read_text()
    assert "| Drifting-v0 | 1 | [-1, 1] | 0 | 3 | this env |" in readme  # dim, bounds, seen
    assert "`ldm-envs add 'fake-lib>=0'` took" in readme  # quoted as a shell takes it
    assert "| Raises-v0 | cannot be made, reset or stepped:" in readme
    assert "What to edit next" not in readme
    for name in ("pyproject.toml", RECORD, "tests/test_fake_lib.py"):
        assert (result.root / name).is_file(), name
    # what it wrote passes check through the same backend
    assert check_library(spec, get_backend("inprocess"), steps=50, num_envs=1).ok


def test_rerunning_add_updates_the_plugin_and_keeps_hand_edits(tmp_path, fake_module):
    dest = tmp_path / "plugins"
    first = add_library(
        ["fake-lib"],
        _options(fake_module, include=["Drifting*"]),
        dest_root=dest,
        backend="inprocess",
    )
    data = yaml.safe_load(first.manifest.read_text())
    data["description"] = "Edited by hand."
    data["environment"]["env_vars"] = {"SDL_VIDEODRIVER": "dummy"}
    data["envs"][0]["max_episode_steps"] = 30
    first.manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    readme = first.root / "README.md"
    readme.write_text(readme.read_text() + "\n## My notes\n\nkept\n")

    second = add_library(
        ["fake-lib"],
        _options(fake_module, include=["Drifting*", "Bounded*"]),
        dest_root=dest,
        backend="inprocess",
    )
    spec = read_manifest(second.manifest)
    assert not second.created
    assert spec.env_ids == ["Drifting-v0", "BoundedModule-v0"]  # updated
    assert spec.description == "Edited by hand."  # kept
    assert spec.environment.env_vars == {"SDL_VIDEODRIVER": "dummy"}
    assert spec.env("Drifting-v0").max_episode_steps == 30
    assert spec.env("BoundedModule-v0").max_episode_steps == 50
    text = readme.read_text()
    assert "## My notes\n\nkept" in text and text.count("Made by `ldm-envs add`") == 1
    assert "| BoundedModule-v0 |" in text


def test_refusals_write_nothing(tmp_path, fake_module):
    dest = tmp_path / "plugins"
    with pytest.raises(AddError, match=r"registers no env matching --include \['Nothing\*'\]"):
        add_library(
            ["fake-lib"],
            _options(fake_module, include=["Nothing*"]),
            dest_root=dest,
            backend="inprocess",
        )
    with pytest.raises(
        AddError, match=r"(?s)every env of fake-lib failed.*Raises-v0: cannot be made"
    ):
        add_library(
            ["fake-lib"],
            _options(fake_module, include=["Raises*", "Huge*"]),
            dest_root=dest,
            backend="inprocess",
        )
    assert not dest.exists()


def test_vary_declares_one_env_per_value_of_a_make_kwarg(tmp_path, fake_module):
    dest = tmp_path / "plugins"
    options = _options(
        fake_module,
        include=["Fake/*"],
        vary=f"task={fake_module}:TASKS",
        kwargs={"seed": None},
        seed_kwarg="seed",
    )
    result = add_library(["fake-lib"], options, dest_root=dest, backend="inprocess")
    spec = read_manifest(result.manifest)
    assert spec.env_ids == ["Fake/walk-v1", "Fake/run-v1"]
    run = spec.env("Fake/run-v1")
    assert run.make_id == "Fake/tasks"
    assert run.kwargs == {"seed": None, "task": "run-v1"}
    assert run.seed_kwarg == "seed" and run.max_episode_steps == 40
    assert check_library(spec, get_backend("inprocess"), steps=50, num_envs=2).ok
    # a literal list works alike; values that make no Name-vN id and bad text are refused
    listed = options.model_copy(update={"vary": "task=run-v1"})
    assert add_library(["fake-lib"], listed, dest_root=dest, backend="inprocess").spec.env_ids == [
        "Fake/run-v1"
    ]
    for vary, match in [("task=walk", r"'Fake/walk'.*Name-vN"), ("walk-v1", r"KWARG=v1,v2")]:
        bad = options.model_copy(update={"vary": vary})
        with pytest.raises(AddError, match=match):
            add_library(["fake-lib"], bad, dest_root=tmp_path / "x", backend="inprocess")
    assert not (tmp_path / "x").exists()


def test_the_ranking_subset_covers_each_space_kind_fastest_first():
    box = BoxSpace(shape=(3,), low=-1.0, high=1.0)
    disc, cont = DiscreteSpace(n=2), BoxSpace(shape=(1,), low=-1.0, high=1.0)
    trials = [
        EnvTrial(f"D{i}-v0", observation=box, action=disc, steps_per_second=1000 - i)
        for i in range(6)
    ] + [
        EnvTrial("C-v0", observation=box, action=cont, steps_per_second=10),
        EnvTrial("Wide-v0", observation=BoxSpace(shape=(9,), low=0.0, high=1.0), action=disc),
        EnvTrial("Bad-v0", cause="x", observation=box, action=cont, steps_per_second=9999),
    ]
    # a new observation space first (however slow), then a new pair, then the fastest
    assert choose_ranking_subset(trials) == ["D0-v0", "Wide-v0", "C-v0", "D1-v0", "D2-v0"]
    # a re-run keeps the plugin's subset (speeds are noisy), drops what fails now, fills up
    kept = choose_ranking_subset(trials, keep=["D5-v0", "Bad-v0", "D4-v0"])
    assert kept == ["D5-v0", "D4-v0", "Wide-v0", "C-v0", "D0-v0"]


# --- real libraries from the index, through a venv ----------------------------------------------


def _workspace(tmp_path: Path) -> Path:
    """A throwaway uv workspace whose plugins depend on this checkout's ldm-envs."""
    ws = tmp_path / "ws"
    (ws / "plugins").mkdir(parents=True)
    (ws / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
        [project]
        name = "ws"
        version = "0.0.0"
        requires-python = ">=3.10"
        dependencies = []

        [tool.uv]
        package = false

        [tool.uv.workspace]
        members = ["plugins/*"]

        [tool.uv.sources]
        ldm-envs = {{ path = "{REPO / "packages" / "ldm-envs"}", editable = true }}
        """)
    )
    return ws


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return subprocess.run(
        [sys.executable, "-m", "ldm_envs.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


@pytest.mark.slow
def test_add_a_real_library_into_a_workspace_and_the_refusals(tmp_path):
    ws = _workspace(tmp_path)
    before = (ws / "pyproject.toml").read_text()

    # the requirement does not resolve: the resolver's log, nothing written
    bad = _cli(["add", "ldm-no-such-package-xyz==1.0"], ws)
    assert bad.returncode == 1
    assert "do not resolve" in bad.stderr and "ldm-no-such-package-xyz" in bad.stderr
    assert "nothing was written" in bad.stderr
    # the library registers no env (after the globs)
    none = _cli(["add", "gymnasium", "--include", "NoSuchEnv*"], ws)
    assert none.returncode == 1 and "registers no env" in none.stderr
    # every env fails (box2d's envs need the box2d extra)
    failing = _cli(["add", "gymnasium", "--include", "LunarLander*"], ws)
    assert failing.returncode == 1 and "every env of gymnasium failed" in failing.stderr
    assert list((ws / "plugins").iterdir()) == []
    assert (ws / "pyproject.toml").read_text() == before

    ok = _cli(["add", "gymnasium", "--include", "CartPole*", "--name", "cartpoles"], ws)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "created" in ok.stdout and "2 envs declared" in ok.stdout
    root = ws / "plugins" / "ldm-envlib-cartpoles"
    spec = read_manifest(root / "src" / "ldm_envlib_cartpoles" / "manifest.yaml")
    assert spec.env_ids == ["CartPole-v0", "CartPole-v1"]
    assert any(r.startswith("gymnasium==") for r in spec.environment.requirements)  # pinned
    assert spec.imports == ["gymnasium"]
    # registered in the workspace by `uv add`, and the lock holds it
    assert '"ldm-envlib-cartpoles"' in (ws / "pyproject.toml").read_text()
    assert 'name = "ldm-envlib-cartpoles"' in (ws / "uv.lock").read_text()
    report = check_library(spec, get_backend("venv"), steps=40)
    assert report.ok, [e.problems for e in report.envs]
    record = json.loads((root / RECORD).read_text())
    assert record["options"]["include"] == ["CartPole*"]
    assert EnvLibrarySpec.model_validate(record["generated"]).env_ids == spec.env_ids
    readme = (root / "README.md").read_text()
    assert "`ldm-envs add gymnasium --include 'CartPole*' --name cartpoles` took" in readme


def test_a_dim_widened_in_one_env_is_widened_in_its_layout_siblings():
    from ldm_envs.add.trial import Widened, pool_widened

    box = BoxSpace(shape=(3,), low=-10.0, high=10.0)
    other = BoxSpace(shape=(3,), low=-1.0, high=1.0)
    push = EnvTrial("Push-v3", observation=box, widened=[Widened(2, -10, 10, -22.0, 3.0)])
    dense = EnvTrial("PushDense-v3", observation=box, widened=[Widened(1, -10, 10, 0.0, 12.0)])
    apart = EnvTrial("Other-v0", observation=other)
    elsewhere = EnvTrial("Push-v9", observation=box)  # same layout, another module
    family = {"Push-v3": "lib.envs", "PushDense-v3": "lib.envs", "Other-v0": "lib.envs"}
    pool_widened([push, dense, apart, elsewhere], family | {"Push-v9": "other.envs"})
    assert [(w.dim, w.seen_in) for w in push.widened] == [(1, "PushDense-v3"), (2, "")]
    assert [(w.dim, w.seen_in) for w in dense.widened] == [(1, ""), (2, "Push-v3")]
    assert apart.widened == [] and elsewhere.widened == []


# --- --entry-point: env classes the library does not register --------------------------------

UNREGISTERED_LIBRARY = '''
import gymnasium
import numpy as np


class Simulation:
    def __init__(self, length=5):
        self.length = length


class Needs(gymnasium.Env):
    """Takes an object, as building-energy-storage-simulation's Environment does."""

    observation_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, simulation, scale=1.0):
        self.simulation = simulation
        self.scale = scale

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.simulation.length
        return np.full(2, self.scale / 10, np.float32), 1.0, done, False, {}
'''


def test_entry_points_are_parsed_and_bad_ones_refused():
    from ldm_envs.add.glue import parse_entry_points

    assert parse_entry_points(["Battery-v0=pkg.mod:Env"]) == {"Battery-v0": "pkg.mod:Env"}
    for bad, says in (
        ("Battery-v0", "ID=module:Class"),
        ("Battery-v0=pkg.mod", "ID=module:Class"),
        ("Battery=pkg:Env", "-vN"),
    ):
        with pytest.raises(AddError, match=says):
            parse_entry_points([bad])


def test_the_generated_glue_registers_the_class_and_builds_object_kwargs(tmp_path, monkeypatch):
    """The glue `add --entry-point` writes, run by the real worker (in process): the id makes
    the class, and a `{"()": "module:Callable"}` kwarg becomes the object it builds."""
    from ldm_envs.add.glue import GLUE_DIR, glue_files, glue_module, write_glue
    from ldm_envs.manifest import Api

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "ldm_unregistered_lib.py").write_text(UNREGISTERED_LIBRARY)
    monkeypatch.syspath_prepend(str(lib))
    files = glue_files("unreg", {"Needs-v0": "ldm_unregistered_lib:Needs"}, Api.GYMNASIUM)
    write_glue(tmp_path / GLUE_DIR, files)
    assert "hatchling" in (tmp_path / GLUE_DIR / "pyproject.toml").read_text()
    monkeypatch.syspath_prepend(str(tmp_path / GLUE_DIR / "src"))
    data = _manifest_data(
        max_episode_steps=40,
        kwargs={"simulation": {"()": "ldm_unregistered_lib:Simulation", "length": 3}, "scale": 5},
    )
    data["envs"][0]["id"] = "Needs-v0"
    data["imports"] = [glue_module("unreg")]
    from ldm_envs.probe import probe_library

    spec, _ = probe_library(parse_manifest(data, "unreg"), get_backend("inprocess"))
    report = check_library(spec, get_backend("inprocess"), steps=30, num_envs=1)
    assert report.ok, report.envs[0].problems
    assert report.envs[0].episodes == 10  # length 3: the object the kwarg built was used


class _Pixels(__import__("gymnasium").Env):
    """Screen-like observations: what gym-super-mario-bros gives (240x256x3), smaller."""

    def __init__(self):
        import gymnasium

        self.observation_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.integers(0, 256, (64, 64, 3), dtype=np.uint8), {}

    def step(self, action):
        obs = self.np_random.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        return obs, 0.0, False, False, {}


@pytest.fixture
def pixels_env():
    import gymnasium

    gymnasium.register(id="LdmAddPixels-v0", entry_point=_Pixels)
    yield "LdmAddPixels-v0"
    del gymnasium.registry["LdmAddPixels-v0"]


def test_random_steps_of_an_image_env_keep_no_rows(pixels_env):
    """The seen range is kept as running extremes: 2 x 300 image rows were 59 MB as float64."""
    import tracemalloc

    spec = parse_manifest(
        {
            "name": "pixels",
            "version": "0.1.0",
            "environment": {"requirements": ["gymnasium"]},
            "envs": [{"id": pixels_env}],
        },
        "pixels",
    )
    backend = get_backend("inprocess")
    trial = probe_spaces(spec, backend, [pixels_env])[pixels_env]
    assert trial.ok and trial.observation.is_image
    tracemalloc.start()
    try:
        roll_out(spec, spec.env(pixels_env), backend, trial, steps=300, min_steps_per_second=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert trial.ok and trial.steps_per_second > 0 and not trial.widened
    assert peak < 10 * 2**20, f"{peak / 2**20:.0f} MB at peak"
