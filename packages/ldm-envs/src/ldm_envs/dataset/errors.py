"""Errors of the trajectory dataset: every message names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path

from ldm_envs.errors import LDMEnvsError


class DatasetError(LDMEnvsError):
    """Base of every error raised by `ldm_envs.dataset`."""


class ShardInputError(DatasetError, ValueError):
    """Data handed to a shard writer does not match the shard's spaces (shape, dtype, length)."""


class CorruptFileError(DatasetError):
    """A dataset file cannot be trusted; `path` names it and `reason` says what is wrong."""

    kind = "file"

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"corrupt {self.kind} {self.path}: {reason}")


class CorruptShardError(CorruptFileError):
    """A shard is truncated, has flipped bytes, a foreign schema, or inconsistent episodes."""

    kind = "shard"


class CorruptDecisionError(CorruptFileError):
    """A filter-decision sidecar (`<shard>.decision.json`) is unreadable or malformed."""

    kind = "decision sidecar"


class CorruptIndexError(CorruptFileError):
    """The index folder is incomplete or inconsistent; rebuild it with `write_index(root)`."""

    kind = "index"
