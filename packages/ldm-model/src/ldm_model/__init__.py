"""The Large Decision Model (LDM-v0): tokenizer, model, data, trainer, policy.

The names below are what a researcher imports: the named configs, the model and its policy,
training (`train(TrainConfig(...))`) and its checkpoints, and the errors. They are imported on
first use, so `import ldm_model` loads no torch (nor transformers, nor MLflow) until one is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm_envs._lazy import lazy_module

if TYPE_CHECKING:
    from ldm_model.config import NAMED_CONFIGS, ModelConfig, get_config
    from ldm_model.data import WindowSampler, make_loader
    from ldm_model.errors import (
        CallbackPluginError,
        CheckpointConfigError,
        CheckpointError,
        CheckpointNotFoundError,
        CorruptCheckpointError,
        LDMModelError,
        NonFiniteLossError,
        ResumeError,
        ShardUnavailableError,
        TokenizationError,
        TrainingError,
    )
    from ldm_model.model import LDM
    from ldm_model.policy import LDMPolicy
    from ldm_model.tokenizer import SpaceCodec
    from ldm_model.training import (
        Checkpoint,
        TrainConfig,
        Trainer,
        TrainerCallback,
        TrainingState,
        TrainResult,
        latest_checkpoint,
        load_checkpoint,
        load_model,
        read_metrics,
        train,
    )

    __version__: str

_EXPORTS = {
    "NAMED_CONFIGS": "ldm_model.config",
    "ModelConfig": "ldm_model.config",
    "get_config": "ldm_model.config",
    "WindowSampler": "ldm_model.data",
    "make_loader": "ldm_model.data",
    "CallbackPluginError": "ldm_model.errors",
    "CheckpointConfigError": "ldm_model.errors",
    "CheckpointError": "ldm_model.errors",
    "CheckpointNotFoundError": "ldm_model.errors",
    "CorruptCheckpointError": "ldm_model.errors",
    "LDMModelError": "ldm_model.errors",
    "NonFiniteLossError": "ldm_model.errors",
    "ResumeError": "ldm_model.errors",
    "ShardUnavailableError": "ldm_model.errors",
    "TokenizationError": "ldm_model.errors",
    "TrainingError": "ldm_model.errors",
    "LDM": "ldm_model.model",
    "LDMPolicy": "ldm_model.policy",
    "SpaceCodec": "ldm_model.tokenizer",
    "Checkpoint": "ldm_model.training",
    "TrainConfig": "ldm_model.training",
    "Trainer": "ldm_model.training",
    "TrainerCallback": "ldm_model.training",
    "TrainingState": "ldm_model.training",
    "TrainResult": "ldm_model.training",
    "latest_checkpoint": "ldm_model.training",
    "load_checkpoint": "ldm_model.training",
    "load_model": "ldm_model.training",
    "read_metrics": "ldm_model.training",
    "train": "ldm_model.training",
}

__getattr__, __dir__ = lazy_module(__name__, _EXPORTS, distribution="ldm-model")
del lazy_module

__all__ = [
    "LDM",
    "NAMED_CONFIGS",
    "CallbackPluginError",
    "Checkpoint",
    "CheckpointConfigError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "LDMModelError",
    "LDMPolicy",
    "ModelConfig",
    "NonFiniteLossError",
    "ResumeError",
    "ShardUnavailableError",
    "SpaceCodec",
    "TokenizationError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "TrainingError",
    "TrainingState",
    "WindowSampler",
    "get_config",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model",
    "make_loader",
    "read_metrics",
    "train",
]
