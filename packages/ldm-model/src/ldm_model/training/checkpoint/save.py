"""Writing a checkpoint atomically, and pruning the old ones.

A checkpoint folder is written under a temporary name, each file fsynced and hashed, and then
renamed into place (`replace_dir`), so a run killed while saving leaves the previous checkpoint
as the latest, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ldm_envs.atomic import replace_dir
from ldm_model.training.checkpoint.locate import list_checkpoints, step_dir_name
from ldm_model.training.checkpoint.record import (
    CHECKPOINTS_DIR,
    INFO_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_STATE_FILE,
    CheckpointInfo,
    DatasetInfo,
    sha256_file,
)
from ldm_model.training.config import TrainConfig

if TYPE_CHECKING:
    from ldm_model.model import LDM

__all__ = ["optimizer_param_names", "prune_checkpoints", "save_checkpoint"]

_TMP_PREFIX = ".tmp-"
#: Marker of a replaced checkpoint folder left behind by a crash (see `replace_dir`).
_OLD_MARK = ".old-"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (what its state ids index)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def save_checkpoint(
    out: Path,
    *,
    model: LDM,
    optimizer: torch.optim.Optimizer,
    train_config: TrainConfig,
    step: int,
    dataset: DatasetInfo,
    metrics: dict[str, float] | None = None,
    mlflow_run_id: str | None = None,
    world_size: int = 1,
    keep: int | None = None,
    num_parameters: int | None = None,
    state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Write `out/checkpoints/step-<step>/` atomically; keep only the newest `keep`.

    Returns the step folder. A folder for the same step is replaced. `num_parameters`
    defaults to `model.num_parameters()` (the trainer passes the count taken before it froze
    the unused token table). `state`: the weights and AdamW state to write instead of
    `model`'s and `optimizer`'s (FSDP's full state gathered from the shards, AdamW's keyed
    by parameter index as `optimizer.state_dict()` does); names come from `model` and
    `optimizer` either way.
    """
    from safetensors.torch import save_file

    folder = Path(out) / CHECKPOINTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / step_dir_name(step)
    tmp = folder / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        weights, opt = state if state is not None else (model.state_dict(), optimizer.state_dict())
        weights = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        save_file(weights, tmp / MODEL_FILE, metadata={"format": "pt", "ldm_step": str(step)})
        tensors: dict[str, torch.Tensor] = {}
        other: dict[str, dict[str, Any]] = {}
        for pid, values in opt["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"state.{pid}.{key}"] = value.detach().to("cpu").contiguous()
                else:
                    other.setdefault(str(pid), {})[key] = value
        save_file(tensors, tmp / OPTIMIZER_FILE, metadata={"format": "pt"})
        meta = {
            "param_groups": opt["param_groups"],
            "state": other,
            "param_names": optimizer_param_names(model, optimizer),
        }
        (tmp / OPTIMIZER_STATE_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        files = {}
        for name in (MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_STATE_FILE):
            _fsync(tmp / name)
            files[name] = sha256_file(tmp / name)
        info = CheckpointInfo(
            model=model.config,
            train=train_config,
            step=step,
            metrics=dict(metrics or {}),
            dataset=dataset,
            mlflow_run_id=mlflow_run_id,
            world_size=world_size,
            num_parameters=(
                num_parameters if num_parameters is not None else model.num_parameters()
            ),
            files=files,
            created=datetime.now(timezone.utc),
        )
        (tmp / INFO_FILE).write_text(info.model_dump_json(indent=1), encoding="utf-8")
        _fsync(tmp / INFO_FILE)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        prune_checkpoints(out, keep)
    return final


def prune_checkpoints(out: Path, keep: int, *, stale_after_s: float = 3600.0) -> list[Path]:
    """Delete all but the newest `keep` step folders, and old temporary ones. Returns removed."""
    removed = []
    found = list_checkpoints(out)
    for path in found[: max(len(found) - keep, 0)]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    folder = Path(out) / CHECKPOINTS_DIR
    now = time.time()
    for p in folder.glob(".*"):
        if (
            p.name.startswith(_TMP_PREFIX) or _OLD_MARK in p.name
        ) and now - p.stat().st_mtime > stale_after_s:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
