"""The workspace's uv is pinned once and installed at that version wherever a uv gets installed.

A uv of another version rewrites all of `uv.lock` (fields it adds or drops) on the next
`uv add`; `required-version` makes it refuse instead, and CI and the README install the pin.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]


def _pinned() -> str:
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["required-version"]
    match = re.fullmatch(r"==(\d+\.\d+\.\d+)", spec)
    assert match, f"required-version {spec!r} is not one exact version"
    return match.group(1)


def test_ci_and_readme_install_the_pinned_uv():
    version = _pinned()
    ci = (REPO / ".ci/run").read_text()
    assert re.findall(r"^UV_VERSION=(\S+)$", ci, flags=re.M) == [version]
    installs = re.findall(r"pip install (uv[=\d.]*)", (REPO / "README.md").read_text())
    assert installs and set(installs) == {f"uv=={version}"}


def test_the_uv_here_is_the_pinned_one_and_leaves_the_lock_as_it_is():
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("no uv on PATH")
    out = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == _pinned()
    # the pinned uv accepts the committed lock unchanged (offline: the lock is only compared)
    check = subprocess.run(
        [uv, "lock", "--check", "--offline"], cwd=REPO, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
