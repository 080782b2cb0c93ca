"""`ldm-eval suite`: the suite file's validation, and a miniature pipeline end to end on the toy
library (probe -> autorl through the ldm-autorl CLI -> train -> eval -> report), re-run to show
that finished stages are skipped, with MLflow runs in every stage's experiment."""

import importlib.metadata
import importlib.util
import io
import json
import os
import re
import textwrap
import uuid

import mlflow
import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from ldm_envs import tracking
from ldm_envs.paths import data_home
from ldm_eval.cli import app
from ldm_eval.suite import STAGES, StageError, SuiteError, load_suite, run_suite


def write(tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(path):
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return str(info.value)


def test_a_bad_field_is_named_with_the_file(tmp_path):
    path = write(
        tmp_path,
        """
        name: bad
        libraries:
          - name: toy
            top_n: 0
        model: {steps: many}
        """,
    )
    msg = load_error(path)
    assert f"{path}: field libraries.0.top_n:" in msg
    assert "greater than 0" in msg
    assert f"{path}: field model.steps:" in msg


def test_an_unknown_field_is_refused(tmp_path):
    msg = load_error(write(tmp_path, "name: x\nlibraries: [{name: toy}]\nbudget: 3\n"))
    assert "field budget:" in msg and "Extra inputs are not permitted" in msg


def test_an_unknown_library_is_named_with_the_installed_ones(tmp_path):
    msg = load_error(write(tmp_path, "name: x\nlibraries: [{name: nope}]\n"))
    assert "field libraries.0.name:" in msg
    assert "unknown env library 'nope'" in msg
    assert "toy" in msg and "classic-control" in msg


def test_an_undeclared_env_and_an_unknown_model_config_are_named(tmp_path):
    path = write(
        tmp_path,
        """
        name: x
        libraries: [{name: toy, envs: [CartPole-v1, Nope-v0]}]
        model: {config: huge}
        """,
    )
    msg = load_error(path)
    assert "field libraries.0.envs:" in msg and "Nope-v0" in msg and "ShortCartPole-v1" in msg
    assert "field model.config:" in msg and "tiny" in msg


def test_env_budgets_must_name_the_suites_envs(tmp_path):
    path = write(
        tmp_path,
        """
        name: x
        libraries: [{name: toy, envs: [CartPole-v1], env_budgets: {Pendulum-v1: 100}}]
        """,
    )
    msg = load_error(path)
    assert "field libraries.0:" in msg and "Pendulum-v1" in msg and "CartPole-v1" in msg
    ok = load_suite(
        write(
            tmp_path,
            """
            name: x
            libraries:
              - name: toy
                envs: [CartPole-v1, Pendulum-v1, ShortCartPole-v1]
                train_budget: 50
                env_budgets: {Pendulum-v1: 100}
            """,
            "ok.yaml",
        )
    )
    groups = ok.libraries[0].budget_groups()
    assert groups == {50: ["CartPole-v1", "ShortCartPole-v1"], 100: ["Pendulum-v1"]}


def test_yaml_and_shape_errors_name_the_file(tmp_path):
    assert "not valid YAML" in load_error(write(tmp_path, "name: [unclosed\n"))
    assert "is a mapping" in load_error(write(tmp_path, "- a\n- b\n"))
    assert "cannot read" in load_error(tmp_path / "missing.yaml")


def test_paths_are_relative_to_the_file_and_the_folder_defaults_to_the_data_home(tmp_path):
    suite = load_suite(write(tmp_path, "name: x\nlibraries: [{name: toy}]\ndata_root: data\n"))
    assert suite.dataset_root == tmp_path / "data"
    assert suite.record_path == data_home() / "suites" / "x" / "stages.json"
    other = suite.model_copy(update={"eval": suite.eval.model_copy(update={"episodes": 3})})
    fps, changed = suite.fingerprints(), other.fingerprints()
    assert [s for s in STAGES if fps[s] != changed[s]] == ["eval", "report"]


def test_cli_reports_suite_errors(tmp_path):
    result = CliRunner().invoke(app, ["suite", str(write(tmp_path, "name: x\nlibraries: []\n"))])
    assert result.exit_code == 2  # bad input: refused before any stage
    assert "field libraries:" in result.output
    path = write(tmp_path, "name: x\nlibraries: [{name: toy}]\n", "ok.yaml")
    result = CliRunner().invoke(app, ["suite", str(path), "--only", "bogus"])
    assert result.exit_code == 2 and "unknown stage 'bogus'" in result.output


@pytest.mark.parametrize(
    ("section", "field"),
    [("eval: {device: cdua}", "eval.device"), ("model: {device: cdua}", "model.device")],
)
def test_a_mistyped_device_is_refused_at_load_not_after_the_stages(tmp_path, section, field):
    name = f"dev-{uuid.uuid4().hex[:6]}"
    path = write(tmp_path, f"name: {name}\nlibraries: [{{name: toy}}]\n{section}\n")
    msg = load_error(path)
    assert f"{path}: field {field}: unknown device 'cdua'" in msg
    result = CliRunner().invoke(app, ["suite", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"field {field}: unknown device 'cdua'" in lines[0]
    assert not (data_home() / "suites" / name).exists()  # no stage record, no MLflow run


def test_an_unknown_candidate_is_refused_at_load(tmp_path):
    name = f"cand-{uuid.uuid4().hex[:6]}"
    path = write(
        tmp_path, f"name: {name}\nlibraries: [{{name: toy, candidates: [a2c-zoo, no-such]}}]\n"
    )
    msg = load_error(path)
    assert f"{path}: field libraries.0.candidates: unknown candidate(s) 'no-such'" in msg
    assert "known candidates: a2c-default" in msg
    result = CliRunner().invoke(app, ["suite", str(path)])
    assert result.exit_code == 2 and "libraries.0.candidates" in result.output
    assert not (data_home() / "suites" / name).exists()
    ok = write(
        tmp_path, f"name: {name}\nlibraries: [{{name: toy, candidates: [a2c-zoo]}}]\n", "ok.yaml"
    )
    assert load_suite(ok).libraries[0].candidates == ["a2c-zoo"]


def quiet():
    return Console(file=io.StringIO(), width=160)


def test_a_failed_stage_is_named_and_recorded(tmp_path):
    suite = load_suite(
        write(tmp_path, f"name: f-{uuid.uuid4().hex[:6]}\nlibraries: [{{name: toy}}]\n")
    )
    with pytest.raises(StageError) as info:
        run_suite(suite, only="report", console=quiet())
    assert info.value.stage == "report" and "run the eval stage first" in info.value.cause
    assert "ldm-eval suite" in info.value.command
    record = json.loads(suite.record_path.read_text())
    assert record["stages"]["report"]["status"] == "failed"
    assert "eval stage" in record["stages"]["report"]["error"]


def test_ldm_eval_declares_the_autorl_stages_package():
    # the autorl stage runs `python -m ldm_autorl.cli`: a declared dependency, not a guess
    requires = importlib.metadata.requires("ldm-eval") or []
    assert any(re.match(r"ldm-autorl\b", r) for r in requires), requires
    assert importlib.util.find_spec("ldm_autorl") is not None


@pytest.mark.slow
def test_a_failing_cli_stage_names_its_command(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    text = f"name: c-{uuid.uuid4().hex[:6]}\nlibraries: [{{name: toy}}]\n"
    suite = load_suite(write(tmp_path, text))
    # past the suite's own validation (which refuses it at load), the CLI still refuses it
    suite.libraries[0] = suite.libraries[0].model_copy(update={"candidates": ["no-such"]})
    with pytest.raises(StageError) as info:
        run_suite(suite, only="autorl", console=quiet())
    assert info.value.stage == "autorl"
    assert info.value.command.startswith("ldm-autorl rank toy")
    assert "exit status 2" in info.value.cause


MINI = """
name: {name}
libraries:
  - name: toy
    envs: [CartPole-v1, Pendulum-v1]
    candidates: [a2c-zoo]
    top_n: 1
    rank_budget: 1800
    train_budget: 8192
    env_budgets: {{CartPole-v1: 4096}}
    random_episodes: 3
    workers: 2
probe: {{check_steps: 20}}
model: {{config: tiny, steps: 30, batch_size: 8, checkpoint_every: 30, eval_every: 15,
         eval_episodes: 1}}
eval: {{episodes: 2, rollouts: 1, torch_threads: 1, resamples: 200}}
"""


def runs_in(experiment):
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return mlflow.search_runs([exp.experiment_id], output_format="list")


@pytest.mark.slow
def test_a_miniature_suite_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # env workers, SB3 and the model share 2 cores
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = f"mini-{uuid.uuid4().hex[:6]}"
    suite = load_suite(write(tmp_path, MINI.format(name=name)))
    out = io.StringIO()
    console = Console(file=out, width=160)

    first = run_suite(suite, console=console)
    assert first.ran == list(STAGES) and first.failed is None, out.getvalue()
    record_path = data_home() / "suites" / name / "stages.json"
    record = json.loads(record_path.read_text())
    for stage in STAGES:
        rec = record["stages"][stage]
        assert rec["status"] == "finished", (stage, rec)
        assert rec["wall_s"] is not None and rec["ended"] >= rec["started"]
        assert rec["commands"], stage
    commands = record["stages"]["autorl"]["commands"]
    assert any("ldm-autorl rank toy" in c for c in commands)
    # one train call per budget: CartPole at its own, the rest at the library's
    trains = [c for c in commands if c.startswith("ldm-autorl train toy")]
    assert len(trains) == 2
    assert any("--budget 4096" in c and "--env CartPole-v1" in c for c in trains)
    assert any("--budget 8192" in c and "--env Pendulum-v1" in c for c in trains)
    assert any("ldm-autorl filter toy" in c and "--random-episodes 3" in c for c in commands)
    folder = record_path.parent
    # every env of the suite, with its reference or the filter's reasons for having none
    references = pl.read_csv(folder / "references.csv")
    assert sorted(references["env_id"].to_list()) == ["CartPole-v1", "Pendulum-v1"]
    assert {"ref_random_mean", "zoo_best", "ref_pct_of_zoo", "dropped"} <= set(references.columns)
    for row in references.iter_rows(named=True):
        if row["reference_status"] == "ok":
            assert row["ref_random_mean"] is not None
        else:
            assert row["dropped"], row
    per_env = pl.read_csv(folder / "per_env.csv")
    assert {"ref_first10", "ref_last10", "ldm_return", "random_return"} <= set(per_env.columns)
    for table in ("summary.csv", "threshold_curve.csv"):
        assert (folder / table).is_file()
    assert "Pipeline: suite" in first.report.read_text()
    report = first.report.read_text()
    for stage in STAGES:
        assert f"<td class='l'>{stage}</td><td class='l'>finished</td>" in report
    assert "Summary" in report  # the evaluation report follows the pipeline section
    # the paper's figures beside ours come first, then the envs left out of the denominator
    assert report.index("Headline: the paper beside this run") < report.index("Pipeline: suite")
    assert "LDM-v0 (paper)" in report and "53.0%" in report
    for row in references.iter_rows(named=True):
        if row["reference_status"] != "ok":
            assert f"toy/{row['env_id']}: {row['reference_status']}" in report
    if (references["reference_status"] == "ok").all():
        assert "Every env of the suite kept a reference run" in report
    # the evaluations during training (Fig. 3): their curve and cost beside the report
    assert "eval during training:" in report
    curve = (data_home() / "suites" / name / "training_curve.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in curve[1:]] == ["15", "30"]
    assert "<h2>References</h2>" in report and "% of zoo" in report

    tracking.setup()
    for stage in ("ranking", "reference", "filter", "dataset", "model", "eval"):
        assert runs_in(f"ldm-{stage}/toy"), stage
    suite_runs = runs_in(f"ldm-suite/{name}")
    assert sorted(r.info.run_name for r in suite_runs) == sorted([*STAGES, f"suite {name}"])
    assert all(r.info.status == "FINISHED" for r in suite_runs)

    before = record_path.read_text()
    again = run_suite(suite, console=console)
    assert again.ran == [] and again.skipped == list(STAGES)
    assert json.loads(record_path.read_text())["stages"] == json.loads(before)["stages"]
    assert len(runs_in(f"ldm-suite/{name}")) == len(suite_runs)  # reopened, not duplicated

    only = run_suite(suite, only="report", console=console)
    assert only.ran == ["report"] and only.skipped == []
    assert "skipped" in out.getvalue() and "mlflow ui" in out.getvalue()
    assert os.path.isfile(first.report)
