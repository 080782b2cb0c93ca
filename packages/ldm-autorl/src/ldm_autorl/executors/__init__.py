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

Modules: `tasks` (what runs and what comes back), `scheduling` (the one loop both executors
share: capacity, retries, results, progress), `local`, `ray_cluster`.
"""

from __future__ import annotations

from ldm_autorl.executors.local import LocalExecutor
from ldm_autorl.executors.ray_cluster import RayExecutor
from ldm_autorl.executors.scheduling import PooledExecutor
from ldm_autorl.executors.tasks import Executor, TaskResult, TaskSpec, resolve_target
from ldm_envs.inputs import require_choice, require_positive

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "PooledExecutor",
    "RayExecutor",
    "TaskResult",
    "TaskSpec",
    "make_executor",
    "resolve_target",
]

EXECUTORS = ("local", "ray")


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
