"""A corrupt newest checkpoint: loading and resuming use the newest valid one, saying so."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ldm_model.training import TrainConfig, train
from ldm_model.training.checkpoint import (
    MODEL_FILE,
    CheckpointFallbackWarning,
    CorruptCheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_model,
    valid_checkpoint,
)
from ldm_model.training.trainer import ResumeError


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def config(root: Path, out: Path, **kw) -> TrainConfig:
    base = {
        "model": "tiny",
        "data_root": root,
        "batch_size": 4,
        "context": 8,
        "steps": 4,
        "log_every": 1,
        "checkpoint_every": 2,
        "mlflow": False,
        "out": out,
    }
    return TrainConfig(**{**base, **kw})


def flip_a_byte(folder: Path) -> None:
    """A weight file altered after it was saved (a disk error, a copy cut short)."""
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[-10] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))


@pytest.fixture(scope="module")
def whole(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("whole")
    train(config(tiny_dataset, out), progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    return out


def damaged_copy(whole: Path, dest: Path) -> Path:
    shutil.copytree(whole, dest)
    flip_a_byte(list_checkpoints(dest)[-1])
    return dest


def test_loading_a_run_folder_falls_back_and_says_so(whole: Path, tmp_path: Path) -> None:
    run = damaged_copy(whole, tmp_path / "run")
    with pytest.warns(CheckpointFallbackWarning) as caught:
        _, ckpt = load_model(run)
    assert ckpt.info.step == 2 and ckpt.path.name == "step-00000002"
    message = str(caught[0].message)
    assert "step-00000004" in message and "sha256" in message
    assert "using step-00000002 (step 2)" in message
    notes: list[str] = []
    assert valid_checkpoint(run, report=notes.append).name == "step-00000002"
    assert len(notes) == 1
    # a step folder named explicitly is opened as it is: refused, never swapped for another
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        load_checkpoint(run / "checkpoints" / "step-00000004")
    # every checkpoint corrupt: the newest is named, and the count of the others
    flip_a_byte(run / "checkpoints" / "step-00000002")
    with pytest.raises(CorruptCheckpointError, match=r"1 older checkpoint.*corrupt too"):
        load_checkpoint(run)


def test_resume_goes_on_from_the_newest_valid_checkpoint(
    whole: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    run = damaged_copy(whole, tmp_path / "run")
    with pytest.warns(CheckpointFallbackWarning, match="resuming: skipped 1 corrupt"):
        resumed = train(config(tiny_dataset, run), progress=False)
    assert resumed.start_step == 2 and resumed.step == 4
    # steps 3 and 4 redone from step 2: the same weights as the run that was never damaged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # step 4 was saved again: valid, nothing to skip
        got = load_checkpoint(run).model_state
    for key, value in load_checkpoint(whole).model_state.items():
        assert torch.equal(got[key], value), key


def test_resume_refuses_when_no_checkpoint_is_valid(
    whole: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    run = damaged_copy(whole, tmp_path / "run")
    flip_a_byte(list_checkpoints(run)[0])
    with pytest.raises(ResumeError, match="no checkpoint of it is valid"):
        train(config(tiny_dataset, run), progress=False)
