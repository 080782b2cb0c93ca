import pytest
from typer.testing import CliRunner

from ldm_envs.cli import app
from ldm_envs.plugins import registry

runner = CliRunner()


def test_list_shows_the_toy_library():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "toy" in result.output and "gymnasium" in result.output


def test_show_and_unknown_library():
    result = runner.invoke(app, ["show", "toy"])
    assert result.exit_code == 0 and "ShortCartPole-v1" in result.output
    assert "discrete(2)" in result.output
    result = runner.invoke(app, ["show", "nope"])
    assert result.exit_code == 1
    assert "unknown env library 'nope'; known libraries:" in result.output
    assert "toy" in result.output


def test_show_prints_requirements_with_their_extras():
    result = runner.invoke(app, ["show", "box2d"])
    assert result.exit_code == 0, result.output
    assert "requirements: gymnasium[box2d]==1.4.0" in result.output


def test_check_reports_each_env_and_fails_on_a_broken_one():
    result = runner.invoke(app, ["check", "toy", "--steps", "10", "--env", "CartPole-v1"])
    assert result.exit_code == 0, result.output
    assert "ok CartPole-v1" in result.output and "1/1 envs passed" in result.output
    result = runner.invoke(app, ["check", "toy", "--steps", "10"])
    assert result.exit_code == 1
    assert "FAIL Unmakeable-v0" in result.output and "no_such_argument" in result.output
    assert "3/4 envs passed" in result.output
    # `list` names the failing env and its cause, not only a count
    listed = " ".join(runner.invoke(app, ["list"]).output.split())
    assert "check 3/4 ok" in listed
    assert "toy Unmakeable-v0 fails through venv:" in listed and "no_such_argument" in listed


def test_check_ranking_steps_only_the_ranking_subset(monkeypatch):
    reg = registry()
    toy = reg.get("toy")
    narrowed = toy.model_copy(update={"ranking_subset": ["Pendulum-v1", "CartPole-v1"]})
    monkeypatch.setattr(reg, "get", lambda name: narrowed if name == "toy" else toy)
    result = runner.invoke(app, ["check", "toy", "--steps", "10", "--ranking"])
    assert result.exit_code == 0, result.output
    assert "ok Pendulum-v1" in result.output and "ok CartPole-v1" in result.output
    assert "Unmakeable-v0" not in result.output and "2/2 envs passed" in result.output
    result = runner.invoke(app, ["check", "toy", "--ranking", "--env", "CartPole-v1"])
    assert result.exit_code == 1
    assert "give --ranking or --env, not both" in result.output


def test_probe_dry_run_prints_spaces_from_the_library():
    result = runner.invoke(app, ["probe", "toy", "--env", "Pendulum-v1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "all declared spaces already match" in result.output


def test_unknown_backend_is_named():
    result = runner.invoke(app, ["check", "toy", "--backend", "podman"])
    assert result.exit_code == 2  # bad input, refused before any build
    assert "unknown backend 'podman'; choose one of: inprocess, venv, docker" in result.output


def test_bench_names_an_unknown_ppo_config():
    result = runner.invoke(app, ["bench", "--ppo-config", "nope", "--seconds", "0.1"])
    assert result.exit_code == 1
    assert "unknown --ppo-config ['nope']" in result.output
    assert "one-epoch" in result.output and "sb3-default" in result.output


@pytest.mark.slow
def test_bench_runs_every_contender_in_rounds():
    result = runner.invoke(
        app,
        [
            "bench",
            "--seconds",
            "0.2",
            "--rounds",
            "2",
            "--ppo-config",
            "one-epoch",
            "--ppo-timesteps",
            "1024",
            "--compare-socket",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "median of 2 rounds" in result.output
    for label in ("gymnasium SyncVectorEnv", "ldm venv, socket", "DummyVecEnv"):
        assert label in result.output
