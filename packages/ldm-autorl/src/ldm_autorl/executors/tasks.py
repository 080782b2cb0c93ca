"""What an executor runs and returns: `TaskSpec`, `TaskResult`, and calling a target.

A task names a function by `"module:function"` and passes it plain JSON data; the function runs
in another process (imported there) and returns JSON data, so nothing but text crosses the
process (or node) boundary.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
