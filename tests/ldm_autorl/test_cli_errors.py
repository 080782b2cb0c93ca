"""Bad input to `ldm-autorl` fails at once, naming what was wrong, before any training."""

from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from ldm_autorl import pipeline
from ldm_autorl.candidates import CandidateRegistry
from ldm_autorl.cli import app
from ldm_autorl.executors import LocalExecutor, make_executor
from ldm_envs import tracking
from ldm_envs.errors import BadInputError

runner = CliRunner()


def test_run_refuses_an_undeclared_env_before_ranking(tmp_path):
    result = runner.invoke(
        app, ["run", "toy", "--env", "Nope-v0", "--dataset", str(tmp_path), "--rank-budget", "10"]
    )
    assert result.exit_code == 1
    assert "declares no env 'Nope-v0'" in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_run_names_the_known_libraries_for_an_unknown_one(tmp_path):
    result = runner.invoke(app, ["run", "nope", "--dataset", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown env library 'nope'; known libraries:" in " ".join(result.output.split())


# -- counts, budgets and names refused before any run or MLflow record (issue 15) ---------------


@pytest.fixture
def nothing_starts(monkeypatch, tmp_path):
    """Fail the test if a stage opens an MLflow run or an executor runs a task."""

    def refuse(*args, **kwargs):
        raise AssertionError("an MLflow run was opened for input that should have been refused")

    def no_tasks(self, tasks, **kwargs):
        raise AssertionError("tasks were launched for input that should have been refused")

    monkeypatch.setattr(tracking, "tracked_run", refuse)
    monkeypatch.setattr(LocalExecutor, "run", no_tasks)
    return tmp_path


BAD_OPTIONS = [
    (["rank", "toy", "--budget", "0"], "--budget: must be a positive number, got 0"),
    (["rank", "toy", "--budget", "-5"], "--budget: must be a positive number, got -5"),
    (["train", "toy", "--budget", "0"], "--budget: must be a positive number"),
    (["train", "toy", "--top-n", "0"], "--top-n: must be a positive number, got 0"),
    (["run", "toy", "--rank-budget", "0"], "--rank-budget: must be a positive number"),
    (["run", "toy", "--train-budget", "-5"], "--train-budget: must be a positive number"),
    (["run", "toy", "--top-n", "0"], "--top-n: must be a positive number"),
    (["rank", "toy", "--parallel", "0"], "--parallel: must be a positive number, got 0"),
    (["run", "toy", "--parallel", "0"], "--parallel: must be a positive number, got 0"),
    (["rank", "toy", "--executor", "rey"], "--executor: unknown executor 'rey'; choose one"),
    (["run", "toy", "--executor", "rey"], "--executor: unknown executor 'rey'"),
    (["rank", "toy", "--backend", "vnev"], "--backend: unknown backend 'vnev'; choose one"),
    (["train", "toy", "--backend", "vnev"], "--backend: unknown backend 'vnev'"),
    (["filter", "toy", "--backend", "vnev"], "--backend: unknown backend 'vnev'"),
    (["run", "toy", "--backend", "vnev"], "--backend: unknown backend 'vnev'"),
    (["filter", "toy", "--random-episodes", "-1"], "--random-episodes: must be at least 0"),
    (["rank", "toy", "--max-restarts", "-1"], "--max-restarts: must be at least 0"),
    (["run", "toy", "--max-restarts", "-2"], "--max-restarts: must be at least 0"),
    (["rank", "toy", "--candidate", "nope"], "--candidate: unknown candidate(s) 'nope'"),
    (["run", "toy", "--candidate", "nope"], "--candidate: unknown candidate(s) 'nope'"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS]
)
def test_bad_options_exit_2_with_one_line_naming_the_option(nothing_starts, args, message):
    root = nothing_starts
    result = runner.invoke(app, [*args, "--dataset", str(root)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert list(root.iterdir()) == []  # no run folder, no record


def test_candidates_checks_the_names_it_is_given():
    result = runner.invoke(app, ["list", "toy", "--candidate", "nope"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --candidate: unknown candidate(s) 'nope'; known")
    result = runner.invoke(app, ["list", "toy", "--candidate", "a2c-zoo"])
    assert result.exit_code == 0 and "a2c-zoo" in result.output and "ppo-zoo" not in result.output


def test_the_python_api_refuses_the_same_before_any_run(nothing_starts):
    ex = LocalExecutor(max_workers=1)
    with pytest.raises(BadInputError, match="budget: must be a positive number, got 0"):
        pipeline.rank("toy", executor=ex, root=nothing_starts, budget=0)
    with pytest.raises(BadInputError, match="backend: unknown backend 'vnev'"):
        pipeline.rank("toy", executor=ex, root=nothing_starts, backend="vnev")
    with pytest.raises(BadInputError, match="top_n: must be a positive number, got 0"):
        pipeline.train("toy", executor=ex, root=nothing_starts, top_n=0)
    with pytest.raises(BadInputError, match="max_workers"):
        LocalExecutor(max_workers=0)
    with pytest.raises(BadInputError, match="executor: unknown executor 'rey'"):
        make_executor("rey")


def test_an_algorithm_plugin_that_exits_on_import_is_broken_not_fatal():
    exits = EntryPoint(
        name="exits", value="tests.ldm_envs.plugin_exits:CANDIDATES", group="ldm.algorithms"
    )
    reg = CandidateRegistry.from_entry_points([exits])
    assert reg.names() == [] and "sys.exit(3)" in reg.broken["exits"]
