"""ldm-eval's subtree of `LDMError`: the CLIs print any of these as one `error:` line."""

from __future__ import annotations

from ldm_envs.errors import LDMError


class LDMEvalError(LDMError):
    """Base of every error raised by ldm-eval."""


class SuiteError(LDMEvalError, ValueError):
    """A suite file (or a stage option) that cannot be used; the message names file and field.

    Raised before any stage runs: `ldm-eval suite` exits 2 on it, as on any refused input.
    """


class StageError(LDMEvalError, RuntimeError):
    """A stage failed: which stage, the command that failed (or its CLI equivalent), why."""

    def __init__(self, stage: str, command: str, cause: str) -> None:
        super().__init__(f"stage {stage!r} failed: {cause}\n  command: {command}")
        self.stage = stage
        self.command = command
        self.cause = cause


class ModelSizesError(LDMEvalError, ValueError):
    """A comparison that cannot run: bad settings, no dataset, a size that failed (named)."""
