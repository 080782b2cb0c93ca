"""One process at a time per (data root, library, stage): a file lock that names its holder.

Two identical `ldm-autorl run LIB` started together used to both do all the work (each saw no
finished run yet) and record it twice in MLflow. A stage now takes `stage_lock(root, library,
stage)` for its whole duration: a second process asking for the same lock is refused at once
with a `StageBusyError` naming the holder's pid, host and command (or waits for it, when given
`wait_s`). Different libraries, stages or data roots have different locks, so they still run
side by side.

The lock is a `filelock.FileLock` on `<root>/.locks/<library>.<stage>.lock` (an OS lock: it is
released when the holder exits, even by SIGKILL, so a crash never leaves a stale lock behind).
Who holds it is written next to it, `<...>.lock.holder.json`, since `filelock` empties the
lock file itself whenever it opens it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from ldm_envs.atomic import atomic_write_bytes
from ldm_envs.errors import LDMEnvsError

__all__ = ["LOCKS_DIR", "LockHolder", "StageBusyError", "lock_path", "read_holder", "stage_lock"]

#: Folder of the data root holding the locks (hidden: `find_shards` and friends skip it).
LOCKS_DIR = ".locks"
#: How long a refused process looks for the holder's record, written just after the lock.
_HOLDER_GRACE_S = 1.0


class LockHolder(BaseModel):
    """Who holds a stage lock: written by the holder right after it got the lock."""

    pid: int
    host: str
    command: str
    since: float

    def describe(self) -> str:
        """`pid 123 on host h since 12:00:01 (ldm-autorl run toy)`."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} since {since} ({self.command})"


class StageBusyError(LDMEnvsError):
    """Another process holds the stage lock of this data root and library.

    Attributes:
        holder: who holds it (None when its record could not be read).
    """

    def __init__(self, message: str, holder: LockHolder | None) -> None:
        super().__init__(message)
        self.holder = holder


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "__", name)


def lock_path(root: Path, library: str, stage: str) -> Path:
    """`<root>/.locks/<library>.<stage>.lock` (names made safe for a file name)."""
    return Path(root) / LOCKS_DIR / f"{_safe(library)}.{_safe(stage)}.lock"


def _holder_path(lock: Path) -> Path:
    return lock.with_name(lock.name + ".holder.json")


def read_holder(root: Path, library: str, stage: str) -> LockHolder | None:
    """The last recorded holder of a stage lock (None: never taken, or unreadable).

    The record stays after the holder exits; only a refused `stage_lock` proves it is current.
    """
    try:
        return LockHolder.model_validate_json(
            _holder_path(lock_path(root, library, stage)).read_text()
        )
    except (OSError, ValidationError, ValueError):
        return None


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    return " ".join(argv)[:300] or "python"


def _current_holder(path: Path) -> LockHolder | None:
    """The holder's record, waiting briefly for it: the holder writes it just after locking.

    A record whose process is gone is a previous holder's, not this one's: None.
    """
    deadline = time.monotonic() + _HOLDER_GRACE_S
    holder = None
    while True:
        try:
            holder = LockHolder.model_validate_json(_holder_path(path).read_text())
        except (OSError, ValidationError, ValueError):
            holder = None
        alive = holder is not None and _alive(holder)
        if alive or time.monotonic() > deadline:
            return holder if alive else None
        time.sleep(0.05)


def _alive(holder: LockHolder) -> bool:
    """Whether the recorded holder may still run (another host's pid cannot be checked)."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def stage_lock(root: Path, library: str, stage: str, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock of `stage` of `library` under the data root `root` for a block.

    Args:
        root: the data root (its `.locks/` folder is created).
        library: the env library.
        stage: the pipeline stage (`ranking`, `reference`, `filter`, ...).
        wait_s: how long to wait for a busy lock (0: refuse at once).

    Raises:
        StageBusyError: another process holds the lock (after `wait_s`); the message names it.
    """
    path = lock_path(root, library, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=wait_s)
    started = time.time()
    try:
        lock.acquire()
    except Timeout:
        holder = _current_holder(path)
        who = holder.describe() if holder else "another process (its pid was not recorded yet)"
        raise StageBusyError(
            f"the {stage} stage of library {library!r} under {root} is already running in "
            f"{who}; wait for it to finish, or stop it, before running it again "
            f"(lock: {path})",
            holder,
        ) from None
    try:
        me = LockHolder(
            pid=os.getpid(), host=socket.gethostname(), command=_command(), since=started
        )
        atomic_write_bytes(_holder_path(path), me.model_dump_json().encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            _holder_path(path).unlink()
        lock.release()
