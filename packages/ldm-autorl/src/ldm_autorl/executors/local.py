"""`LocalExecutor`: each attempt in its own local process and process group.

A hung attempt is killed at its deadline together with anything it started (env workers), and
a crash (segfault, `os._exit`) is a failed attempt reported with its exit code.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm_autorl.executors.scheduling import PooledExecutor, _Books, _cpu_count
from ldm_autorl.executors.tasks import TaskSpec, _call_target
from ldm_envs.inputs import require_positive

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

_EXIT_GRACE_S = 10.0
"""How long a process that delivered its result may take to exit before it is killed."""

_LOG_TAIL_LINES = 30


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: get SIGKILL when the parent dies, so no attempt outlives a killed pipeline."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:  # died before prctl took effect
        os._exit(1)


def _child_main(
    conn: Connection,
    target: str,
    kwargs_json: str,
    log_path: str | None,
    parent_pid: int | None,
    environ: dict[str, str] | None = None,
) -> None:
    """Entry of an attempt's process: own process group, call the target, send the outcome.

    `environ` is the starting process's environment, for attempts forked from the fork server:
    Python keeps one fork server per process, started by the first executor that preloads, and
    its children would otherwise see the environment of that moment (a later
    `MLFLOW_TRACKING_URI` or `LDM_HOME` would be ignored). multiprocessing already passes the
    working directory.
    """
    with contextlib.suppress(OSError):
        os.setsid()
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    _die_with_parent(parent_pid)
    if log_path is not None:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    faulthandler.enable()
    try:
        outcome = ("ok", _call_target(target, kwargs_json))
    except BaseException:
        outcome = ("error", traceback.format_exc())
    try:
        conn.send(outcome)
    finally:
        conn.close()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


@dataclass
class _Attempt:
    spec: TaskSpec
    number: int
    proc: SpawnProcess
    conn: Connection
    started: float
    deadline: float
    log_path: Path | None
    message: tuple[str, str] | None = None
    conn_open: bool = True
    killed_at_deadline: bool = field(default=False)


def _kill_group(proc: SpawnProcess) -> None:
    """SIGKILL the attempt's process group (it and whatever it started); the process if none."""
    pid = proc.pid
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        with contextlib.suppress(Exception):
            proc.kill()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "process did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"process died with exit code {code} ({name}) before returning a result"
    return f"process exited with code {code} before returning a result"


def _log_tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        if lines:
            return f"\nlast lines of {path}:\n" + "\n".join(lines)
    return ""


class LocalExecutor(PooledExecutor["_Attempt"]):
    """Tasks in local processes: one fresh "spawn" process per attempt, `max_workers` at once.

    Each attempt process starts its own session (process group) and, on Linux, dies with its
    parent. At the deadline the whole group gets SIGKILL; after an attempt ends, whatever it
    left running in its group is killed too. Child output goes to the terminal, or to
    `log_dir/<key>.<attempt>.log` when `log_dir` is given (the tail is then quoted in errors).

    Args:
        max_workers: Attempts running at once; default min(CPUs available, number of tasks).
        log_dir: Where to write each attempt's stdout/stderr (None: inherit the terminal).
        show_progress: Show the progress bar on stderr.
        preload: Modules to import once in a fork server; attempts are then forked from it
            instead of spawned, so heavy imports (torch, SB3, MLflow: ~10 s) are paid once per
            executor, not once per task. Each attempt is still its own process and group.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        log_dir: Path | None = None,
        show_progress: bool = True,
        preload: Sequence[str] = (),
    ) -> None:
        require_positive("max_workers", max_workers)  # BadInputError, a ValueError
        self.max_workers = max_workers
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.show_progress = show_progress
        self.preload = list(preload)
        self._ctx: Any = None

    # -- PooledExecutor's hooks ---------------------------------------------------------------

    def _prepare(self, tasks: Sequence[TaskSpec]) -> int:
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.preload:
            self._ctx = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload(self.preload)
        else:
            self._ctx = multiprocessing.get_context("spawn")
        return self.max_workers or min(_cpu_count(), len(tasks))

    def _start(self, spec: TaskSpec, number: int) -> _Attempt:
        ctx = self._ctx
        log_path = None
        if self.log_dir is not None:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.key)
            log_path = self.log_dir / f"{safe}.{number}.log"
        recv_end, send_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_child_main,
            args=(
                send_end,
                spec.target,
                json.dumps(spec.kwargs),
                None if log_path is None else str(log_path),
                # a forked attempt's parent is the fork server, which exits with this process
                None if self.preload else os.getpid(),
                dict(os.environ) if self.preload else None,
            ),
            name=f"ldm-task-{spec.key}",
            daemon=False,
        )
        started = time.monotonic()
        proc.start()
        send_end.close()
        return _Attempt(
            spec=spec,
            number=number,
            proc=proc,
            conn=recv_end,
            started=started,
            deadline=started + spec.timeout_s,
            log_path=log_path,
        )

    @staticmethod
    def _wait(running: list[_Attempt]) -> None:
        if not running:
            return
        timeout = max(0.0, min(a.deadline for a in running) - time.monotonic())
        waitables: list[Any] = [a.conn for a in running if a.conn_open]
        waitables += [a.proc.sentinel for a in running]
        multiprocessing.connection.wait(waitables, timeout=timeout)

    @staticmethod
    def _poll(attempt: _Attempt) -> bool:
        """Read what the attempt sent; say whether it is over (exited or past its deadline)."""
        if attempt.conn_open and attempt.conn.poll():
            with contextlib.suppress(EOFError, OSError):
                attempt.message = attempt.conn.recv()
            attempt.conn_open = False
            if attempt.message is not None:
                attempt.deadline = time.monotonic() + _EXIT_GRACE_S
        if attempt.proc.exitcode is not None:
            return True
        if time.monotonic() >= attempt.deadline:
            attempt.killed_at_deadline = attempt.message is None
            return True
        return False

    @staticmethod
    def _reap(attempt: _Attempt, *, kill: bool) -> None:
        # Kill what the attempt left behind in its group (or the attempt itself, when asked).
        if kill or attempt.proc.exitcode is not None:
            _kill_group(attempt.proc)
        attempt.proc.join(timeout=5)
        with contextlib.suppress(Exception):
            attempt.conn.close()
        with contextlib.suppress(Exception):
            attempt.proc.close()

    def _abandon(self, attempt: _Attempt) -> None:
        self._reap(attempt, kill=True)

    def _settle(self, attempt: _Attempt, books: _Books) -> None:
        seconds = time.monotonic() - attempt.started
        exitcode = attempt.proc.exitcode
        self._reap(attempt, kill=True)
        spec, message = attempt.spec, attempt.message
        if message is not None and message[0] == "ok":
            books.settle(spec, attempt.number, seconds, True, json.loads(message[1]), "")
            return
        if message is not None:
            error = message[1].rstrip()
        elif attempt.killed_at_deadline:
            error = (
                f"timed out after {spec.timeout_s:g} s (attempt {attempt.number}); "
                "its process group was killed"
            )
        else:
            error = _describe_exit(exitcode)
        books.settle(
            spec, attempt.number, seconds, False, None, error + _log_tail(attempt.log_path)
        )
