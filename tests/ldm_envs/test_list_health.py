"""`ldm-envs list`: library health at a glance (issue 13, item 5)."""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone
from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from ldm_envs import plugins
from ldm_envs.checker import last_check
from ldm_envs.cli import app
from ldm_envs.health import HealthReport, ago, cause_kind
from ldm_envs.plugins import ENTRY_POINT_GROUP, registry

runner = CliRunner()

GL = (
    "cannot be made, reset or stepped: FatalError: an OpenGL platform library has not been "
    "loaded into this process"
)
TOO_BIG = "observation has 223 dims after flattening; the limit is 128 (images apart)"
#: A library `add` left three envs out of, never built nor checked.
EXCLUDING = {
    "name": "health-excluding",
    "version": "2.0",
    "environment": {"requirements": ["gymnasium==1.2.2", "numpy<3"]},
    "envs": [{"id": "Pole-v1", "gym_id": "CartPole-v1"}],
    "excluded": {"DogRun-v0": TOO_BIG, "DogWalk-v0": TOO_BIG, "Maze-v0": GL},
}


@pytest.fixture
def excluding(monkeypatch):
    """The installed plugins plus `health-excluding`, through a real entry point."""
    real = plugins.entry_points
    ep = EntryPoint(
        name="health-excluding",
        value="tests.ldm_envs.test_list_health:EXCLUDING",
        group=ENTRY_POINT_GROUP,
    )
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real(group=group), ep])
    registry(refresh=True)
    yield "health-excluding"
    monkeypatch.undo()
    registry(refresh=True)


def _report(*args: str) -> HealthReport:
    result = runner.invoke(app, ["list", "--json", *args])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # plain JSON, no styling
    return HealthReport.model_validate_json(result.stdout)


def _flat(*args: str) -> str:
    result = runner.invoke(app, ["list", *args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _row(name: str) -> list[list[str]]:
    """The table row of library `name`: per line of it, the text of each cell."""
    lines = runner.invoke(app, ["list"]).output.splitlines()
    start = next(i for i, line in enumerate(lines) if f"│ {name} " in line)
    row = []
    for line in lines[start:]:
        if not line.startswith("│"):
            break
        row.append([cell.strip() for cell in line.strip("│").split("│")])
    return row


def test_json_after_a_real_check_holds_counts_failures_and_speed():
    before = time.time()
    checked = runner.invoke(app, ["check", "toy", "--steps", "10"])
    assert checked.exit_code == 1  # Unmakeable-v0 fails on purpose
    saved = last_check("toy", "venv")
    assert saved is not None

    report = _report("-l", "toy")
    assert [lib.name for lib in report.libraries] == ["toy"]
    assert report.broken == {}  # narrowed: only what was asked for
    toy = report.libraries[0]
    assert (toy.envs_declared, toy.envs_probed, toy.api) == (4, 3, "gymnasium")
    assert toy.distribution == "ldm-envlib-toy" and toy.excluded == []
    venv = next(b for b in toy.backends if b.backend == "venv")
    assert venv.built is True
    assert venv.checked_at is not None and venv.checked_at.timestamp() >= before - 1
    assert (venv.ok, venv.total) == (3, 4)
    assert [f.env_id for f in venv.failing] == ["Unmakeable-v0"]
    assert "no_such_argument" in venv.failing[0].cause
    assert venv.unchecked == []
    speeds = [e.steps_per_second for e in saved.envs if e.ok]
    assert venv.steps_per_second == pytest.approx(statistics.median(speeds), abs=0.1)
    assert venv.steps_per_second > 0
    docker = next(b for b in toy.backends if b.backend == "docker")
    if docker.checked_at is None or docker.checked_at < venv.checked_at:
        assert toy.steps_per_second == venv.steps_per_second  # the most recent check's

    # the table says the same, at 120 columns
    flat = _flat("-l", "toy")
    assert "check 3/4 ok" in flat and "steps/s" in flat
    assert "toy Unmakeable-v0 fails through venv:" in flat and "no_such_argument" in flat


def test_excluded_envs_are_counted_by_cause_and_listed_in_full(excluding):
    report = _report("--library", excluding)
    lib = report.libraries[0]
    assert {(e.env_id, e.kind) for e in lib.excluded} == {
        ("DogRun-v0", "obs over 128 dims"),
        ("DogWalk-v0", "obs over 128 dims"),
        ("Maze-v0", "make: FatalError"),
    }
    assert next(e.cause for e in lib.excluded if e.env_id == "Maze-v0") == GL

    row = _row(excluding)
    header = ["library", "envs", "excluded", "obs -> action", "venv", "docker"]
    excluded = [cells[header.index("excluded")] for cells in row]
    assert excluded[:3] == ["3", "2 obs over 128 dims", "1 make: FatalError"]
    assert row[0][header.index("envs")] == "1"
    everything = _flat()
    assert "toy" in everything and "`ldm-envs list -l NAME`" in everything

    narrowed = _flat("-l", excluding)
    assert "toy" not in narrowed
    assert f"health-excluding excludes Maze-v0: {GL}" in narrowed
    assert f"health-excluding excludes DogRun-v0: {TOO_BIG}" in narrowed


def test_a_library_never_built_nor_checked(excluding):
    lib = _report("-l", excluding).libraries[0]
    assert lib.steps_per_second is None and lib.envs_probed == 0
    venv = next(b for b in lib.backends if b.backend == "venv")
    assert venv.built is False
    for state in lib.backends:
        assert state.checked_at is None and state.ok is None and state.total is None
        assert state.steps_per_second is None and state.failing == []
    flat = _flat("-l", excluding)
    assert flat.count("never checked") == 2 and "not built" in flat


def test_no_docker_engine_leaves_the_build_state_unknown(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    start = time.monotonic()
    report = _report("-l", "toy")
    assert time.monotonic() - start < 30  # no 600 s client timeout: a missing socket fails fast
    assert report.docker_engine is False
    states = {b.backend: b.built for b in report.libraries[0].backends}
    assert states["docker"] is None and states["venv"] is not None
    assert "no engine" in _flat("-l", "toy")


def test_an_unknown_library_is_named():
    result = runner.invoke(app, ["list", "-l", "nope"])
    assert result.exit_code == 1
    assert "unknown env library 'nope'" in result.output


@pytest.mark.parametrize(
    ("cause", "kind"),
    [
        (GL, "make: FatalError"),
        (TOO_BIG, "obs over 128 dims"),
        ("action has 40 dims; the limit is 32", "action over 32 dims"),
        ("failed in random steps: dm_control.rl.control.PhysicsError: bad", "step: PhysicsError"),
        ("too slow: 12 random steps/s, under the 50 asked", "too slow"),
        ("non-finite reward [nan] in random steps", "non-finite reward"),
        ("needs a licence key the index does not ship with it", "needs a licence key the index d…"),
    ],
)
def test_cause_kinds(cause, kind):
    assert cause_kind(cause) == kind


def test_ages_read_short():
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert ago(datetime(2026, 1, 1, 23, 59, 30, tzinfo=timezone.utc), now) == "30s ago"
    assert ago(datetime(2026, 1, 1, 21, tzinfo=timezone.utc), now) == "3h ago"
    assert ago(datetime(2025, 12, 30, tzinfo=timezone.utc), now) == "3d ago"


def test_a_check_of_some_envs_updates_theirs_and_keeps_the_others():
    full = runner.invoke(app, ["check", "toy", "--steps", "10"])
    assert full.exit_code == 1  # Unmakeable-v0 fails on purpose
    before = last_check("toy", "venv")
    assert before is not None and len(before.envs) == 4

    again = runner.invoke(app, ["check", "toy", "--steps", "10", "--env", "CartPole-v1"])
    assert again.exit_code == 0, again.output
    after = last_check("toy", "venv")
    assert after is not None and after.when > before.when
    assert [e.env_id for e in after.envs] == [e.env_id for e in before.envs]
    by_id = {e.env_id: e for e in after.envs}
    old = {e.env_id: e for e in before.envs}
    assert by_id["CartPole-v1"] != old["CartPole-v1"]  # re-checked: a new measurement
    assert all(by_id[k] == old[k] for k in old if k != "CartPole-v1")
    assert not after.ok  # Unmakeable-v0's failure is still the latest word on it
    assert "check 3/4 ok" in _flat("-l", "toy")
