"""Resuming a run: where a command's run lives, whether it may go on, and from which state.

A run folder is keyed by the command (`default_out`), so the same command finds its run again.
Going on from a checkpoint is only sound if nothing that decides the batches or the updates
changed: the model config, the training options `TrainConfig.resume_differences` compares, and
the sampled runs of the dataset (`DatasetInfo.runs_sha256`). Each is checked before anything is
built, and a refusal says what differs and what to do; corrupt newer checkpoints are skipped
(`valid_checkpoint`'s fallback) rather than stopping the run.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.markup import escape

from ldm_model.config import ModelConfig
from ldm_model.errors import ResumeError
from ldm_model.model import LDM
from ldm_model.training.checkpoint import (
    CHECKPOINTS_DIR,
    CheckpointConfigError,
    CheckpointError,
    CheckpointFallbackWarning,
    DatasetInfo,
    Report,
    check_model_config,
    latest_checkpoint,
    load_checkpoint,
    optimizer_param_names,
    read_info,
    valid_checkpoint,
)
from ldm_model.training.config import TrainConfig

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["check_resumable", "default_out", "load_resume_state", "resume_notice"]


def default_out(config: TrainConfig) -> Path:
    """`<data_home>/models/<model>-<hash>`: the same command (steps apart) finds its run."""
    from ldm_envs.paths import data_home

    blob = json.dumps(config.identity(with_steps=False), sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return data_home() / "models" / f"{config.resolved_model().name}-{digest}"


def resume_notice(console: Console | None, *, is_main: bool) -> Report:
    """Where rank 0 says that the resume skips corrupt checkpoints, and which (others: nowhere)."""

    def report(message: str) -> None:
        if not is_main:
            return
        if console is not None:
            console.print(f"[yellow]warning:[/] resuming: {escape(message)}", highlight=False)
        else:
            warnings.warn(f"resuming: {message}", CheckpointFallbackWarning, stacklevel=2)

    return report


def check_resumable(
    out: Path,
    *,
    config: TrainConfig,
    model_config: ModelConfig,
    dataset: DatasetInfo,
    allow_data_change: bool,
    report: Report,
) -> Path | None:
    """The checkpoint to resume from (None: a fresh run), or refuse a folder `config` can't go on.

    Resumes from the newest *valid* checkpoint: newer ones that are corrupt (checked by their
    recorded hashes) are skipped and told to `report`.

    Raises:
        ResumeError: another model config or training options, a changed dataset (unless
            `allow_data_change`), or no valid checkpoint in the folder.
    """
    if latest_checkpoint(out) is None:
        return None
    try:
        latest = valid_checkpoint(out, report=report)
        info = read_info(latest)
        check_model_config(latest, info.model, model_config)
    except CheckpointConfigError as exc:
        raise ResumeError(
            f"{exc}: rerun with the same options to resume that run, or train into another --out"
        ) from exc
    except CheckpointError as exc:
        raise ResumeError(
            f"cannot resume the run in {out}: {exc}; no checkpoint of it is valid. "
            f"Delete {out / CHECKPOINTS_DIR} to start over, or train into another --out"
        ) from exc
    diffs = info.train.resume_differences(config)
    if diffs:
        detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items())
        raise ResumeError(
            f"{out} holds a run trained under other options ({detail}; last "
            f"checkpoint {latest}): rerun with the same options to resume it, or train "
            "into another --out"
        )
    if info.dataset.runs_sha256 != dataset.runs_sha256 and not allow_data_change:
        raise ResumeError(
            f"the dataset under {dataset.root} changed since {latest} was saved "
            "(its sampled runs differ), so the resumed run would not see the batches of "
            "the interrupted one; train into another --out, or pass "
            "--allow-data-change to continue anyway"
        )
    return latest


def load_resume_state(
    latest: Path,
    ldm: LDM,
    optimizer: torch.optim.Optimizer,
    *,
    out: Path,
    model_config: ModelConfig,
) -> tuple[int, int]:
    """Load `latest`'s weights and optimizer state; returns its step and transitions seen.

    Raises:
        ResumeError: the checkpoint does not load (naming it and what to do).
    """
    try:
        # its files' hashes were checked when `check_resumable` chose it
        ckpt = load_checkpoint(latest, expected_config=model_config, verify=False)
        ckpt.load_into(ldm)
        names = optimizer_param_names(ldm, optimizer)
        optimizer.load_state_dict(ckpt.optimizer_state(names))
    except (CheckpointError, ValueError, KeyError) as exc:
        raise ResumeError(
            f"cannot resume the run in {out}: {exc}. Delete {latest} to resume "
            "from the previous checkpoint, or train into another --out"
        ) from exc
    return ckpt.info.step, int(ckpt.info.metrics.get("transitions", 0))
