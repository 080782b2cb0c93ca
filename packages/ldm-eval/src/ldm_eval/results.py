"""An evaluation's folder: the plan, the references and every rollout attempt, written atomically.

Layout of a run folder::

    eval.json            EvalManifest: config, planned envs and policies, checkpoint, status
    references.parquet   the reference run of every planned env (normalize.REFERENCE_SCHEMA)
    rollouts.parquet     every rollout attempt so far (scores.ROLLOUT_SCHEMA)
    tables/*.parquet     derived tables (scores, per-env, threshold curve, summary)
    plots/*.png          derived plots
    report.html          the self-contained report

Every file is replaced atomically (temporary sibling, then rename), and `rollouts.parquet` is
rewritten as rollouts finish, so a crash or Ctrl-C leaves a folder a report can be built from
(it then marks what is missing) and that `ldm-eval evaluate` resumes from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

from ldm_envs.atomic import atomic_path, atomic_write_text
from ldm_eval.checkpoint import CheckpointInfo
from ldm_eval.normalize import REFERENCE_SCHEMA
from ldm_eval.protocol import EvalConfig, RolloutResult
from ldm_eval.scores import ROLLOUT_SCHEMA

__all__ = [
    "FORMAT_VERSION",
    "EvalManifest",
    "EvalRunDir",
    "PlannedEnv",
    "ResultWriter",
]

#: Version of the run folder's layout (bumped when files or columns change).
FORMAT_VERSION = 1

EvalStatus = Literal["running", "complete", "interrupted", "failed"]


class PlannedEnv(BaseModel):
    """An env the evaluation set out to run, with what the tables say about it."""

    library: str
    env_id: str
    observation_space: str | None = None
    action_space: str | None = None
    #: whether the checkpoint was trained on this env's library / this env (None: unknown)
    trained_library: bool | None = None
    trained_env: bool | None = None


class EvalManifest(BaseModel):
    """`eval.json`: what was planned, with what, and how far it got."""

    format_version: int = FORMAT_VERSION
    run_key: str
    name: str
    status: EvalStatus = "running"
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    config: EvalConfig
    policies: list[str]
    envs: list[PlannedEnv]
    checkpoint: CheckpointInfo | None = None
    dataset_root: str | None = None
    reference_rule: str = ""
    mlflow_run_id: str | None = None
    warnings: list[str] = []


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> None:
    """Write `df` to `path` through a temporary sibling and a rename."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


class EvalRunDir:
    """Paths and readers/writers of one evaluation folder."""

    MANIFEST = "eval.json"
    REFERENCES = "references.parquet"
    ROLLOUTS = "rollouts.parquet"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"EvalRunDir({str(self.path)!r})"

    @property
    def tables(self) -> Path:
        return self.path / "tables"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def exists(self) -> bool:
        """Whether the folder holds an evaluation (its manifest)."""
        return (self.path / self.MANIFEST).is_file()

    def read_manifest(self) -> EvalManifest:
        """Raises: FileNotFoundError when the folder holds no evaluation."""
        path = self.path / self.MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no evaluation at {self.path} (missing {self.MANIFEST})")
        manifest = EvalManifest.model_validate_json(path.read_text())
        if manifest.format_version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: evaluation format {manifest.format_version}, this ldm-eval reads "
                f"{FORMAT_VERSION}"
            )
        return manifest

    def write_manifest(self, manifest: EvalManifest) -> None:
        manifest.updated = time.time()
        atomic_write_text(self.path / self.MANIFEST, manifest.model_dump_json(indent=1))

    def read_references(self) -> pl.DataFrame:
        path = self.path / self.REFERENCES
        return pl.read_parquet(path) if path.is_file() else pl.DataFrame(schema=REFERENCE_SCHEMA)

    def write_references(self, df: pl.DataFrame) -> None:
        write_parquet_atomic(df, self.path / self.REFERENCES)

    def read_rollouts(self) -> pl.DataFrame:
        path = self.path / self.ROLLOUTS
        return pl.read_parquet(path) if path.is_file() else pl.DataFrame(schema=ROLLOUT_SCHEMA)

    def write_table(self, df: pl.DataFrame, name: str) -> Path:
        path = self.tables / f"{name}.parquet"
        write_parquet_atomic(df, path)
        return path


class ResultWriter:
    """Collects rollout results and rewrites `rollouts.parquet` as they come (throttled).

    Args:
        run_dir: where to write.
        existing: attempts already in the folder (a resumed evaluation keeps them).
        every_s: at most one rewrite per this many seconds; `flush()` forces one.
        on_flush: called after each rewrite (progress reporting).
    """

    def __init__(
        self,
        run_dir: EvalRunDir,
        existing: pl.DataFrame | None = None,
        *,
        every_s: float = 5.0,
        on_flush: Callable[[pl.DataFrame], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.frame = existing if existing is not None else run_dir.read_rollouts()
        self.pending: list[dict] = []
        self.every_s = every_s
        self.on_flush = on_flush
        self._last = 0.0

    def add(self, result: RolloutResult) -> None:
        self.pending.append(result.model_dump())
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> pl.DataFrame:
        """Write every result so far; returns them all."""
        if self.pending:
            new = pl.DataFrame(self.pending, schema=ROLLOUT_SCHEMA)
            self.frame = pl.concat(
                [self.frame.cast(pl.Schema(ROLLOUT_SCHEMA)), new], how="vertical"
            )
            self.pending = []
            write_parquet_atomic(self.frame, self.run_dir.path / EvalRunDir.ROLLOUTS)
            if self.on_flush is not None:
                self.on_flush(self.frame)
        self._last = time.monotonic()
        return self.frame
