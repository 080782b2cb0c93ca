"""The sampler never trains on a corrupt or missing shard: it quarantines, stops and names it.

Real shards from the real writer (`tests.ldm_model.datasets`), corrupted on disk; `ldm-model
train` through typer's runner, with and without DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from ldm_envs.dataset import QUARANTINE_DIR, ShardReader, quarantine_reason
from ldm_model import cli
from ldm_model.data import ShardUnavailableError, WindowSampler
from tests.ldm_model.datasets import VECTOR_BOX, VECTOR_DISCRETE, make_dataset

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "err", Console(width=250, stderr=True))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def flip_obs(path: Path, row: int = 5) -> None:
    """Flip one bit of the stored observation at `row`, in place, as a failing disk would."""
    with ShardReader(path) as reader:
        needle = reader.column("obs")[row].tobytes()
    raw = bytearray(path.read_bytes())
    raw[bytes(raw).index(needle) + 1] ^= 0x10
    path.write_bytes(bytes(raw))


def one_env(root: Path) -> Path:
    """A dataset of one run: every window comes from its shard. Returns the shard."""
    (path,) = make_dataset(root, envs=(VECTOR_DISCRETE,))
    return path


def train(root: Path, out: Path, *extra: str):
    args = ["train", "--dataset", str(root), "--batch-size", "2", "--context", "8"]
    args += ["--steps", "2", "--no-track", "--no-progress", "--out", str(out), *extra]
    return runner.invoke(cli.app, args)


def test_sampler_quarantines_a_flipped_byte_and_names_it(tmp_path: Path) -> None:
    shard = one_env(tmp_path)
    flip_obs(shard)
    sampler = WindowSampler(tmp_path, context=8)  # opening is cheap: nothing read yet
    with pytest.raises(ShardUnavailableError) as info:
        sampler.sample(0, 4)
    message = str(info.value)
    assert f"corrupt shard {shard}" in message and "column 'obs'" in message
    assert "moved to" in message and "\n" not in message
    record = quarantine_reason(tmp_path, "toy/VecDiscrete-v0/run-0.arrow")
    assert record is not None and record.found_by == "window sampler"
    assert not shard.exists() and (tmp_path / QUARANTINE_DIR / record.shard).exists()
    # the index still lists it: a new sampler refuses at once, saying why it is gone
    with pytest.raises(ShardUnavailableError, match=r"run-0\.arrow is missing: quarantined"):
        WindowSampler(tmp_path, context=8)


def test_unchecked_sampler_would_have_trained_on_it(tmp_path: Path) -> None:
    """What the check prevents: without it the flipped value goes into the batch."""
    shard = one_env(tmp_path)
    with ShardReader(shard) as reader:
        clean = np.array(reader.column("obs"))
    flip_obs(shard)
    batch = WindowSampler(tmp_path, context=300, check_shards=False).sample(0, 1)
    assert not np.array_equal(batch.obs[0, :, :4].numpy(), clean)


def test_train_on_a_corrupt_shard_is_one_error_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    shard = one_env(root)
    flip_obs(shard)
    result = train(root, tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and f"corrupt shard {shard}" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "checkpoints").exists()  # not one step trained
    assert not shard.exists()  # quarantined


def test_train_through_workers_on_a_corrupt_shard(tmp_path: Path) -> None:
    """A DataLoader worker's error reaches the CLI as the same one line."""
    root = tmp_path / "data"
    shard = one_env(root)
    flip_obs(shard)
    result = train(root, tmp_path / "out", "--loader-workers", "1")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"corrupt shard {shard}" in errors[0], result.output
    assert "DataLoader worker" not in result.output and "Traceback" not in result.output


def test_train_on_a_missing_shard_is_one_error_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    paths = make_dataset(root, envs=(VECTOR_DISCRETE, VECTOR_BOX))
    paths[1].unlink()
    result = train(root, tmp_path / "out")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert f"shard {paths[1]} is missing: deleted" in errors[0]
    assert f"ldm-autorl show --dataset {root}" in errors[0], result.output
    assert "Traceback" not in result.output
