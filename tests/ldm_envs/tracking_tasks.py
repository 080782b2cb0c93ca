"""Task functions for the tracking tests, importable by spawned child processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def log_concurrently(home: str, key: str, barrier: Any, points: int) -> None:
    """Log a run to the embedded store under `home`, starting together with another process."""
    os.environ["LDM_HOME"] = home
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from ldm_envs import tracking

    barrier.wait(timeout=120)
    with tracking.tracked_run(
        "reference", "toy", key, name=key, params={"key": key, "points": points}
    ) as run:
        for step in range(20):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            run.set_tags({"progress": str(step)})
        run.log_learning_curve([float(i % 7) for i in range(points)], title=key)


def open_same_key(home: str, key: str, barrier: Any, out: str) -> None:
    """Open the run `key` (a stage parent: reuse_finished) together with other processes.

    `find_run` is slowed down, as a loaded machine or a remote store would, so that without an
    atomic find-or-create every process finds no run and creates its own. Writes the run id.
    """
    import time

    os.environ["LDM_HOME"] = home
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from ldm_envs import tracking

    tracking.setup()
    tracking.experiment_id("ranking", "toy")
    found = tracking.find_run

    def slow_find(*args: Any, **kwargs: Any) -> Any:
        run = found(*args, **kwargs)
        time.sleep(1.0)
        return run

    tracking.find_run = slow_find
    barrier.wait(timeout=120)
    with tracking.tracked_run("ranking", "toy", key, name=key, reuse_finished=True) as run:
        Path(out).write_text(run.run_id)
