"""A broken algorithm plugin is silent in commands that do not ask for it, listed where asked."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from ldm_autorl import candidates
from ldm_autorl.candidates import discovery
from ldm_autorl.cli import app

runner = CliRunner()
BROKEN = EntryPoint(
    name="exits", value="tests.ldm_envs.plugin_exits:CANDIDATES", group="ldm.algorithms"
)


@pytest.fixture
def broken_plugin(monkeypatch: pytest.MonkeyPatch):
    """The installed algorithm plugins plus one whose import calls sys.exit()."""
    real = discovery.entry_points
    monkeypatch.setattr(discovery, "entry_points", lambda group: [*real(group=group), BROKEN])
    discovery._cached_registry.cache_clear()  # the command under test discovers them
    yield
    monkeypatch.undo()
    candidates.registry(refresh=True)


def test_a_broken_algorithm_plugin_does_not_warn_in_every_command(
    broken_plugin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    asked = runner.invoke(app, ["list", "toy", "--candidate", "a2c-default"])
    assert asked.exit_code == 0, asked.output
    assert "a2c-default" in asked.output
    assert "exits" not in asked.output  # not asked for: silent...
    assert not [r for r in caplog.records if "exits" in r.getMessage()]  # ...in the log too
    assert "sys.exit(3)" in candidates.registry().broken["exits"]  # still recorded


def test_the_candidates_command_lists_broken_plugins(broken_plugin) -> None:
    listed = runner.invoke(app, ["list", "toy"])
    assert listed.exit_code == 0, listed.output
    flat = " ".join(listed.output.split())
    assert "broken plugin exits:" in flat and "sys.exit(3)" in flat
