"""Task functions for the tracking tests, importable by spawned child processes."""

from __future__ import annotations

import os
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
