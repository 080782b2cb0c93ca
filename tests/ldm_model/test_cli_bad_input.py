"""`ldm-model train` refuses bad option values before it reads data or opens MLflow (issue 15)."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from ldm_envs import tracking
from ldm_model import cli
from ldm_model.training import TrainConfig
from ldm_model.training.callbacks import ENTRY_POINT_GROUP, CallbackPluginError, discover_callbacks

runner = CliRunner()


@pytest.fixture
def nothing_starts(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("an MLflow run was opened for input that should have been refused")

    monkeypatch.setattr(tracking, "tracked_run", refuse)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "option batch_size: Input should be greater than 0"),
        (["--batch-size", "-3"], "option batch_size: Input should be greater than 0"),
        (["--steps", "0"], "option steps: Input should be greater than 0"),
        (["--device", "cdua"], "--device: unknown device 'cdua'; give auto, cpu, cuda or cuda:N"),
        (["--stop-after", "0"], "--stop-after: must be a positive number, got 0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_bad_options_exit_2_with_one_line_naming_the_option(nothing_starts, args, message):
    root, out = nothing_starts / "data", nothing_starts / "run"
    result = runner.invoke(
        cli.app, ["train", "--dataset", str(root), "--out", str(out), "--no-progress", *args]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_cuda_device_is_refused_up_front(nothing_starts):
    result = runner.invoke(cli.app, ["train", "--dataset", str(nothing_starts), "--device", "cuda"])
    assert result.exit_code == 2
    assert "error: --device: device 'cuda' asked for, but CUDA is not available" in result.output


def test_a_batch_of_0_is_refused_not_the_default():
    with pytest.raises(ValidationError, match="batch_size"):
        TrainConfig(batch_size=0)
    assert TrainConfig().batch_size == 32  # leaving it out still picks the config's default
    assert TrainConfig(batch_size=8).batch_size == 8


def test_a_callback_plugin_that_exits_on_import_is_named_not_fatal(tmp_path):
    exits = EntryPoint(
        name="exits", value="tests.ldm_envs.plugin_exits:factory", group=ENTRY_POINT_GROUP
    )
    with pytest.raises(CallbackPluginError, match=r"plugin 'exits' is broken.*sys\.exit\(3\)"):
        discover_callbacks(TrainConfig(out=tmp_path, eval_every=5), eps=[exits])


# -- one error path (issue 16): a corrupt input file is one `error:` line, exit 2 ------------------


def _corrupt_index_copy(tiny_dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    (root / "index" / "runs.parquet").write_bytes(b"not parquet")
    return root


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_a_corrupt_index_is_one_error_line_and_exit_2(tiny_dataset, tmp_path, nothing_starts):
    root = _corrupt_index_copy(tiny_dataset, tmp_path)
    args = ["train", "--dataset", str(root), "--out", str(tmp_path / "run"), "--no-progress"]
    result = runner.invoke(cli.app, [*args, "--no-track"])
    assert result.exit_code == 2, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and "corrupt index" in errors[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("where", ["global", "after the command", "env"])
def test_debug_adds_the_traceback_above_the_same_line(tiny_dataset, tmp_path, monkeypatch, where):
    root = _corrupt_index_copy(tiny_dataset, tmp_path)
    args = ["train", "-d", str(root), "-o", str(tmp_path / "run"), "--no-progress", "--no-track"]
    if where == "global":
        args = ["--debug", *args]
    elif where == "after the command":
        args = [*args, "--debug"]
    else:
        monkeypatch.setenv("LDM_DEBUG", "1")
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback (most recent call last)" in result.output
    assert "CorruptIndexError" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: corrupt index")
