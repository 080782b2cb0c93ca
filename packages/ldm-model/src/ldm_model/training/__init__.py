"""Training the LDM: configuration, checkpoints, DDP set-up and the training loop.

`train(TrainConfig(...))` runs in one process or as a `torchrun` rank; `load_checkpoint` opens
what it saved (refusing another config or a corrupt file with a message that says which).
"""

from ldm_model.training.callbacks import TrainerCallback, TrainingState
from ldm_model.training.checkpoint import (
    Checkpoint,
    CheckpointConfigError,
    CheckpointError,
    CheckpointFallbackWarning,
    CheckpointInfo,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DatasetInfo,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    read_info,
    save_checkpoint,
    valid_checkpoint,
)
from ldm_model.training.config import TrainConfig
from ldm_model.training.distributed import DistContext, init_distributed
from ldm_model.training.trainer import (
    NonFiniteLossError,
    ResumeError,
    Trainer,
    TrainingError,
    TrainResult,
    read_metrics,
    train,
)

__all__ = [
    "Checkpoint",
    "CheckpointConfigError",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DatasetInfo",
    "DistContext",
    "NonFiniteLossError",
    "ResumeError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "TrainingError",
    "TrainingState",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model",
    "read_info",
    "read_metrics",
    "save_checkpoint",
    "train",
    "valid_checkpoint",
]
