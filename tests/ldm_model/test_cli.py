"""`ldm-model train | info | configs` through typer's test runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from ldm_model import cli

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "err", Console(width=250, stderr=True))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _train(root: Path, out: Path, *extra: str):
    return runner.invoke(
        cli.app,
        [
            "train",
            "--dataset",
            str(root),
            "--batch-size",
            "2",
            "--context",
            "8",
            "--steps",
            "2",
            "--no-track",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ],
    )


def test_train_then_show(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _train(tiny_dataset, out)
    assert result.exit_code == 0, result.output
    assert "done" in result.output and "step 2" in result.output
    info = runner.invoke(cli.app, ["show", str(out)])
    assert info.exit_code == 0, info.output
    text = info.output
    for expected in (
        "model config 'tiny'",
        "hidden_size",
        "2,238,064",
        "VecDiscrete-v0",
        "VecBox-v0",
        "index sha256",
        "loss",
        "step-00000002",
    ):
        assert expected in text, expected
    # the same command again: nothing to do
    again = _train(tiny_dataset, out)
    assert again.exit_code == 0 and "already trained" in again.output
    # other options into the same folder: refused, saying which
    other = _train(tiny_dataset, out, "--lr", "0.001")
    assert other.exit_code == 1 and "other options" in other.output and "lr" in other.output


def test_show_refuses_missing_and_corrupt(tiny_dataset: Path, tmp_path: Path) -> None:
    missing = runner.invoke(cli.app, ["show", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    out = tmp_path / "run"
    assert _train(tiny_dataset, out).exit_code == 0
    model = out / "checkpoints" / "step-00000002" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])
    corrupt = runner.invoke(cli.app, ["show", str(out)])
    assert corrupt.exit_code == 2  # a corrupt input file: bad input (ldm_envs.cli_errors)
    assert "corrupt checkpoint file" in corrupt.output and "model.safetensors" in corrupt.output
    unverified = runner.invoke(cli.app, ["show", str(out), "--no-verify"])
    assert unverified.exit_code == 0 and "files verified" in unverified.output


def test_train_clear_errors(tmp_path: Path) -> None:
    unknown = runner.invoke(cli.app, ["train", "--model", "13B", "--no-track"])
    assert unknown.exit_code == 1 and "unknown model config '13B'" in unknown.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nodata = _train(empty, tmp_path / "out")
    assert nodata.exit_code == 1 and "no index" in nodata.output
    assert "ldm-autorl run" in nodata.output


def test_configs_table() -> None:
    result = runner.invoke(cli.app, ["list"])
    assert result.exit_code == 0, result.output
    for name in ("tiny", "32M", "70M", "308M", "736M", "308,000,000"):
        assert name in result.output
    assert "%" in result.output
