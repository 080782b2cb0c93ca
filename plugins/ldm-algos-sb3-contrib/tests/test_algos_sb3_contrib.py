"""The plugin contract of ldm-algos-sb3-contrib: its entry point resolves, its candidates validate.

Validation checks each candidate's hyperparameters against the SB3-Contrib signatures, so it
imports the library (seconds), but trains nothing. Run:
    uv run pytest plugins/ldm-algos-sb3-contrib
"""

from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from ldm_autorl.candidates import ENTRY_POINT_GROUP, CandidateRegistry

PLUGIN = "sb3-contrib"
DISTRIBUTION = "ldm-algos-sb3-contrib"


@pytest.fixture(scope="module")
def entry() -> EntryPoint:
    """This package's entry point in the `ldm.algorithms` group."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == PLUGIN]
    if not found:
        pytest.fail(f"no {ENTRY_POINT_GROUP} entry point {PLUGIN!r}: `uv add {DISTRIBUTION}`")
    (ep,) = found
    return ep


def test_the_entry_point_names_this_package_and_its_candidates_file(entry: EntryPoint) -> None:
    """The entry point comes from this distribution and names its YAML file."""
    assert entry.dist is not None and entry.dist.name == DISTRIBUTION
    target = Path(entry.load())
    assert target.name == "candidates.yaml" and target.is_file()


def test_every_candidate_validates(entry: EntryPoint) -> None:
    """Every candidate loads through the registry's own reader: none is skipped as broken."""
    registry = CandidateRegistry.from_entry_points([entry])
    assert registry.broken == {}
    assert registry.names(), "the plugin declares no candidate"
    assert {plugin for plugin, _ in registry.candidates.values()} == {PLUGIN}
    for name in registry.names():
        candidate = registry.get(name)
        assert candidate.description, f"{name}: say what the candidate is for"
