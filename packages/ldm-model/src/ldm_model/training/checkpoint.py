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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ldm_envs.atomic import replace_dir
from ldm_model.config import ModelConfig
from ldm_model.errors import (
    CheckpointConfigError,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from ldm_model.training.config import TrainConfig

if TYPE_CHECKING:
    from ldm_model.data.windows import WindowSampler
    from ldm_model.model import LDM

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_STATE_FILE = "optimizer.json"
INFO_FILE = "checkpoint.json"
STEP_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"
#: Marker of a replaced checkpoint folder left behind by a crash (see `replace_dir`).
_OLD_MARK = ".old-"
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Errors


class CheckpointFallbackWarning(UserWarning):
    """A run folder's newest checkpoint is corrupt: an older valid one is used instead."""


#: Receives the one-line notice of a fallback (default: `warnings.warn` it).
Report = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# What a checkpoint records


class EnvEntry(BaseModel):
    """One env the run trains on (a row of `WindowSampler.envs`)."""

    model_config = ConfigDict(extra="forbid")

    index: int
    library: str
    env_id: str
    runs: int
    transitions: int
    weight: float


class DatasetInfo(BaseModel):
    """The training data: where it is and what exactly was drawn from."""

    model_config = ConfigDict(extra="forbid")

    root: str
    #: sha256 of `root/index/runs.parquet` (None when the file is gone).
    index_sha256: str | None
    #: sha256 of the sampler's run list (shard paths, rows, envs): equal means same batches.
    runs_sha256: str
    envs: list[EnvEntry]
    transitions: int
    #: Shards the sampler left out, with the reason.
    skipped: list[tuple[str, str]] = Field(default_factory=list)


class CheckpointInfo(BaseModel):
    """`checkpoint.json`."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    model: ModelConfig
    train: TrainConfig
    #: Optimizer steps done; training resumes with the batch of this step number.
    step: int
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset: DatasetInfo
    mlflow_run_id: str | None = None
    world_size: int = 1
    num_parameters: int
    #: sha256 of each file of the checkpoint folder (checkpoint.json apart).
    files: dict[str, str]
    created: datetime
    torch_version: str = torch.__version__


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


# --------------------------------------------------------------------------------------------
# Hashes and the dataset record


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def index_files(root: Path) -> list[Path]:
    """The dataset index's files (`index/*.parquet`, `index/info.json`) that exist."""
    folder = Path(root) / "index"
    return sorted(p for p in folder.glob("*") if p.is_file() and p.suffix in (".parquet", ".json"))


def dataset_info(sampler: WindowSampler) -> DatasetInfo:
    """What `sampler` draws from, for the checkpoint record."""
    root = Path(sampler.root).expanduser().resolve()
    runs_parquet = root / "index" / "runs.parquet"
    envs = [EnvEntry(**row) for row in sampler.envs.iter_rows(named=True)]
    blob = json.dumps(
        {
            "runs": sampler.run_paths,
            "run_envs": [int(e) for e in sampler.run_envs],
            "envs": [e.model_dump() for e in envs],
        },
        sort_keys=True,
    )
    return DatasetInfo(
        root=str(root),
        index_sha256=sha256_file(runs_parquet) if runs_parquet.is_file() else None,
        runs_sha256=hashlib.sha256(blob.encode()).hexdigest(),
        envs=envs,
        transitions=int(sampler.transitions),
        skipped=[(str(p), str(r)) for p, r in sampler.skipped],
    )


# --------------------------------------------------------------------------------------------
# Finding checkpoints


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(out: Path) -> list[Path]:
    """Step folders under `out/checkpoints`, oldest first (temporary ones left out)."""
    folder = Path(out) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if p.is_dir() and p.name.startswith(STEP_PREFIX):
            try:
                found.append((int(p.name[len(STEP_PREFIX) :]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path) -> Path | None:
    """The newest step folder of a run folder, or None."""
    found = list_checkpoints(out)
    return found[-1] if found else None


def _run_checkpoints(path: Path | str) -> list[Path]:
    """The step folders, newest first, when `path` is a run folder or its `checkpoints/`.

    Empty for anything else (a step folder, a file, a missing path): no fallback there.
    """
    path = Path(path).expanduser()
    if not path.is_dir() or (path / INFO_FILE).is_file():
        return []
    run = path.parent if path.name == CHECKPOINTS_DIR else path
    return list_checkpoints(run)[::-1]


def _open_valid(
    path: Path | str, *, verify: bool, report: Report | None
) -> tuple[Path, CheckpointInfo, bool]:
    """The checkpoint `path` names, its record, and whether its files' hashes were checked.

    For a run folder: the newest checkpoint whose record reads and (with `verify`) whose files
    match their hashes; the corrupt newer ones are reported in one line.

    Raises:
        CheckpointNotFoundError: no checkpoint there.
        CorruptCheckpointError: the named step folder is corrupt, or every checkpoint of the
            run folder is (the newest one's file and reason, and how many more).
    """
    found = _run_checkpoints(path)
    if not found:
        folder = resolve_checkpoint(path)
        return folder, read_info(folder), False
    skipped: list[CorruptCheckpointError] = []
    for folder in found:
        try:
            info = read_info(folder)
            if verify:
                verify_files(folder, info)
        except CorruptCheckpointError as exc:
            skipped.append(exc)
            continue
        if skipped:
            bad = "; ".join(str(exc) for exc in skipped)
            (report or _warn_fallback)(
                f"skipped {len(skipped)} corrupt checkpoint(s) of {folder.parent.parent} ({bad}); "
                f"using {folder.name} (step {info.step}), the newest valid one"
            )
        return folder, info, verify
    newest = skipped[0]
    more = (
        f"; the {len(skipped) - 1} older checkpoint(s) are corrupt too" if len(skipped) > 1 else ""
    )
    raise CorruptCheckpointError(newest.path, f"{newest.reason}{more}") from newest


def _warn_fallback(message: str) -> None:
    warnings.warn(message, CheckpointFallbackWarning, stacklevel=4)


def valid_checkpoint(
    path: Path | str, *, verify: bool = True, report: Report | None = None
) -> Path:
    """The step folder `path` names; for a run folder, its newest valid checkpoint.

    `resolve_checkpoint` takes a run folder's newest checkpoint whatever its state; this one
    reads each record and (with `verify`) checks each file's sha256, newest first, and skips
    the corrupt ones, saying so through `report` (default: a `CheckpointFallbackWarning`).
    A step folder named explicitly is returned as it is: what is wrong with it is raised when
    it is opened.

    Raises:
        CheckpointNotFoundError: no checkpoint there.
        CorruptCheckpointError: every checkpoint of the run folder is corrupt.
    """
    return _open_valid(path, verify=verify, report=report)[0]


def resolve_checkpoint(path: Path | str) -> Path:
    """A step folder from a step folder, a run folder (its latest) or its `checkpoints/`.

    Raises:
        CheckpointNotFoundError: nothing there, naming the path and what was looked for.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if path.is_file():
        if path.name in (INFO_FILE, MODEL_FILE):
            return path.parent
        raise CheckpointNotFoundError(
            f"{path} is a file; give a checkpoint folder (holding {INFO_FILE}) or a run folder"
        )
    if (path / INFO_FILE).is_file():
        return path
    if path.name == CHECKPOINTS_DIR and (latest := latest_checkpoint(path.parent)) is not None:
        return latest
    if (latest := latest_checkpoint(path)) is not None:
        return latest
    if any(path.glob(f"{STEP_PREFIX}*")) or (path / MODEL_FILE).exists():
        raise CorruptCheckpointError(path / INFO_FILE, "missing")
    raise CheckpointNotFoundError(
        f"no checkpoint at {path}: neither {INFO_FILE} nor {CHECKPOINTS_DIR}/{STEP_PREFIX}* there"
    )


# --------------------------------------------------------------------------------------------
# Reading


def read_info(path: Path | str) -> CheckpointInfo:
    """`checkpoint.json` of a checkpoint (no weights read, no hashes checked).

    Raises:
        CheckpointNotFoundError, CorruptCheckpointError.
    """
    folder = resolve_checkpoint(path)
    info_path = folder / INFO_FILE
    try:
        raw = info_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CorruptCheckpointError(info_path, f"unreadable ({exc})") from exc
    try:
        info = CheckpointInfo.model_validate_json(raw)
    except ValidationError as exc:
        raise CorruptCheckpointError(info_path, f"not a checkpoint record ({exc})") from exc
    if info.format_version != FORMAT_VERSION:
        raise CorruptCheckpointError(
            info_path,
            f"format version {info.format_version}, this ldm-model reads {FORMAT_VERSION}",
        )
    return info


def verify_files(folder: Path, info: CheckpointInfo) -> None:
    """Check each recorded file exists and has its recorded sha256.

    Raises:
        CorruptCheckpointError: naming the first bad file.
    """
    for name in (MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_STATE_FILE):
        if name not in info.files:
            raise CorruptCheckpointError(folder / INFO_FILE, f"records no hash for {name}")
    for name, expected in info.files.items():
        file = folder / name
        if not file.is_file():
            raise CorruptCheckpointError(file, "missing")
        actual = sha256_file(file)
        if actual != expected:
            raise CorruptCheckpointError(
                file, f"sha256 {actual[:12]}... differs from the recorded {expected[:12]}..."
            )


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
    folder, info, verified = _open_valid(path, verify=verify, report=report)
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


# --------------------------------------------------------------------------------------------
# Writing


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
) -> Path:
    """Write `out/checkpoints/step-<step>/` atomically; keep only the newest `keep`.

    Returns the step folder. A folder for the same step is replaced. `num_parameters`
    defaults to `model.num_parameters()` (the trainer passes the count taken before it froze
    the unused token table).
    """
    from safetensors.torch import save_file

    folder = Path(out) / CHECKPOINTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / step_dir_name(step)
    tmp = folder / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / MODEL_FILE, metadata={"format": "pt", "ldm_step": str(step)})
        opt = optimizer.state_dict()
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


__all__ = [
    "CHECKPOINTS_DIR",
    "FORMAT_VERSION",
    "INFO_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "OPTIMIZER_STATE_FILE",
    "Checkpoint",
    "CheckpointConfigError",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DatasetInfo",
    "EnvEntry",
    "dataset_info",
    "index_files",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "prune_checkpoints",
    "read_info",
    "resolve_checkpoint",
    "save_checkpoint",
    "sha256_file",
    "valid_checkpoint",
    "verify_files",
]
