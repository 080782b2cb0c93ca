"""`ldm-eval evaluate | sizes | report` refuse bad options before any build, rollout or MLflow
run: exit 2 and one `error:` line naming the option (issue 15)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ldm_envs import tracking
from ldm_eval import model_sizes, pipeline
from ldm_eval.cli import app

runner = CliRunner()


@pytest.fixture
def nothing_starts(monkeypatch, tmp_path):
    """Fail the test if an evaluation, a size comparison or an MLflow run starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started for input that should have been refused")

    monkeypatch.setattr(tracking, "tracked_run", refuse)
    monkeypatch.setattr(pipeline, "evaluate", refuse)
    monkeypatch.setattr(model_sizes, "compare_sizes", refuse)
    return tmp_path


EVALUATE = ["evaluate", "--library", "toy", "--backend", "inprocess", "--no-track"]
BAD = [
    ([*EVALUATE, "--device", "cdua"], "--device: unknown device 'cdua'; give cpu, cuda or cuda:N"),
    ([*EVALUATE, "--batch-size", "0"], "option batch_size: Input should be greater than 0"),
    ([*EVALUATE, "--workers", "0"], "option num_workers: Input should be greater than 0"),
    ([*EVALUATE, "--episodes", "0"], "option episodes: Input should be greater than 0"),
    ([*EVALUATE, "--resamples", "0"], "--resamples: must be a positive number, got 0"),
    (["evaluate", "--backend", "vnev"], "option backend: unknown backend 'vnev'"),
    (["sizes", "--dataset", ".", "-c", "tiny", "--device", "cdua"], "--device: unknown device"),
    (["sizes", "--dataset", ".", "-c", "tiny", "--eval-device", "auto"], "--eval-device: unknown"),
    (["sizes", "--dataset", ".", "-c", "tiny", "--batch-size", "0"], "option batch_size: Input"),
    (["report", "somewhere", "--resamples", "0"], "--resamples: must be a positive number"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_options_exit_2_with_one_line_naming_the_option(nothing_starts, args, message):
    out = nothing_starts / "out"
    extra = ["--out", str(out)] if args[0] in ("evaluate", "sizes") else []
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()


# -- one error path (issue 16): a corrupt checkpoint.json is one `error:` line, exit 2 -------------


def _checkpoint_with_corrupt_record(tmp_path, text: str):
    """A run folder whose only checkpoint has `text` for its `checkpoint.json`."""
    import torch

    from ldm_model.config import get_config
    from ldm_model.model import LDM
    from ldm_model.training import TrainConfig
    from ldm_model.training.checkpoint import INFO_FILE, DatasetInfo, save_checkpoint

    model = LDM(get_config("tiny"))
    dataset = DatasetInfo(
        root=str(tmp_path), index_sha256=None, runs_sha256="0" * 64, envs=[], transitions=0
    )
    run = tmp_path / "run"
    save_checkpoint(
        run,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        train_config=TrainConfig(model="tiny", data_root=tmp_path, context=8, batch_size=2),
        step=1,
        dataset=dataset,
    )
    (step,) = (run / "checkpoints").iterdir()
    (step / INFO_FILE).write_text(text, encoding="utf-8")
    return run, step


@pytest.mark.parametrize("text", ['{"step": 1', '{"step": 1}'], ids=["bad json", "bad fields"])
@pytest.mark.parametrize("folder", ["run", "step"])
def test_a_corrupt_checkpoint_record_is_one_error_line(nothing_starts, text, folder):
    run, step = _checkpoint_with_corrupt_record(nothing_starts, text)
    path = run if folder == "run" else step
    result = runner.invoke(app, ["evaluate", str(path), "--backend", "inprocess", "--no-track"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: corrupt checkpoint file"), lines
    assert "not a checkpoint record" in lines[0] and "pydantic.dev" not in lines[0]

    debug = runner.invoke(app, ["--debug", "evaluate", str(path), "--backend", "inprocess"])
    assert debug.exit_code == 2
    assert "Traceback (most recent call last)" in debug.output and "ValidationError" in debug.output
    assert debug.output.strip().splitlines()[-1] == lines[0]
