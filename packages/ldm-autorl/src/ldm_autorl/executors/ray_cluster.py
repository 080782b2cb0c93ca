"""`RayExecutor`: each attempt one Ray task, on a local Ray or a cluster.

One `ray.remote` call per attempt in a fresh worker process, our own retries (so they are
counted and reported like the local executor's), timeouts by `ray.wait` and
`ray.cancel(force=True)`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ldm_autorl.executors.scheduling import PooledExecutor, _Books
from ldm_autorl.executors.tasks import TaskSpec, _call_target


def _ray_task(target: str, kwargs_json: str) -> str:
    """The body of a Ray task (module level, so Ray pickles it by reference)."""
    return _call_target(target, kwargs_json)


_FORWARDED_ENV = ("MLFLOW_TRACKING_URI",)
"""Environment variables the driver forwards to Ray tasks (they may run on other nodes)."""


@dataclass
class _RayAttempt:
    spec: TaskSpec
    number: int
    ref: Any
    started: float
    deadline: float


class RayExecutor(PooledExecutor[_RayAttempt]):
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
        self._ready: set[Any] = set()
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

    # -- PooledExecutor's hooks ---------------------------------------------------------------

    def _prepare(self, tasks: Sequence[TaskSpec]) -> int:
        self.init()
        self._ready = set()
        return self._capacity()

    def _start(self, spec: TaskSpec, number: int) -> _RayAttempt:
        start = time.monotonic()
        return _RayAttempt(spec, number, self._submit(spec), start, start + spec.timeout_s)

    def _wait(self, running: list[_RayAttempt]) -> None:
        import ray

        timeout = max(0.0, min(a.deadline for a in running) - time.monotonic())
        ready, _ = ray.wait([a.ref for a in running], num_returns=1, timeout=timeout)
        self._ready = set(ready)

    def _poll(self, attempt: _RayAttempt) -> bool:
        return attempt.ref in self._ready or time.monotonic() >= attempt.deadline

    def _settle(self, attempt: _RayAttempt, books: _Books) -> None:
        import ray

        spec, number = attempt.spec, attempt.number
        seconds = time.monotonic() - attempt.started
        if attempt.ref in self._ready:
            try:
                value = json.loads(ray.get(attempt.ref))
            except Exception as exc:
                books.settle(spec, number, seconds, False, None, _ray_error(exc))
            else:
                books.settle(spec, number, seconds, True, value, "")
            return
        self._abandon(attempt)
        error = (
            f"timed out after {spec.timeout_s:g} s (attempt {number}); "
            "the Ray task was cancelled (its worker killed)"
        )
        books.settle(spec, number, seconds, False, None, error)

    def _abandon(self, attempt: _RayAttempt) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.cancel(attempt.ref, force=True)


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
    constants: Any = sys.modules.get("ray._private.ray_constants")  # a module of plain globals
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
    constants: Any = sys.modules.get("ray._private.ray_constants")  # a module of plain globals
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
