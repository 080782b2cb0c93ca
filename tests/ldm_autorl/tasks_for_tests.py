"""Task functions for the executor tests, importable by child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def ok(x: int = 0) -> dict[str, Any]:
    return {"x": x, "pid": os.getpid()}


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def hang(seconds: float = 3600) -> None:
    time.sleep(seconds)


def crash(code: int = 3) -> None:
    sys.stdout.flush()
    os._exit(code)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def flaky(state_file: str) -> str:
    """Fail the first time (leaving a mark in `state_file`), succeed afterwards."""
    path = Path(state_file)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "recovered"


def hang_with_grandchild(pid_file: str) -> None:
    """Start a long-lived child process, record its pid, then hang."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    # Write then rename: a reader never sees an empty file if this attempt is killed mid-write.
    partial = Path(pid_file).with_suffix(".partial")
    partial.write_text(str(child.pid))
    partial.replace(pid_file)
    time.sleep(3600)


def not_json() -> object:
    return object()


def environment(name: str) -> dict[str, Any]:
    """What the attempt sees of the caller: one environment variable and the working folder."""
    return {"value": os.environ.get(name), "cwd": os.getcwd()}
