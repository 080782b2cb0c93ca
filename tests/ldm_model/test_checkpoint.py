"""Checkpoints: round trip, atomic writes, pruning, and clear refusals of bad ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ldm_model.config import get_config
from ldm_model.data import WindowSampler
from ldm_model.model import LDM
from ldm_model.training import TrainConfig
from ldm_model.training.checkpoint import (
    INFO_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    CheckpointConfigError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    dataset_info,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    optimizer_param_names,
    read_info,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path) -> tuple[LDM, torch.optim.Optimizer, TrainConfig]:
    """A tiny model after two AdamW steps (so the optimizer has state)."""
    torch.manual_seed(0)
    model = LDM(get_config("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = WindowSampler(tiny_dataset, context=8)
    for step in range(2):
        model.loss(sampler.sample(step, 2)).loss.backward()
        opt.step()
        opt.zero_grad()
    config = TrainConfig(model="tiny", data_root=tiny_dataset, context=8, batch_size=2, steps=2)
    return model, opt, config


def _save(out: Path, trained, tiny_dataset: Path, step: int = 2, keep: int | None = None) -> Path:
    model, opt, config = trained
    data = dataset_info(WindowSampler(tiny_dataset, context=8))
    return save_checkpoint(
        out,
        model=model,
        optimizer=opt,
        train_config=config,
        step=step,
        dataset=data,
        metrics={"loss": 1.5},
        mlflow_run_id="abc",
        keep=keep,
    )


def test_round_trip(tmp_path: Path, trained, tiny_dataset: Path) -> None:
    model, opt, config = trained
    path = _save(tmp_path, trained, tiny_dataset)
    assert path == tmp_path / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [INFO_FILE, MODEL_FILE, OPTIMIZER_FILE, "optimizer.json"]
    )
    # no temporary folder left behind
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]
    # a run folder resolves to its latest checkpoint
    ckpt = load_checkpoint(tmp_path, expected_config=get_config("tiny"))
    assert ckpt.path == path
    assert ckpt.info.step == 2 and ckpt.info.metrics == {"loss": 1.5}
    assert ckpt.info.train == config
    assert ckpt.info.mlflow_run_id == "abc"
    assert ckpt.info.num_parameters == model.num_parameters()
    assert [e.env_id for e in ckpt.info.dataset.envs] == ["VecBox-v0", "VecDiscrete-v0"]
    assert ckpt.info.dataset.index_sha256 and len(ckpt.info.dataset.index_sha256) == 64
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model_state[key], value), key
    # the optimizer comes back exactly
    fresh = LDM(get_config("tiny"))
    ckpt.load_into(fresh)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt.optimizer_state(optimizer_param_names(fresh, opt2)))
    a, b = opt.state_dict(), opt2.state_dict()
    for ga, gb in zip(a["param_groups"], b["param_groups"], strict=True):
        assert {**ga, "betas": tuple(ga["betas"])} == {**gb, "betas": tuple(gb["betas"])}
    for pid, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(b["state"][pid][key], value), (pid, key)
    loaded, _ = load_model(path)
    assert not loaded.training
    # the policy's view of it
    assert ckpt.model_config == get_config("tiny") and ckpt.state_dict is ckpt.model_state


def test_keep_last_n(tmp_path: Path, trained, tiny_dataset: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, trained, tiny_dataset, step=step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    # saving a step again replaces it
    _save(tmp_path, trained, tiny_dataset, step=4, keep=2)
    assert read_info(tmp_path).step == 4


def test_refuses_another_config(tmp_path: Path, trained, tiny_dataset: Path) -> None:
    path = _save(tmp_path, trained, tiny_dataset)
    with pytest.raises(CheckpointConfigError) as err:
        load_checkpoint(path, expected_config=get_config("32M"))
    msg = str(err.value)
    assert "'tiny'" in msg and "'32M'" in msg and str(path) in msg and "hidden_size" in msg
    with pytest.raises(CheckpointConfigError, match="do not fit"):
        load_checkpoint(path).load_into(LDM(get_config("tiny").model_copy(update={"token_dim": 4})))


def test_refuses_corrupt_files(tmp_path: Path, trained, tiny_dataset: Path) -> None:
    path = _save(tmp_path / "run", trained, tiny_dataset)
    # one flipped byte in the weights: the hash names the file
    bad = tmp_path / "flipped"
    shutil.copytree(path, bad)
    data = bytearray((bad / MODEL_FILE).read_bytes())
    data[-10] ^= 0xFF
    (bad / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="sha256") as err:
        load_checkpoint(bad)
    assert err.value.path == bad / MODEL_FILE
    # garbage with a matching recorded hash: safetensors refuses it, the file is named
    garbage = tmp_path / "garbage"
    shutil.copytree(path, garbage)
    (garbage / MODEL_FILE).write_bytes(b"not a safetensors file" * 10)
    info = json.loads((garbage / INFO_FILE).read_text())
    from ldm_model.training.checkpoint import sha256_file

    info["files"][MODEL_FILE] = sha256_file(garbage / MODEL_FILE)
    (garbage / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(CorruptCheckpointError, match="unreadable safetensors") as err:
        load_checkpoint(garbage)
    assert err.value.path == garbage / MODEL_FILE
    # a missing file, a broken record
    missing = tmp_path / "missing"
    shutil.copytree(path, missing)
    (missing / OPTIMIZER_FILE).unlink()
    with pytest.raises(CorruptCheckpointError, match="missing") as err:
        load_checkpoint(missing)
    assert err.value.path == missing / OPTIMIZER_FILE
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / INFO_FILE).write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="not a checkpoint record") as err:
        load_checkpoint(broken)
    assert err.value.path == broken / INFO_FILE


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path)
