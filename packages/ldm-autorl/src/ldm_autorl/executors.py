"""Run independent tasks (one SB3 training run each) with a time limit and retries.

A task names a function by `"module:function"` and passes it plain JSON data; the function runs
in another process (imported there) and returns JSON data. Two executors:

- `LocalExecutor`: one fresh process per attempt (multiprocessing "spawn"), at most
  `max_workers` at a time. Each attempt runs in its own process group, so a hung attempt is
  killed at its deadline together with anything it started (env workers), and a crash
  (segfault, `os._exit`) is a failed attempt reported with its exit code.
- `RayExecutor`: the same on Ray (a local Ray, or a cluster at `address`): one `ray.remote`
  call per attempt in a fresh worker process, our own retry loop, timeouts by `ray.wait` and
  `ray.cancel(force=True)`.

Both show a progress bar (on stderr) and hand each `TaskResult` to `on_result` as soon as its
task is settled (succeeded, or failed its last attempt), so the caller can persist it before the
next one finishes: an interrupted fan-out loses only what was running.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import importlib
import importlib.util
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ldm_envs.inputs import require_choice, require_positive

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

    from rich.progress import Progress, TaskID

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "TaskResult",
    "TaskSpec",
    "make_executor",
    "resolve_target",
]

EXECUTORS = ("local", "ray")

_EXIT_GRACE_S = 10.0
"""How long a process that delivered its result may take to exit before it is killed."""

_LOG_TAIL_LINES = 30


# --------------------------------------------------------------------------------------------
# Data


class TaskSpec(BaseModel):
    """One unit of work: call `target(**kwargs)` in another process.

    Attributes:
        key: Unique name of the task within a `run` (results are reported by it).
        target: `"package.module:function"` (or `"module:Class.method"`), imported in the
            executing process, so it must be importable there (on every node for Ray).
        kwargs: Keyword arguments, plain JSON data (checked here).
        timeout_s: Wall-clock limit of one attempt, from its start.
        retries: Further attempts after a failed one (a raise, a crash, a timeout).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    target: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=3600.0, gt=0)
    retries: int = Field(default=1, ge=0)

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep or not module.strip() or not attr.strip():
            raise ValueError(f"target {value!r} must look like 'package.module:function'")
        return value

    @field_validator("kwargs")
    @classmethod
    def _check_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"kwargs must be plain JSON data: {exc}") from exc
        return value


class TaskResult(BaseModel):
    """How a task ended.

    Attributes:
        key: The task's key.
        ok: Whether an attempt returned a value.
        value: What the function returned, after a JSON round trip (None on failure).
        error: Why the last attempt failed (the remote traceback, the exit code and signal, or
            the timeout), preceded by one line per earlier failed attempt; "" on success.
        attempts: Attempts made (1 + retries used).
        seconds: Wall-clock time of all attempts together (queueing excluded).
    """

    key: str
    ok: bool
    value: Any = None
    error: str = ""
    attempts: int
    seconds: float


@runtime_checkable
class Executor(Protocol):
    """Runs tasks and reports each result as it settles."""

    def run(
        self,
        tasks: Sequence[TaskSpec],
        *,
        on_result: Callable[[TaskResult], None] | None = None,
        description: str = "",
    ) -> list[TaskResult]:
        """Run all tasks; return their results in the order of `tasks`.

        `on_result` is called in the calling process, once per task, as soon as it settles; an
        exception from it stops the run (attempts in flight are killed) and propagates.
        """
        ...


# --------------------------------------------------------------------------------------------
# Calling a target (in the executing process)


def resolve_target(target: str) -> Callable[..., Any]:
    """Import `"module:attr.path"` and return the callable it names."""
    module_name, _, attr_path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"target {target!r} is not callable")
    return obj


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON data")


def _call_target(target: str, kwargs_json: str) -> str:
    """Call the target and return its value as JSON text (what crosses the process boundary)."""
    fn = resolve_target(target)
    value = fn(**json.loads(kwargs_json))
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{target} returned data that is not JSON-able: {exc}") from exc


def _attempt_summary(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed"


def _error_text(errors: list[str]) -> str:
    if len(errors) <= 1:
        return errors[0] if errors else ""
    earlier = [f"attempt {i}: {_attempt_summary(e)}" for i, e in enumerate(errors[:-1], 1)]
    return "\n".join([*earlier, f"attempt {len(errors)}: {errors[-1]}"])


def _check_unique(tasks: Sequence[TaskSpec]) -> None:
    counts = Counter(t.key for t in tasks)
    if dupes := sorted(k for k, n in counts.items() if n > 1):
        raise ValueError(f"task keys must be unique; repeated: {', '.join(dupes)}")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# Progress


@contextlib.contextmanager
def _progress(description: str, total: int, *, enabled: bool) -> Iterator[_Bar]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("{task.fields[running]} running"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with progress:
        task_id = progress.add_task(description or "tasks", total=total, failed=0, running=0)
        yield _Bar(progress, task_id)


@dataclass
class _Bar:
    progress: Progress
    task_id: TaskID
    failed: int = 0

    def running(self, count: int) -> None:
        self.progress.update(self.task_id, running=count)

    def settled(self, result: TaskResult) -> None:
        self.failed += not result.ok
        self.progress.update(self.task_id, advance=1, failed=self.failed)


class _Books:
    """Attempt bookkeeping shared by both executors: errors, times, retries, results."""

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        bar: _Bar,
        on_result: Callable[[TaskResult], None] | None,
    ) -> None:
        self.pending: deque[tuple[TaskSpec, int]] = deque((t, 1) for t in tasks)
        self.errors: dict[str, list[str]] = {t.key: [] for t in tasks}
        self.seconds: dict[str, float] = dict.fromkeys(self.errors, 0.0)
        self.results: dict[str, TaskResult] = {}
        self.bar = bar
        self.on_result = on_result

    def settle(
        self, spec: TaskSpec, attempt: int, seconds: float, ok: bool, value: Any, error: str
    ) -> None:
        """Record an attempt; requeue the task when it failed and has retries left."""
        self.seconds[spec.key] += seconds
        if not ok:
            self.errors[spec.key].append(error)
            if attempt <= spec.retries:
                self.pending.append((spec, attempt + 1))
                return
        result = TaskResult(
            key=spec.key,
            ok=ok,
            value=value if ok else None,
            error="" if ok else _error_text(self.errors[spec.key]),
            attempts=attempt,
            seconds=round(self.seconds[spec.key], 3),
        )
        self.results[spec.key] = result
        self.bar.settled(result)
        if self.on_result is not None:
            self.on_result(result)


# --------------------------------------------------------------------------------------------
# Local executor


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: get SIGKILL when the parent dies, so no attempt outlives a killed pipeline."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:  # died before prctl took effect
        os._exit(1)


def _child_main(
    conn: Connection, target: str, kwargs_json: str, log_path: str | None, parent_pid: int | None
) -> None:
    """Entry of an attempt's process: own process group, call the target, send the outcome."""
    with contextlib.suppress(OSError):
        os.setsid()
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


class LocalExecutor:
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

    def run(
        self,
        tasks: Sequence[TaskSpec],
        *,
        on_result: Callable[[TaskResult], None] | None = None,
        description: str = "",
    ) -> list[TaskResult]:
        """Run all tasks; see `Executor.run`."""
        tasks = list(tasks)
        _check_unique(tasks)
        if not tasks:
            return []
        workers = self.max_workers or min(_cpu_count(), len(tasks))
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.preload:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(self.preload)
        else:
            ctx = multiprocessing.get_context("spawn")
        running: list[_Attempt] = []
        with _progress(description, len(tasks), enabled=self.show_progress) as bar:
            books = _Books(tasks, bar, on_result)
            try:
                while books.pending or running:
                    while books.pending and len(running) < workers:
                        spec, number = books.pending.popleft()
                        running.append(self._start(ctx, spec, number))
                    bar.running(len(running))
                    self._wait(running)
                    for attempt in list(running):
                        if self._poll(attempt):
                            running.remove(attempt)
                            self._settle(attempt, books)
                            bar.running(len(running))
            finally:
                for attempt in running:
                    self._reap(attempt, kill=True)
        return [books.results[t.key] for t in tasks]

    def _start(self, ctx: Any, spec: TaskSpec, number: int) -> _Attempt:
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


# --------------------------------------------------------------------------------------------
# Ray executor


def _ray_task(target: str, kwargs_json: str) -> str:
    """The body of a Ray task (module level, so Ray pickles it by reference)."""
    return _call_target(target, kwargs_json)


_FORWARDED_ENV = ("MLFLOW_TRACKING_URI",)
"""Environment variables the driver forwards to Ray tasks (they may run on other nodes)."""


class RayExecutor:
    """Tasks on Ray: a local Ray (started on first use) or a cluster at `address`.

    Each attempt is one `ray.remote` call (`max_retries=0`: retries are ours, so they are
    counted and reported) in a fresh worker process (`max_calls=1`: no state leaks between
    training runs). At most as many attempts are in flight as the cluster has CPUs for, so an
    attempt's clock starts about when it starts running; its deadline is enforced with
    `ray.wait` and `ray.cancel(force=True)`, which kills the worker process.

    Targets must be importable on every node (same code and virtualenv). `MLFLOW_TRACKING_URI`
    is forwarded to the tasks.

    Args:
        address: Cluster address (`"ray://head:10001"`, `"auto"`, `"head:6379"`); None starts
            a local Ray.
        num_cpus_per_task: CPUs Ray reserves per attempt.
        num_cpus: CPUs of a local Ray (default: all).
        object_store_memory: Object store size of a local Ray, bytes (results are small JSON).
        max_in_flight: Cap on attempts in flight (default: cluster CPUs / num_cpus_per_task).
        show_progress: Show the progress bar on stderr.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus_per_task: float = 1,
        *,
        num_cpus: int | None = None,
        object_store_memory: int = 256 * 1024**2,
        max_in_flight: int | None = None,
        show_progress: bool = True,
    ) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ImportError("the Ray executor needs Ray: pip install 'ldm-autorl[ray]'")
        if num_cpus_per_task < 0:
            raise ValueError("num_cpus_per_task must be >= 0")
        self.address = address
        self.num_cpus_per_task = num_cpus_per_task
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.max_in_flight = max_in_flight
        self.show_progress = show_progress
        self._started_ray = False
        self._remote: Any = None
        self.init_seconds = 0.0

    def init(self) -> None:
        """Connect to Ray (or start a local one) unless this process already is connected."""
        if self.address is None:
            _no_uv_run_workers()
        import ray

        if ray.is_initialized():
            return
        common: dict[str, Any] = {
            "ignore_reinit_error": True,
            "include_dashboard": False,
            "log_to_driver": False,
        }
        t0 = time.monotonic()
        if self.address is not None:
            ray.init(address=self.address, **common)
        else:
            with _loopback_only():
                ray.init(
                    num_cpus=self.num_cpus,
                    object_store_memory=self.object_store_memory,
                    **common,
                )
        self.init_seconds = time.monotonic() - t0
        self._started_ray = True

    def close(self) -> None:
        """Shut down the Ray this executor started (a Ray it found running is left alone)."""
        import ray

        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _capacity(self) -> int:
        import ray

        if self.max_in_flight is not None:
            return max(1, self.max_in_flight)
        if self.num_cpus_per_task <= 0:
            return 1_000_000
        cpus = float(ray.cluster_resources().get("CPU", 1))
        return max(1, int(cpus // self.num_cpus_per_task))

    def _submit(self, spec: TaskSpec) -> Any:
        import ray

        if self._remote is None:
            self._remote = ray.remote(max_retries=0, max_calls=1)(_ray_task)
        options: dict[str, Any] = {"num_cpus": self.num_cpus_per_task, "name": spec.key}
        env = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}
        if self.address is None:
            # A local Ray: the workers see what this process sees, like spawned processes do.
            if home := os.environ.get("LDM_HOME"):
                env["LDM_HOME"] = home
            env["PYTHONPATH"] = os.pathsep.join(
                dict.fromkeys(p for p in [os.getcwd(), *sys.path] if p and os.path.isdir(p))
            )
        if env:
            options["runtime_env"] = {"env_vars": env}
        return self._remote.options(**options).remote(spec.target, json.dumps(spec.kwargs))

    def run(
        self,
        tasks: Sequence[TaskSpec],
        *,
        on_result: Callable[[TaskResult], None] | None = None,
        description: str = "",
    ) -> list[TaskResult]:
        """Run all tasks; see `Executor.run`."""
        import ray

        tasks = list(tasks)
        _check_unique(tasks)
        if not tasks:
            return []
        self.init()
        capacity = self._capacity()
        # ref -> (spec, attempt number, start, deadline)
        inflight: dict[Any, tuple[TaskSpec, int, float, float]] = {}
        with _progress(description, len(tasks), enabled=self.show_progress) as bar:
            books = _Books(tasks, bar, on_result)
            try:
                while books.pending or inflight:
                    while books.pending and len(inflight) < capacity:
                        spec, number = books.pending.popleft()
                        start = time.monotonic()
                        inflight[self._submit(spec)] = (spec, number, start, start + spec.timeout_s)
                    bar.running(len(inflight))
                    timeout = max(0.0, min(v[3] for v in inflight.values()) - time.monotonic())
                    ready, _ = ray.wait(list(inflight), num_returns=1, timeout=timeout)
                    for ref in ready:
                        spec, number, start, _deadline = inflight.pop(ref)
                        seconds = time.monotonic() - start
                        try:
                            value = json.loads(ray.get(ref))
                        except Exception as exc:
                            books.settle(spec, number, seconds, False, None, _ray_error(exc))
                        else:
                            books.settle(spec, number, seconds, True, value, "")
                    now = time.monotonic()
                    for ref, (spec, number, start, deadline) in list(inflight.items()):
                        if now >= deadline:
                            del inflight[ref]
                            with contextlib.suppress(Exception):
                                ray.cancel(ref, force=True)
                            error = (
                                f"timed out after {spec.timeout_s:g} s (attempt {number}); "
                                "the Ray task was cancelled (its worker killed)"
                            )
                            books.settle(spec, number, now - start, False, None, error)
                    bar.running(len(inflight))
            finally:
                for ref in inflight:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
        return [books.results[t.key] for t in tasks]


def _no_uv_run_workers() -> None:
    """Keep a local Ray from starting each worker through `uv run` in a copy of the cwd.

    Ray (2.4x+) notices a driver started by `uv run` and, unless `RAY_ENABLE_UV_RUN_RUNTIME_ENV`
    is 0, ships the working directory and starts every worker with `uv run` (seconds each, and
    imports from the copy). A local Ray needs neither: its workers use this interpreter. An
    explicit setting of the variable is respected.
    """
    if "RAY_ENABLE_UV_RUN_RUNTIME_ENV" in os.environ:
        return
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray read the variable at import: correct its reading
        with contextlib.suppress(Exception):
            constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False


#: Ray's switch between a node reachable from others (its LAN address, servers on every
#: interface) and a single machine (127.0.0.1 only); read by `ray._private.ray_constants`.
_RAY_CLUSTER_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Start a local Ray whose servers listen on 127.0.0.1 only, not on every interface.

    Ray's head on Linux takes the machine's network address as its node address, and its GCS,
    raylet and object manager then listen on all interfaces: anyone on the network could reach
    a local Ray that nobody outside this machine needs (`--executor ray` without `--address`).
    `_node_ip_address="127.0.0.1"` does not help (Ray turns it back into the network address);
    Ray's own single-machine switch (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the default on
    macOS and Windows) makes the node address 127.0.0.1, and every server then binds there.
    The switch holds while the local Ray starts (its processes inherit it); the process's
    setting is restored after, and an explicit setting of the variable is respected.
    """
    if _RAY_CLUSTER_VAR in os.environ:
        yield
        return
    constants = sys.modules.get("ray._private.ray_constants")
    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_RAY_CLUSTER_VAR] = "0"
    if constants is not None:  # read at import: correct its reading while Ray starts
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        os.environ.pop(_RAY_CLUSTER_VAR, None)
        if constants is not None and before is not None:
            constants.ENABLE_RAY_CLUSTER = before


def _ray_error(exc: BaseException) -> str:
    """A Ray failure as text: the remote traceback for a raise, Ray's account for a crash."""
    return f"{type(exc).__name__}: {exc}".rstrip()


# --------------------------------------------------------------------------------------------
# Factory


def make_executor(
    name: str, *, address: str | None = None, max_workers: int | None = None
) -> Executor:
    """Build an executor by name: `"local"` (`max_workers` processes) or `"ray"`.

    For Ray, `address` picks a cluster (None: a local Ray) and `max_workers` caps the attempts
    in flight.

    Raises:
        BadInputError: an unknown name or a `max_workers` below 1 (both ValueErrors).
        ValueError: an address given to the local executor.
    """
    require_choice("executor", name, EXECUTORS, what="executor")
    require_positive("max_workers", max_workers)
    if name == "local":
        if address is not None:
            raise ValueError("an address only applies to the 'ray' executor")
        return LocalExecutor(max_workers)
    if name == "ray":
        return RayExecutor(address=address, max_in_flight=max_workers)
    raise AssertionError(f"executor {name!r} is listed in EXECUTORS but not built here")
