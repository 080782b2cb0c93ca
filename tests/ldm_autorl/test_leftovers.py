"""`ldm-autorl rank` twice (the second call a resume): nothing in the temp dir, no re-logged points.

A real CLI in a subprocess, real task processes, real SB3 (A2C at a tiny budget) through venv
workers, with the temp dir (`TMPDIR`) and the MLflow store its own, so what is left and what
was logged can be counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from ldm_autorl import layout
from ldm_envs import tracking

pytestmark = pytest.mark.slow
BUDGET = 96  # a budget no other test ranks at: its own parent run


def left_in(tmp: Path) -> list[str]:
    """What the runs left in the temp dir, but PyTorch's per-user cache folder.

    `torchinductor_<user>` is made once by `import torch._dynamo` (an optimizer's first step)
    and reused by every later process: PyTorch's cache, not a leftover of a run.
    """
    return sorted(p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_"))


def rank(root: Path, tmp: Path, store: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp), "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ldm_autorl.cli",
            "rank",
            "toy",
            "--dataset",
            str(root),
            "--budget",
            str(BUDGET),
            "--candidate",
            "a2c-default",
            "--parallel",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_ranking_twice_leaves_no_temp_files_and_logs_its_summary_once(toy, tmp_path: Path) -> None:
    from ldm_envs.backends import get_backend

    get_backend("venv").prepare(toy)  # built before the temp dir is watched
    root, tmp, store = tmp_path / "root", tmp_path / "tmp", tmp_path / "mlflow.db"
    tmp.mkdir()
    first = rank(root, tmp, store)
    assert first.returncode == 0, first.stdout + first.stderr
    # SB3 made an SB3-<date> folder per learn() here; venv workers an empty ldm-*.log each
    assert left_in(tmp) == []
    again = rank(root, tmp, store)  # every run is done: a resume that only reopens the parent
    assert again.returncode == 0, again.stdout + again.stderr
    assert left_in(tmp) == []

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name("ldm-ranking/toy")
    key = layout.stage_key("ranking", "toy", BUDGET)
    (parent,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tracking.TAG_RUN_KEY}` = '{key}'"
    )
    assert parent.data.metrics["runs"] == 3
    for name in parent.data.metrics:
        history = client.get_metric_history(parent.info.run_id, name)
        assert len(history) == 1, (name, [(m.step, m.value) for m in history])
