"""ldm-model's subtree of `LDMError`: the CLIs print any of these as one `error:` line."""

from __future__ import annotations

import math
from pathlib import Path

from ldm_envs.errors import LDMError


class LDMModelError(LDMError):
    """Base of every error raised by ldm-model."""


class TokenizationError(LDMModelError, ValueError):
    """A value the tokenizer refuses (NaN), or a space it cannot encode."""


class CallbackPluginError(LDMModelError, RuntimeError):
    """`eval_every` is set and no training callback could be found or built."""


class TrainingError(LDMModelError, RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


class ResumeError(TrainingError):
    """The run folder holds a run that this command cannot continue."""


class NonFiniteLossError(TrainingError):
    """The loss (or the gradient norm) became NaN or infinite."""

    def __init__(self, step: int, env_ids: list[str], what: str = "loss", value: float = math.nan):
        envs = sorted(set(env_ids))
        super().__init__(
            f"non-finite {what} ({value}) at step {step}; the batch's windows come from "
            f"{len(envs)} env(s): {', '.join(envs)}"
        )
        self.step = step
        self.env_ids = env_ids
        self.what = what
        self.value = value


class CheckpointError(LDMModelError, RuntimeError):
    """A checkpoint that cannot be used; the message says which and why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path."""


class CorruptCheckpointError(CheckpointError):
    """A file of the checkpoint is missing, unreadable, or differs from its recorded hash."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"corrupt checkpoint file {path}: {reason}")
        self.path = path
        self.reason = reason


class CheckpointConfigError(CheckpointError):
    """The checkpoint was made under another model or training config."""


class ShardUnavailableError(LDMModelError, RuntimeError):
    """A shard the sampler needs is corrupt (now quarantined), gone, or differs from the index.

    Its message is one line naming the file and what to do.
    """

    def __init__(self, message: str) -> None:
        # A DataLoader worker's exception reaches the trainer re-raised as
        # `type(exc)("Caught X in DataLoader worker process 0.\nOriginal Traceback ...")`:
        # keep the original one-line message, not the worker's traceback.
        marker = f"{type(self).__name__}: "
        if message.startswith(f"Caught {type(self).__name__}") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)
