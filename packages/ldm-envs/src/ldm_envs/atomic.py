"""Publishing atomically: readers see the old file or folder or the new one, never a mix.

Every file the packages publish goes through here: the content is written to a hidden
temporary sibling (`.<name>.tmp-<pid>-<random>`, the `TMP_MARK` that `clean_tmp` and the
dataset checks recognise as a crashed writer's leftover), fsynced, renamed onto the final name
with `os.replace`, and the folder is fsynced so that the rename survives a power cut too.
The shapes: `atomic_write_text`, `atomic_write_bytes`, `atomic_write_json` for content in
memory, `atomic_path` for writers that want a path of their own (Arrow, Parquet, a model's
`save`), `replace_dir` for whole folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: What marks a temporary sibling in its name: `.<name>.tmp-<pid>-<random>`.
TMP_MARK = ".tmp-"


def tmp_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh hidden temporary name beside `path`, marked with `TMP_MARK`.

    `suffix` is appended for writers that insist on an extension (SB3's `save` adds `.zip`
    to a name without one).
    """
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def fsync_file(path: Path) -> None:
    """Flush a closed file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path) -> None:
    """Rename the complete, closed temporary file `tmp` onto `path`, durably."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary sibling to write `path` through; published when the block ends cleanly.

    The block writes the whole file to the yielded path (and closes it); on success it is
    fsynced and renamed onto `path`, on any exception it is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path, suffix)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling, fsync and `os.replace`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text (UTF-8) to `path` through a temporary sibling and `os.replace`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(
    path: Path,
    data: Any,
    *,
    indent: int | None = None,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write `data` as JSON (`json.dumps` with these arguments) to `path`, atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=default))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the fully written folder `tmp` onto `final`, replacing any folder there.

    A folder cannot be renamed over a non-empty one, so an existing `final` is first renamed
    aside (a hidden sibling), then the new one renamed in, then the old one removed: at every
    instant `final` is either the complete old folder or the complete new one.
    """
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


__all__ = [
    "TMP_MARK",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "fsync_file",
    "publish",
    "replace_dir",
    "tmp_sibling",
]
