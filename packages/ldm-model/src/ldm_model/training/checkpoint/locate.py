"""Finding a checkpoint: a step folder, or a run folder's newest *valid* one.

A run folder given where a checkpoint is expected means its newest checkpoint whose record
reads and whose files match their hashes: newer ones that are corrupt (a disk error, a copy cut
short) are skipped with a warning naming them (`CheckpointFallbackWarning`, or the caller's
`report`), so evaluation and resume go on from the previous checkpoint instead of stopping. A
step folder named explicitly is opened as it is, or refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from pydantic import ValidationError

from ldm_model.errors import CheckpointNotFoundError, CorruptCheckpointError
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
    Report,
    sha256_file,
)
from ldm_model.training.checkpoint.store import is_store_url, local_run

__all__ = [
    "latest_checkpoint",
    "list_checkpoints",
    "open_valid",
    "read_info",
    "resolve_checkpoint",
    "step_dir_name",
    "valid_checkpoint",
    "verify_files",
]


def step_dir_name(step: int) -> str:
    """The name of the step folder of `step` (zero-padded: names sort as steps do)."""
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


def open_valid(
    path: Path | str, *, verify: bool, report: Report | None
) -> tuple[Path, CheckpointInfo, bool]:
    """The checkpoint `path` names, its record, and whether its files' hashes were checked.

    A store URL (`s3://.../run-1`) means its newest published checkpoint, pulled into the
    local mirror (`checkpoint.store`). For a run folder: the newest checkpoint whose record
    reads and (with `verify`) whose files match their hashes; the corrupt newer ones are
    reported in one line.

    Raises:
        CheckpointNotFoundError: no checkpoint there.
        CorruptCheckpointError: the named step folder is corrupt, or every checkpoint of the
            run folder is (the newest one's file and reason, and how many more).
    """
    if is_store_url(path):  # the newest published checkpoint, pulled into the local mirror
        path = local_run(str(path))
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
    return open_valid(path, verify=verify, report=report)[0]


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
