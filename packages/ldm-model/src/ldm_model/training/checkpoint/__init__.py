"""Checkpoints: safetensors weights and optimizer state, plus a JSON record of what made them.

Layout of a run folder (`TrainConfig.out`)::

    checkpoints/step-00000100/
        model.safetensors        the LDM's state dict
        optimizer.safetensors    AdamW's tensors (exp_avg, exp_avg_sq, step per parameter)
        optimizer.json           AdamW's param groups, other state, and the parameter names
        checkpoint.json          `CheckpointInfo`: configs, step, metrics, dataset, hashes

Why it is built this way:

- safetensors holds no code (nothing is unpickled when a checkpoint is opened) and maps large
  files lazily;
- a checkpoint folder is written under a temporary name and renamed, so a run killed while
  saving leaves the previous checkpoint as the latest, never a half-written one;
- `checkpoint.json` records the sha256 of every file, so a truncated or altered file is named
  when the checkpoint is opened, not discovered as garbage weights later;
- a run folder given where a checkpoint is expected means its newest *valid* checkpoint:
  newer ones that are corrupt (a disk error, a copy cut short) are skipped with a warning
  naming them (`CheckpointFallbackWarning`, or the caller's `report`), so evaluation and
  resume go on from the previous checkpoint instead of stopping; a step folder named
  explicitly is opened as it is, or refused;
- the dataset is recorded by the hash of its index and of the runs the sampler draws from:
  sampling is a function of `(seed, step)` over those runs, so equal hashes mean a resumed run
  sees the batches the interrupted one would have seen.

The package holds one concept per module: `record` (file names and `checkpoint.json`),
`locate` (finding a checkpoint, the fallback past corrupt ones), `load` and `save`. Import from
here: the names below are the public ones.
"""

from ldm_model.errors import (
    CheckpointConfigError,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from ldm_model.training.checkpoint.load import (
    Checkpoint,
    check_model_config,
    load_checkpoint,
    load_model,
)
from ldm_model.training.checkpoint.locate import (
    latest_checkpoint,
    list_checkpoints,
    read_info,
    resolve_checkpoint,
    step_dir_name,
    valid_checkpoint,
    verify_files,
)
from ldm_model.training.checkpoint.record import (
    CHECKPOINTS_DIR,
    FORMAT_VERSION,
    INFO_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_STATE_FILE,
    STEP_PREFIX,
    CheckpointFallbackWarning,
    CheckpointInfo,
    DatasetInfo,
    EnvEntry,
    Report,
    dataset_info,
    index_files,
    sha256_file,
)
from ldm_model.training.checkpoint.save import (
    optimizer_param_names,
    prune_checkpoints,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINTS_DIR",
    "FORMAT_VERSION",
    "INFO_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "OPTIMIZER_STATE_FILE",
    "STEP_PREFIX",
    "Checkpoint",
    "CheckpointConfigError",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DatasetInfo",
    "EnvEntry",
    "Report",
    "check_model_config",
    "dataset_info",
    "index_files",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "optimizer_param_names",
    "prune_checkpoints",
    "read_info",
    "resolve_checkpoint",
    "save_checkpoint",
    "sha256_file",
    "step_dir_name",
    "valid_checkpoint",
    "verify_files",
]
