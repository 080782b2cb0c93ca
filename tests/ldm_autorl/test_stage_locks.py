"""One process per (data root, library, stage) (issue 15, item 5).

Two identical `ldm-autorl rank` at once used to both do all the work and record it twice in
MLflow. The second is now refused, naming the first's pid; other libraries, stages and roots
are not held up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ldm_envs import tracking
from ldm_envs.locks import StageBusyError, read_holder, stage_lock

HOLD = """
import sys, time
from pathlib import Path
from ldm_envs.locks import stage_lock
with stage_lock(Path(sys.argv[1]), "toy", "ranking"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_held_stage_refuses_the_same_stage_only(tmp_path: Path) -> None:
    root = tmp_path / "autorl"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(
                StageBusyError, match=rf"ranking stage of library 'toy'.*pid {holder.pid}"
            ),
            stage_lock(root, "toy", "ranking"),
        ):
            pass
        # other libraries, stages and data roots go ahead, side by side with the holder
        with (
            stage_lock(root, "classic-control", "ranking"),
            stage_lock(root, "toy", "reference"),
            stage_lock(tmp_path / "other-root", "toy", "ranking"),
        ):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # a holder killed outright leaves no stale lock
    with stage_lock(root, "toy", "ranking"):
        held = read_holder(root, "toy", "ranking")
        assert held is not None and held.pid == os.getpid()
    assert read_holder(root, "toy", "ranking") is None  # released: the record goes too


def _rank(root: Path, uri: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ldm_autorl.cli",
            "rank",
            "toy",
            "--dataset",
            str(root),
            "--budget",
            "2000",
            "--candidate",
            "a2c-default",
            "--parallel",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_second_identical_run_is_refused_naming_the_first(tmp_path: Path) -> None:
    root = tmp_path / "autorl"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _rank(root, uri)
    try:
        deadline = time.monotonic() + 300
        while (held := read_holder(root, "toy", "ranking")) is None or held.pid != first.pid:
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "the first rank never took its lock"
            time.sleep(0.2)
        second = _rank(root, uri)
        out = second.communicate(timeout=300)[0]
        assert first.poll() is None, "the first rank ended before the second asked: a weak test"
        assert second.returncode == 1, out
        assert f"pid {first.pid}" in out and "already running" in out, out
        assert "Traceback" not in out
        first_out = first.communicate(timeout=900)[0]
        assert first.returncode == 0, first_out
    finally:
        for proc in (first,):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    # one parent and one run per env, once: the refused rank recorded nothing
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ldm-ranking/toy")
    keys = [r.data.tags[tracking.TAG_RUN_KEY] for r in client.search_runs([exp.experiment_id])]
    assert len(keys) == len(set(keys)) == 1 + 3, sorted(keys)
