"""The type check: mypy over the four packages, as `[tool.mypy]` in the root pyproject sets it.

It runs inside `uv run pytest` rather than as a separate CI step so that the one test command
(the README's, which `.ci/run` runs) stays the whole gate, and a type error shows up in the same
summary as a failing test. A warm `.mypy_cache` makes it take seconds; a cold one, about a minute.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_packages_type_check() -> None:
    result = _mypy()
    assert result.returncode == 0, f"`uv run mypy` found type errors:\n{result.stdout}"
    assert "Success: no issues found" in result.stdout


def test_type_check_fails_on_a_type_error(tmp_path: Path) -> None:
    """The same configuration refuses a wrong call, so the gate above can fail.

    The misspelt field also proves the pydantic plugin is loaded: without it, a model's
    `__init__` takes any keyword.
    """
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from ldm_model.training import TrainConfig\n"
        "from ldm_envs.pool import EnvPool\n"
        "TrainConfig(stepz=3)\n"
        "def f(pool: EnvPool) -> None:\n"
        "    pool.step([0], hold='0')\n"
    )
    result = _mypy(str(bad))
    assert result.returncode == 1, result.stdout
    assert 'Unexpected keyword argument "stepz" for "TrainConfig"' in result.stdout
    assert 'Argument "hold" to "step" of "EnvPool" has incompatible type "str"' in result.stdout
