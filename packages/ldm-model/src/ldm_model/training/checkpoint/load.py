"""Opening a checkpoint: its weights, its optimizer state, and the refusal of another config.

safetensors holds no code, so nothing is unpickled when a checkpoint is opened, and it maps
large files lazily. The hashes are checked before the weights are read (`verify`), so a
truncated or altered file is named at once, not discovered later as garbage weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ldm_model.config import ModelConfig
from ldm_model.errors import CheckpointConfigError, CorruptCheckpointError
from ldm_model.training.checkpoint.locate import open_valid, verify_files
from ldm_model.training.checkpoint.record import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_STATE_FILE,
    CheckpointInfo,
    Report,
)

if TYPE_CHECKING:
    from ldm_model.model import LDM

__all__ = ["Checkpoint", "check_model_config", "load_checkpoint", "load_model"]


@dataclass
class Checkpoint:
    """An opened, verified checkpoint: its record and its weights (on the CPU)."""

    path: Path
    info: CheckpointInfo
    model_state: dict[str, torch.Tensor] = field(repr=False)

    @property
    def model_config(self) -> ModelConfig:
        """The model config the weights belong to (`info.model`)."""
        return self.info.model

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights, for `LDM.load_state_dict` (`model_state`)."""
        return self.model_state

    @property
    def step(self) -> int:
        return self.info.step

    def optimizer_state(self, names: list[str] | None = None) -> dict[str, Any]:
        """AdamW's `state_dict()` as saved (tensors on the CPU).

        Args:
            names: the current model's parameter names in optimizer order; the saved state
                is refused when they differ (it would be applied to the wrong tensors).

        Raises:
            CorruptCheckpointError: the optimizer files are unreadable.
            CheckpointConfigError: the parameters differ from `names`.
        """
        return _read_optimizer(self.path, names)

    def load_into(self, model: LDM) -> None:
        """Copy the weights into `model` (strict: every tensor must match)."""
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as exc:
            raise CheckpointConfigError(
                f"the weights of {self.path} do not fit the model (config "
                f"{model.config.name!r}): {exc}"
            ) from exc


def _config_diff(a: ModelConfig, b: ModelConfig) -> dict[str, tuple[Any, Any]]:
    da, db = a.model_dump(exclude={"name"}), b.model_dump(exclude={"name"})
    return {k: (da[k], db[k]) for k in da if da[k] != db.get(k)}


def check_model_config(path: Path, found: ModelConfig, expected: ModelConfig) -> None:
    """Refuse a checkpoint whose model config is not `expected` (names apart).

    Raises:
        CheckpointConfigError: naming both configs, the differing fields and the path.
    """
    diff = _config_diff(found, expected)
    if diff:
        detail = ", ".join(
            f"{k}: {v[0]} (checkpoint) vs {v[1]} (expected)" for k, v in diff.items()
        )
        raise CheckpointConfigError(
            f"checkpoint {path} holds model config {found.name!r}, not the expected "
            f"{expected.name!r} ({detail})"
        )


def load_checkpoint(
    path: Path | str,
    expected_config: ModelConfig | None = None,
    *,
    verify: bool = True,
    report: Report | None = None,
) -> Checkpoint:
    """Open a checkpoint: a step folder, or a run folder (its newest valid checkpoint).

    Args:
        path: step folder, run folder, or a run's `checkpoints/` folder.
        expected_config: refuse the checkpoint unless it was made for this model config.
        verify: check every file's sha256 (seconds for the largest configs); for a run folder
            it also decides which checkpoint is the newest valid one.
        report: told when a run folder's newest checkpoints are corrupt and an older one is
            opened (default: a `CheckpointFallbackWarning`).

    Raises:
        CheckpointNotFoundError: no checkpoint there.
        CorruptCheckpointError: a file is missing, altered or unreadable (named); for a run
            folder, when all its checkpoints are.
        CheckpointConfigError: another model config (both named, with the differences).
    """
    folder, info, verified = open_valid(path, verify=verify, report=report)
    if expected_config is not None:
        check_model_config(folder, info.model, expected_config)
    if verify and not verified:
        verify_files(folder, info)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_path = folder / MODEL_FILE
    try:
        state = load_file(model_path)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CorruptCheckpointError(model_path, f"unreadable safetensors ({exc})") from exc
    return Checkpoint(path=folder, info=info, model_state=state)


def load_model(
    path: Path | str, *, device: torch.device | str = "cpu", report: Report | None = None
) -> tuple[LDM, Checkpoint]:
    """An `LDM` with a checkpoint's weights, in eval mode, on `device`.

    A run folder gives its newest valid checkpoint (see `load_checkpoint`).
    """
    from ldm_model.model import LDM

    ckpt = load_checkpoint(path, report=report)
    model = LDM(ckpt.info.model)
    ckpt.load_into(model)
    return model.to(device).eval(), ckpt


def _read_optimizer(folder: Path, names: list[str] | None) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = folder / OPTIMIZER_STATE_FILE
    tensor_path = folder / OPTIMIZER_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        groups = meta["param_groups"]
        other = meta.get("state", {})
        saved_names = meta["param_names"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(meta_path, f"unreadable optimizer state ({exc})") from exc
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CorruptCheckpointError(tensor_path, f"unreadable safetensors ({exc})") from exc
    if names is not None and list(saved_names) != list(names):
        missing = sorted(set(names) - set(saved_names))[:5]
        extra = sorted(set(saved_names) - set(names))[:5]
        raise CheckpointConfigError(
            f"the optimizer state of {folder} was made for other parameters "
            f"(missing {missing or 'none'}, extra {extra or 'none'}, or another order)"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in other.items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": groups}
