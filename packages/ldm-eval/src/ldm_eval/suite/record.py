"""The stage record, `<suite folder>/stages.json`: what each stage did when it last ran.

Every stage resumes its own finished work, but even a no-op resume costs minutes (processes,
envs, MLflow); the record lets the runner skip a stage that finished with the same inputs
(its fingerprint) and tells the user where each stage stands. Written atomically before and
after each stage, so a killed suite leaves a readable record behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from ldm_envs.manifest import atomic_write_text
from ldm_eval.errors import SuiteError

__all__ = ["StageRecord", "SuiteRecord"]


class StageRecord(BaseModel):
    """One stage's last attempt (and the total over attempts)."""

    stage: str
    status: Literal["running", "finished", "failed", "interrupted"]
    fingerprint: str
    started: float
    ended: float | None = None
    #: Wall time of the last attempt, seconds.
    wall_s: float | None = None
    attempts: int = 1
    #: Wall time over all attempts, seconds.
    total_wall_s: float = 0.0
    #: The commands the stage ran (or, for in-process stages, their CLI equivalents).
    commands: list[str] = []
    #: Paths and ids later stages and the report need (checkpoint, eval folder, MLflow runs).
    outputs: dict[str, str] = {}
    error: str | None = None


class SuiteRecord(BaseModel):
    """`stages.json`: the suite's stages as they last ran."""

    suite: str
    source: str | None = None
    updated: float = 0.0
    stages: dict[str, StageRecord] = {}

    @classmethod
    def load(cls, path: Path, suite: str) -> SuiteRecord:
        """The record at `path`, or an empty one.

        Raises:
            SuiteError: an unreadable record (named; delete it to start the bookkeeping over).
        """
        if not path.exists():
            return cls(suite=suite)
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError, OSError) as exc:
            raise SuiteError(
                f"{path}: unreadable stage record ({type(exc).__name__}); remove it to run "
                "every stage again (each resumes its own finished work)"
            ) from None

    def save(self, path: Path) -> None:
        """Write atomically (temporary sibling, then rename)."""
        self.updated = time.time()
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")
