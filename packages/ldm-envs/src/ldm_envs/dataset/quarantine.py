"""Quarantine: corrupt shards moved aside, with the reason, rather than read or deleted.

A shard that fails a check is moved from `root/<rel>` to `root/quarantine/<rel>` together with
its decision sidecar, and `root/quarantine/<rel>.reason.json` says what was wrong, who found
it and when. Moved, not deleted: a person can look at the bytes (or put the file back), and
nothing downstream reads it again, since `find_shards` skips the folder. The shard's run then
lacks a part, which is how ldm-autorl sees that the run must be redone.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from pydantic import BaseModel

from ldm_envs.dataset.shards import decision_path

#: Folder of the data root that holds quarantined shards (skipped by `find_shards`).
QUARANTINE_DIR = "quarantine"
#: Suffix of the record written beside a quarantined shard: `run.arrow` -> `run.arrow.reason.json`.
REASON_SUFFIX = ".reason.json"


class QuarantineRecord(BaseModel):
    """Why a shard was moved aside (`quarantine/<shard>.reason.json`)."""

    #: the shard's path relative to the data root, where it was
    shard: str
    #: where it is now, relative to the data root
    moved_to: str
    reason: str
    #: the reader that found it (`sampler`, `index`, `verify`, ...)
    found_by: str = ""
    #: the run key from the index or the shard's metadata, when known
    run_key: str | None = None
    #: Unix time of the move
    quarantined_at: float


def _relative(root: Path, path: Path) -> Path:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        raise ValueError(f"shard {path} is not under the data root {root}") from None


def quarantine_shard(
    root: Path,
    path: Path,
    reason: str,
    *,
    found_by: str = "",
    run_key: str | None = None,
) -> QuarantineRecord | None:
    """Move a shard (and its decision sidecar) into `root/quarantine/`, with a reason file.

    Safe to call from several processes at once (DataLoader workers that hit the same shard):
    the first move wins and the others get None, as they do when the shard is already gone.
    A second quarantine of the same path (a redone run that broke again) gets a numbered name.

    Args:
        root: the data root.
        path: the shard, under `root`.
        reason: what is wrong (the `CorruptShardError` message, say).
        found_by: the reader that found it.
        run_key: the shard's run, when known.

    Returns:
        The record written, or None when the shard was no longer there.
    """
    root = Path(root)
    rel = _relative(root, path)
    source = root / rel
    target = root / QUARANTINE_DIR / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while target.exists() or target.with_name(target.name + REASON_SUFFIX).exists():
        target = root / QUARANTINE_DIR / rel.with_name(f"{rel.stem}.{n}{rel.suffix}")
        n += 1
    try:
        os.replace(source, target)
    except FileNotFoundError:
        return None
    with contextlib.suppress(FileNotFoundError):
        os.replace(decision_path(source), decision_path(target))
    record = QuarantineRecord(
        shard=rel.as_posix(),
        moved_to=target.relative_to(root).as_posix(),
        reason=reason,
        found_by=found_by,
        run_key=run_key,
        quarantined_at=time.time(),
    )
    reason_file = target.with_name(target.name + REASON_SUFFIX)
    reason_file.write_text(record.model_dump_json(indent=1))
    return record


def quarantined(root: Path) -> list[QuarantineRecord]:
    """Every quarantine record under `root/quarantine/`, oldest first."""
    folder = Path(root) / QUARANTINE_DIR
    records = []
    for path in folder.rglob(f"*{REASON_SUFFIX}"):
        try:
            records.append(QuarantineRecord.model_validate_json(path.read_text()))
        except (OSError, ValueError):
            continue  # a half-written or hand-edited record names nothing reliable
    return sorted(records, key=lambda r: r.quarantined_at)


def quarantine_reason(root: Path, shard: str) -> QuarantineRecord | None:
    """The latest quarantine record of the shard at `root/<shard>`, or None."""
    found = [r for r in quarantined(root) if r.shard == shard]
    return found[-1] if found else None
