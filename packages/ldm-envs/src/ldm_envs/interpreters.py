"""Finding a Python interpreter of a requested version: one discovery for both backends.

The venv backend wants an interpreter to make a venv with; the docker backend one it can copy
into a base image (it skips those it cannot copy). Both look in the same places, in the same
order, so a version found for one is the version found for the other:

1. what `uv python find <version>` answers, without downloading: uv's own order (an active
   virtualenv, then uv-managed interpreters, then those on PATH);
2. pyenv's installed versions matching `<version>`, newest first (`3.10.13` before `3.10.9`):
   uv does not see pyenv versions that are not global, and a pyenv shim on PATH even makes
   `uv python find` fail.

The tools are found the same way everywhere, the explicit choice first:

- uv: the binary of the `uv` wheel ldm-envs depends on (its pinned version), else `uv` on PATH
  (where pyenv may have put a shim);
- pyenv's root: `$PYENV_ROOT` when set (pyenv itself honours it), else what `pyenv root` says,
  else `~/.pyenv`.

Nothing here downloads: when no interpreter is found, the venv backend hands the bare version to
`uv venv --python`, which may download one on a connected machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "FOUND_BY_PYENV",
    "FOUND_BY_UV",
    "find_local_python",
    "find_pythons",
    "parse_version",
    "pyenv_root",
    "python_in_prefix",
    "python_request",
    "uv_executable",
]

#: How `find_pythons` says where a candidate came from.
FOUND_BY_UV = "uv python find"
FOUND_BY_PYENV = "pyenv"
#: A stuck tool must not hang a build.
_TIMEOUT_S = 60


def uv_executable() -> str:
    """The uv binary: the `uv` wheel's (installed with ldm-envs), else `uv` on PATH.

    Raises:
        FileNotFoundError: neither exists.
    """
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        exe = shutil.which("uv")
        if exe is None:
            raise FileNotFoundError("uv is not installed: pip install uv") from None
        return exe


def pyenv_root() -> Path | None:
    """`$PYENV_ROOT`, else `pyenv root`, else `~/.pyenv` when it exists; None without pyenv."""
    if env := os.environ.get("PYENV_ROOT"):
        return Path(env)
    exe = shutil.which("pyenv")
    if exe is not None:
        try:
            out = subprocess.run(
                [exe, "root"],
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def parse_version(version: str) -> tuple[int, ...]:
    """`"3.10"`, `"3.10.13"` or `"python3.10"` as numbers: `(3, 10)`.

    Raises:
        ValueError: not one to three dotted numbers.
    """
    wanted = version.strip().removeprefix("python")
    if not re.fullmatch(r"\d+(\.\d+){0,2}", wanted):
        raise ValueError(f"not a Python version: {version!r}")
    return tuple(int(p) for p in wanted.split("."))


def python_in_prefix(prefix: Path) -> Path | None:
    """The interpreter of an installation prefix: `bin/python3`, else `bin/python`."""
    for name in ("python3", "python"):
        exe = prefix / "bin" / name
        if exe.exists():
            return exe
    return None


def find_pythons(version: str, *, notes: list[str] | None = None) -> Iterator[tuple[Path, str]]:
    """Installed interpreters of `version`, best first (see the module docstring), lazily.

    Yields `(executable, found_by)`; `found_by` is `FOUND_BY_UV` or `FOUND_BY_PYENV`. The uv
    candidate is what uv answers, not yet checked against `version` beyond uv's own matching.
    `notes`, when given, receives a line per place looked at that gave nothing (for errors).

    Raises:
        ValueError: `version` is not a version (`parse_version`).
    """
    parts = parse_version(version)
    wanted = ".".join(map(str, parts))
    notes = [] if notes is None else notes
    try:
        uv = uv_executable()
        found = subprocess.run(
            [uv, "python", "find", "--no-python-downloads", "--no-project", wanted],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"`uv python find {wanted}` failed: {exc}")
    else:
        exe = found.stdout.strip().splitlines()[-1:] if found.returncode == 0 else []
        if exe:
            yield Path(exe[0]), FOUND_BY_UV
        else:
            notes.append(f"`uv python find {wanted}` found nothing")

    root = pyenv_root()
    versions_dir = (root or Path.home() / ".pyenv") / "versions"
    candidates: list[tuple[tuple[int, ...], Path]] = []
    if versions_dir.is_dir():
        for entry in versions_dir.iterdir():
            m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", entry.name)
            if m is None:
                continue
            numbers = tuple(int(g) for g in m.groups() if g is not None)
            if numbers[: len(parts)] == parts:
                candidates.append((numbers, entry))
    notes.append(f"{versions_dir}/{wanted}*")
    for _numbers, entry in sorted(candidates, reverse=True):
        exe_path = python_in_prefix(entry)
        if exe_path is not None:
            yield exe_path, FOUND_BY_PYENV


def find_local_python(version: str) -> Path | None:
    """The best installed interpreter of `version` (e.g. "3.10"), without downloading anything."""
    return next((exe for exe, _found_by in find_pythons(version)), None)


def python_request(version: str) -> str:
    """What to pass to `uv venv --python`: a local path when one exists, else the version."""
    found = find_local_python(version)
    return str(found) if found is not None else version
