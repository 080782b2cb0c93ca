"""The scheduling loop both executors share: attempts, retries, results, the progress bar.

An executor differs from another only in how an attempt starts, is waited on, ends and is
killed (a local process group, a Ray task); `PooledExecutor.run` is the one loop that keeps
at most `capacity` attempts in flight, requeues a failed attempt while it has retries, hands
each settled task to `on_result` at once and kills what is in flight when the run stops.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ldm_autorl.executors.tasks import TaskResult, TaskSpec

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

#: An executor's handle on one attempt in flight.
A = TypeVar("A")


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


class PooledExecutor(ABC, Generic[A]):
    """`Executor.run` over an engine's attempts; subclasses say how one attempt lives and dies.

    Hooks, called in this order: `_prepare` (once per run: start the engine, return how many
    attempts may be in flight), `_start` per attempt, `_wait` until something may have
    changed, `_poll` per attempt in flight (is it over?), `_settle` for each one that is
    (record it in the books), and `_abandon` for those still in flight when the run stops.
    """

    show_progress: bool

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
        capacity = self._prepare(tasks)
        running: list[A] = []
        with _progress(description, len(tasks), enabled=self.show_progress) as bar:
            books = _Books(tasks, bar, on_result)
            try:
                while books.pending or running:
                    while books.pending and len(running) < capacity:
                        spec, number = books.pending.popleft()
                        running.append(self._start(spec, number))
                    bar.running(len(running))
                    self._wait(running)
                    for attempt in list(running):
                        if self._poll(attempt):
                            running.remove(attempt)
                            self._settle(attempt, books)
                            bar.running(len(running))
            finally:
                for attempt in running:
                    self._abandon(attempt)
        return [books.results[t.key] for t in tasks]

    @abstractmethod
    def _prepare(self, tasks: Sequence[TaskSpec]) -> int:
        """Get the engine ready for `tasks`; return how many attempts may run at once."""

    @abstractmethod
    def _start(self, spec: TaskSpec, number: int) -> A:
        """Start attempt `number` (1-based) of `spec`."""

    @abstractmethod
    def _wait(self, running: list[A]) -> None:
        """Block until an attempt may have ended or the nearest deadline passed."""

    @abstractmethod
    def _poll(self, attempt: A) -> bool:
        """Whether the attempt is over (it ended, or its deadline passed)."""

    @abstractmethod
    def _settle(self, attempt: A, books: _Books) -> None:
        """Clean the attempt up and record its outcome with `books.settle`."""

    @abstractmethod
    def _abandon(self, attempt: A) -> None:
        """Kill an attempt still in flight when the run stops (an error, an interrupt)."""
