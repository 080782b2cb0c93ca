"""`ldm.algorithms` plugins get the checks `ldm.env_libraries` plugins get (one registry)."""

from __future__ import annotations

import time
from importlib.metadata import Distribution, EntryPoint, version
from pathlib import Path

import pytest

from ldm_autorl.candidates import ENTRY_POINT_GROUP, CandidateRegistry
from ldm_envs.plugins import LibraryRegistry
from ldm_envs.registry import EntryPointRegistry

MOD = __name__
CANDIDATES = [
    {
        "name": "ppo-mine",
        "algorithm": "PPO",
        "observation": ["vector"],
        "action": ["discrete", "box"],
    }
]


class FakeDistribution(Distribution):
    """An installed distribution as `importlib.metadata` sees it: a name and its requirements."""

    def __init__(self, name: str, requires: list[str]) -> None:
        self._name = name
        self._requires = requires

    def read_text(self, filename: str) -> str | None:
        if filename != "METADATA":
            return None
        lines = ["Metadata-Version: 2.1", f"Name: {self._name}", "Version: 0.1.0"]
        lines += [f"Requires-Dist: {r}" for r in self._requires]
        return "\n".join(lines) + "\n"

    def locate_file(self, path: str | Path) -> Path:
        return Path(path)


def installed(name: str, dist: str, requires: list[str], attr: str = "CANDIDATES") -> EntryPoint:
    ep = EntryPoint(name=name, value=f"{MOD}:{attr}", group=ENTRY_POINT_GROUP)
    return ep._for(FakeDistribution(dist, requires))  # as importlib.metadata builds them


def test_both_plugin_kinds_share_one_registry() -> None:
    assert issubclass(CandidateRegistry, EntryPointRegistry)
    assert issubclass(LibraryRegistry, EntryPointRegistry)


def test_a_well_formed_algorithm_distribution_loads() -> None:
    reg = CandidateRegistry.from_entry_points(
        [installed("mine", "ldm-algos-mine", ["ldm-autorl>=0.1,<99", "numpy"])]
    )
    assert reg.names() == ["ppo-mine"] and not reg.broken
    assert reg.plugin_of("ppo-mine") == "mine"


def test_the_distribution_must_be_named_after_the_plugin() -> None:
    reg = CandidateRegistry.from_entry_points([installed("mine", "my-algos", [])])
    assert reg.names() == []
    assert reg.broken["mine"] == (
        "plugin 'mine': distribution 'my-algos' should be named 'ldm-algos-mine'"
    )


def test_the_installed_core_must_be_in_the_distributions_range() -> None:
    reg = CandidateRegistry.from_entry_points(
        [installed("mine", "ldm-algos-mine", ["ldm-autorl>=99"])]
    )
    assert reg.names() == []
    core = version("ldm-autorl")
    assert reg.broken["mine"] == f"plugin 'mine' requires ldm-autorl >=99, installed {core}"


def test_an_algorithm_plugin_that_exits_or_hangs_is_named_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LDM_PLUGIN_IMPORT_TIMEOUT", "0.5")
    exits = EntryPoint(name="exits", value="tests.ldm_envs.plugin_exits:X", group=ENTRY_POINT_GROUP)
    hangs = EntryPoint(
        name="hangs", value="tests.ldm_autorl.algo_plugin_hangs:CANDIDATES", group=ENTRY_POINT_GROUP
    )
    good = installed("mine", "ldm-algos-mine", [])
    start = time.monotonic()
    reg = CandidateRegistry.from_entry_points([exits, hangs, good])
    assert time.monotonic() - start < 15  # the hang costs its timeout, not 30 s
    assert reg.names() == ["ppo-mine"]
    assert "plugin 'exits'" in reg.broken["exits"] and "sys.exit(3)" in reg.broken["exits"]
    assert "plugin 'hangs'" in reg.broken["hangs"] and "more than 0.5 s" in reg.broken["hangs"]
    assert "LDM_PLUGIN_IMPORT_TIMEOUT" in reg.broken["hangs"]
