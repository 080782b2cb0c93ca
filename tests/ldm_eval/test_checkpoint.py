"""Reading a real checkpoint's provenance: training run, dataset root, envs trained on."""

from pathlib import Path

import pytest
import torch

from ldm_eval.checkpoint import read_checkpoint
from ldm_eval.protocol import EnvTarget
from ldm_model.config import get_config
from ldm_model.data import WindowSampler
from ldm_model.model import LDM
from ldm_model.training import TrainConfig
from ldm_model.training.checkpoint import CheckpointError, dataset_info, save_checkpoint
from tests.ldm_model.datasets import VECTOR_BOX, VECTOR_DISCRETE, make_dataset


def test_read_checkpoint_gives_provenance(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, envs=(VECTOR_DISCRETE, VECTOR_BOX))
    model = LDM(get_config("tiny"))
    out = tmp_path / "run"
    save_checkpoint(
        out,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        train_config=TrainConfig(model="tiny", data_root=root, context=8, batch_size=2),
        step=3,
        dataset=dataset_info(WindowSampler(root, context=8)),
        mlflow_run_id="abc123",
    )
    ckpt = read_checkpoint(out)  # the run folder resolves to its latest checkpoint
    assert ckpt.run_id == "abc123"
    assert ckpt.dataset_root == root
    assert sorted(ckpt.envs, key=lambda e: e.env_id) == sorted(
        [
            EnvTarget(library=VECTOR_DISCRETE.library, env_id=VECTOR_DISCRETE.env_id),
            EnvTarget(library=VECTOR_BOX.library, env_id=VECTOR_BOX.env_id),
        ],
        key=lambda e: e.env_id,
    )
    assert ckpt.path.name.startswith("step-")


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        read_checkpoint(tmp_path / "nowhere")
