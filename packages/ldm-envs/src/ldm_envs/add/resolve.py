"""The isolated environment of `ldm-envs add`: resolve and pin, build, find the library's modules.

Resolution runs first and alone (`uv pip compile` for the target Python), so a requirement that
does not resolve is refused with the resolver's log before anything is built or written, and the
venv is built once, from the pins the manifest will hold (its cache key).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ldm_envs.add.errors import AddError
from ldm_envs.backends import Backend
from ldm_envs.interpreters import uv_executable
from ldm_envs.manifest import Api, EnvLibrarySpec

#: Dependencies pinned in the manifest besides the named requirements: the ones whose version
#: changes an env's behaviour or the worker's (the rest stay in the venv's `ldm-freeze.txt`).
KEY_DEPENDENCIES = ("gymnasium", "gym", "numpy")

# Run by the library's interpreter (Python 3.6+): the importable top-level modules of each
# distribution, from its metadata (top_level.txt, else its file list).
_TOP_LEVEL = r"""
import importlib, json, sys
try:
    from importlib import metadata
except ImportError:  # Python < 3.8
    import importlib_metadata as metadata


def top_level(name):
    try:
        dist = metadata.distribution(name)
    except Exception:
        return []
    names = (dist.read_text("top_level.txt") or "").split()
    if not names:
        for f in dist.files or []:
            head = f.parts[0] if f.parts else ""
            if head.endswith((".dist-info", ".data", ".egg-info")) or head in ("..", "bin"):
                continue
            if len(f.parts) > 1 or head.endswith(".py"):
                names.append(head[:-3] if head.endswith(".py") else head)
    found, failed = [], {}
    for module in dict.fromkeys(names):
        if not module.isidentifier() or module.startswith("_") or module in ("tests", "test"):
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed[module] = "%s: %s" % (type(exc).__name__, exc)
            continue
        found.append(module)
    return {"found": found, "failed": failed}


result = {name: top_level(name) for name in json.loads(sys.argv[1])}
sys.stdout.write("\nLDM-ENVS-TOP-LEVEL:" + json.dumps(result) + "\n")
"""
_MARKER = "LDM-ENVS-TOP-LEVEL:"


def distribution_names(requirements: list[str]) -> list[str]:
    """The canonical distribution names of PEP 508 requirements (options and paths skipped)."""
    names: list[str] = []
    for text in requirements:
        if text.strip().startswith(("-", ".", "/")):
            continue
        names.append(canonicalize_name(Requirement(text).name))
    return names


def pin_requirements(requirements: list[str], python: str, api: Api) -> tuple[list[str], str]:
    """The requirements pinned to what the resolver picks for `python`, and its log.

    Each named requirement becomes `name[extras]==version` (markers kept), followed by the pins
    of `KEY_DEPENDENCIES` it pulled in. NumPy is always resolved with them: the worker needs it.

    Raises:
        AddError: when the requirements do not resolve, with the resolver's log.
    """
    wanted = list(requirements)
    names = distribution_names(requirements)
    if "numpy" not in names:
        wanted.append("numpy")
    api_module = "gymnasium" if api == Api.GYMNASIUM else "gym"
    proc = subprocess.run(
        [uv_executable(), "pip", "compile", "--no-header", "--python-version", python, "-"],
        input="\n".join(wanted) + "\n",
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        check=False,
    )
    log = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise AddError(
            f"the requirements {' '.join(requirements)} do not resolve for Python {python} "
            f"(nothing was written); the resolver said:\n{log}"
        )
    pins: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        found = re.match(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)==(\S+)", line)
        if found:
            pins[canonicalize_name(found.group(1))] = found.group(2)
    pinned: list[str] = []
    for text in requirements:
        if text.strip().startswith(("-", ".", "/")):
            pinned.append(text)
            continue
        req = Requirement(text)
        name: str = canonicalize_name(req.name)
        if req.url or name not in pins:
            pinned.append(text)
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker else ""
        pinned.append(f"{req.name}{extras}=={pins[name]}{marker}")
    for name in (api_module, "numpy"):
        if name in pins and name not in names:
            pinned.append(f"{name}=={pins[name]}")
    return pinned, log


def run_in_environment(spec: EnvLibrarySpec, backend: Backend, script: str, *args: str) -> str:
    """Run `script` with the library's interpreter and return its output.

    Raises:
        AddError: when it fails, with the end of its output.
    """
    if backend.name == "inprocess":
        python = sys.executable
    elif backend.name == "venv":
        python = str(backend.python_path(spec))  # type: ignore[attr-defined]
    else:
        raise AddError(f"`ldm-envs add` builds through venv or inprocess, not {backend.name}")
    from ldm_envs.backends.venv import worker_env

    proc = subprocess.run(
        [python, "-c", script, *args],
        capture_output=True,
        text=True,
        env=worker_env(spec),
        timeout=600,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise AddError(f"library {spec.name!r}: running in its environment failed:\n{tail}")
    return output


def top_level_modules(
    spec: EnvLibrarySpec, backend: Backend, names: list[str]
) -> tuple[list[str], dict[str, str]]:
    """The importable top-level modules the distributions `names` install, and the failures.

    Failures map each module that did not import to its exception: a library importing a
    module it does not declare (`pkg_resources`) shows up there, not as "no module found".
    """
    output = run_in_environment(spec, backend, _TOP_LEVEL, json.dumps(names))
    lines = [line for line in output.splitlines() if line.startswith(_MARKER)]
    found: dict[str, Any] = json.loads(lines[-1][len(_MARKER) :]) if lines else {}
    modules = [m for name in names for m in found.get(name, {}).get("found", [])]
    failed = {m: e for name in names for m, e in found.get(name, {}).get("failed", {}).items()}
    return list(dict.fromkeys(modules)), failed
