from importlib.metadata import EntryPoint

import pytest
import yaml

from ldm_envs.errors import ManifestError, PluginError, UnknownEnvError, UnknownLibraryError
from ldm_envs.manifest import parse_manifest, read_manifest, write_manifest
from ldm_envs.plugins import ENTRY_POINT_GROUP, TEST_PLUGINS_ENV, LibraryRegistry, registry

MOD = "tests.ldm_envs.broken_plugins"


def ep(name, attr):
    return EntryPoint(name=name, value=f"{MOD}:{attr}", group=ENTRY_POINT_GROUP)


def test_toy_plugin_is_discovered_through_its_entry_point(toy):
    entry = registry().entry("toy")
    assert entry.distribution == "ldm-envlib-toy"
    assert entry.source is not None and entry.source.name == "manifest.yaml"
    assert toy.env_ids[:2] == ["CartPole-v1", "Pendulum-v1"]
    assert toy.ranking_envs == toy.env_ids[:4]


def test_test_plugins_are_hidden_from_users(monkeypatch):
    """`toy` is installed by the dev group, yet only tests (which set the variable) see it."""
    from typer.testing import CliRunner

    from ldm_envs.cli import app

    monkeypatch.delenv(TEST_PLUGINS_ENV)
    users = LibraryRegistry.from_entry_points()
    assert "toy" not in users.names() and "toy" not in users.broken
    assert "classic-control" in users.names()
    try:
        registry(refresh=True)
        listed = CliRunner().invoke(app, ["list"])
        assert listed.exit_code == 0, listed.output
        assert "classic-control" in listed.output
        assert "toy" not in listed.output.split()
        shown = CliRunner().invoke(app, ["show", "toy"])
        assert shown.exit_code == 1 and "unknown env library 'toy'" in shown.output
    finally:
        monkeypatch.setenv(TEST_PLUGINS_ENV, "1")
        registry(refresh=True)
    assert "toy" in LibraryRegistry.from_entry_points().names()


def test_broken_plugins_are_named_and_never_hide_the_others():
    reg = LibraryRegistry.from_entry_points(
        [
            ep("good", "GOOD"),
            ep("unknown-field", "UNKNOWN_FIELD"),
            ep("bad-env-id", "BAD_ENV_ID"),
            ep("bad-subset", "BAD_SUBSET"),
            ep("wrong", "WRONG_NAME"),
            ep("bad-api", "BAD_API"),
            ep("too-big", "TOO_BIG"),
            ep("missing-file", "MISSING_FILE"),
            ep("raises", "raises"),
            EntryPoint(name="no-module", value="no_such_module:X", group=ENTRY_POINT_GROUP),
            ep("callable", "make_good"),
        ]
    )
    assert reg.names() == ["good"]  # "callable" returns a manifest named "good": refused below
    b = reg.broken
    assert (
        "plugin 'unknown-field': field colour: Extra inputs are not permitted" in b["unknown-field"]
    )
    assert "field envs.0.id" in b["bad-env-id"] and "Name-vN" in b["bad-env-id"]
    assert "field ranking_subset" in b["bad-subset"] and "Nope-v0" in b["bad-subset"]
    assert "field name" in b["wrong"] and "something-else" in b["wrong"]
    assert "field environment.api" in b["bad-api"]
    assert "field envs" in b["too-big"] and "200 dims" in b["too-big"]
    assert "does not exist" in b["missing-file"]
    assert "boom while building the manifest" in b["raises"]
    assert "no_such_module" in b["no-module"]
    assert "field name" in b["callable"]
    with pytest.raises(PluginError, match="field colour"):
        reg.get("unknown-field")
    with pytest.raises(
        UnknownLibraryError, match="unknown env library 'nope'; known libraries: good"
    ):
        reg.get("nope")


def test_unknown_env_lists_declared(toy):
    with pytest.raises(UnknownEnvError, match="declares no env 'Nope-v0'; declared: CartPole-v1"):
        toy.env("Nope-v0")


def test_manifest_round_trips_through_yaml_atomically(toy, tmp_path):
    path = tmp_path / "manifest.yaml"
    write_manifest(toy, path)
    copy = read_manifest(path)
    assert copy.model_dump() == toy.model_dump()
    assert copy.source_dir == tmp_path  # where its local packages would be looked for
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.yaml"]  # no temp file left behind
    data = yaml.safe_load(path.read_text())
    assert data["envs"][0]["observation_space"]["high"][1] == float("inf")


def test_unreadable_manifest_names_the_file(tmp_path):
    path = tmp_path / "manifest.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(ManifestError, match=r"cannot read manifest .*manifest\.yaml"):
        read_manifest(path, "mine")
    with pytest.raises(ManifestError, match="must be a mapping"):
        parse_manifest(["a"], "mine")


def test_content_hash_changes_with_requirements(toy):
    env = toy.environment
    other = env.model_copy(update={"requirements": [*env.requirements, "six"]})
    assert env.content_hash() != other.content_hash()
    assert env.content_hash() == env.model_copy().content_hash()
