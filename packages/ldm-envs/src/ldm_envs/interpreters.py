"""Finding a Python interpreter of a requested version for an isolated environment.

uv finds interpreters on PATH and those it manages (and downloads one on a connected machine);
pyenv's non-global versions are invisible to it, so they are searched as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def _pyenv_root() -> Path | None:
    if env := os.environ.get("PYENV_ROOT"):
        return Path(env)
    exe = shutil.which("pyenv")
    if exe is None:
        default = Path.home() / ".pyenv"
        return default if default.is_dir() else None
    out = subprocess.run([exe, "root"], capture_output=True, text=True, check=False)
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def _matches(name: str, version: str) -> bool:
    return name == version or name.startswith(version + ".")


def find_local_python(version: str) -> Path | None:
    """An installed interpreter of `version` (e.g. "3.10"), without downloading anything."""
    uv = uv_executable()
    out = subprocess.run(
        [uv, "python", "find", "--no-python-downloads", "--no-project", version],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode == 0 and out.stdout.strip():
        return Path(out.stdout.strip())
    root = _pyenv_root()
    if root is not None and (root / "versions").is_dir():
        for cand in sorted((root / "versions").iterdir(), reverse=True):
            exe = cand / "bin" / "python"
            if _matches(cand.name, version) and exe.exists():
                return exe
    return None


def python_request(version: str) -> str:
    """What to pass to `uv venv --python`: a local path when one exists, else the version."""
    found = find_local_python(version)
    return str(found) if found is not None else version


def uv_executable() -> str:
    """The uv binary (installed with ldm-envs through the `uv` wheel)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        exe = shutil.which("uv")
        if exe is None:
            raise FileNotFoundError("uv is not installed: pip install uv") from None
        return exe
