"""What a checkpoint is on disk: its file names, and `checkpoint.json`, the record of what made it.

The record names the model and training configs, the step, the metrics, the dataset (by the
hash of its index and of the runs the sampler draws from) and the sha256 of every other file,
so that a checkpoint can be refused, resumed or evaluated from its record alone. Changing any
of this changes the checkpoint format: `FORMAT_VERSION` says which one a file holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field

from ldm_model.config import ModelConfig
from ldm_model.training.config import TrainConfig

if TYPE_CHECKING:
    from ldm_model.data.windows import WindowSampler

__all__ = [
    "CHECKPOINTS_DIR",
    "FORMAT_VERSION",
    "INFO_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "OPTIMIZER_STATE_FILE",
    "STEP_PREFIX",
    "CheckpointFallbackWarning",
    "CheckpointInfo",
    "DatasetInfo",
    "EnvEntry",
    "Report",
    "dataset_info",
    "index_files",
    "sha256_file",
]

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_STATE_FILE = "optimizer.json"
INFO_FILE = "checkpoint.json"
STEP_PREFIX = "step-"
_CHUNK = 1 << 20


class CheckpointFallbackWarning(UserWarning):
    """A run folder's newest checkpoint is corrupt: an older valid one is used instead."""


#: Receives the one-line notice of a fallback (default: `warnings.warn` it).
Report = Callable[[str], None]


class EnvEntry(BaseModel):
    """One env the run trains on (a row of `WindowSampler.envs`)."""

    model_config = ConfigDict(extra="forbid")

    index: int
    library: str
    env_id: str
    runs: int
    transitions: int
    weight: float


class DatasetInfo(BaseModel):
    """The training data: where it is and what exactly was drawn from."""

    model_config = ConfigDict(extra="forbid")

    root: str
    #: sha256 of `root/index/runs.parquet` (None when the file is gone).
    index_sha256: str | None
    #: sha256 of the sampler's run list (shard paths, rows, envs): equal means same batches.
    runs_sha256: str
    envs: list[EnvEntry]
    transitions: int
    #: Shards the sampler left out, with the reason.
    skipped: list[tuple[str, str]] = Field(default_factory=list)


class CheckpointInfo(BaseModel):
    """`checkpoint.json`."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    model: ModelConfig
    train: TrainConfig
    #: Optimizer steps done; training resumes with the batch of this step number.
    step: int
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset: DatasetInfo
    mlflow_run_id: str | None = None
    world_size: int = 1
    num_parameters: int
    #: sha256 of each file of the checkpoint folder (checkpoint.json apart).
    files: dict[str, str]
    created: datetime
    torch_version: str = torch.__version__


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def index_files(root: Path) -> list[Path]:
    """The dataset index's files (`index/*.parquet`, `index/info.json`) that exist."""
    folder = Path(root) / "index"
    return sorted(p for p in folder.glob("*") if p.is_file() and p.suffix in (".parquet", ".json"))


def dataset_info(sampler: WindowSampler) -> DatasetInfo:
    """What `sampler` draws from, for the checkpoint record."""
    root = Path(sampler.root).expanduser().resolve()
    runs_parquet = root / "index" / "runs.parquet"
    envs = [EnvEntry(**row) for row in sampler.envs.iter_rows(named=True)]
    blob = json.dumps(
        {
            "runs": sampler.run_paths,
            "run_envs": [int(e) for e in sampler.run_envs],
            "envs": [e.model_dump() for e in envs],
        },
        sort_keys=True,
    )
    return DatasetInfo(
        root=str(root),
        index_sha256=sha256_file(runs_parquet) if runs_parquet.is_file() else None,
        runs_sha256=hashlib.sha256(blob.encode()).hexdigest(),
        envs=envs,
        transitions=int(sampler.transitions),
        skipped=[(str(p), str(r)) for p, r in sampler.skipped],
    )
