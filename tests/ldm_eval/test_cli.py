"""The `ldm-eval` CLI: a baseline evaluation, reports from a folder and from an MLflow run."""

import re

from typer.testing import CliRunner

from ldm_envs.dataset import write_index
from ldm_eval.cli import app
from tests.ldm_eval.test_pipeline import SHORT, write_reference

runner = CliRunner()
IMG = re.compile(r"src='data:image/png;base64,")


def test_evaluate_then_report_from_folder_and_from_mlflow(tmp_path):
    root = tmp_path / "dataset"
    write_reference(root, SHORT, [0.0] * 9 + [20.0])
    write_index(root)
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--library",
            "toy",
            "--env",
            SHORT,
            "--backend",
            "inprocess",
            "--episodes",
            "2",
            "--dataset",
            str(root),
            "--out",
            str(out),
            "--resamples",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    run_id = re.search(r"MLflow run: ([0-9a-f]+)", result.output).group(1)
    assert (out / "report.html").is_file()

    from_dir = tmp_path / "from_dir.html"
    result = runner.invoke(app, ["report", str(out), "-o", str(from_dir)])
    assert result.exit_code == 0, result.output
    html = from_dir.read_text()
    assert len(IMG.findall(html)) == 3 and "random" in html and "50.0%" in html

    from_run = tmp_path / "from_run.html"
    result = runner.invoke(app, ["report", run_id, "-o", str(from_run)])
    assert result.exit_code == 0, result.output
    assert len(IMG.findall(from_run.read_text())) == 3


def test_errors_name_the_unknown_thing(tmp_path):
    result = runner.invoke(app, ["evaluate", "--library", "nope", "--no-track"])
    assert result.exit_code == 1
    assert "unknown env library 'nope'" in result.output and "toy" in result.output
    result = runner.invoke(app, ["evaluate", "--no-random-baseline", "--library", "toy"])
    assert result.exit_code == 1 and "nothing to evaluate" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "none.pt")])
    assert result.exit_code == 1 and "no checkpoint at" in result.output
    result = runner.invoke(app, ["report", "not-a-run", "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 1 and "neither an evaluation folder" in result.output
