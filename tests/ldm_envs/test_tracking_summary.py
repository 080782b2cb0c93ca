"""`RunHandle.log_summary`: a reopened run does not get its summary points again."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ldm_envs import tracking


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LDM_HOME", str(tmp_path / "home"))
    # no reset of the experiment-id cache: it is keyed by the store's URI, new for each home
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def reopen(summary: dict[str, float]) -> tuple[str, dict[str, float]]:
    """A stage's parent run, opened again as every resume of the stage does."""
    with tracking.tracked_run(
        "ranking", "toy", "ranking/toy/b1", name="parent", reuse_finished=True
    ) as run:
        logged = run.log_summary(summary)
    return run.run_id, logged


def test_resumes_do_not_stack_summary_points(home: Path) -> None:
    run_id, logged = reopen({"runs": 3, "failures": 0, "ratio": math.nan})
    assert set(logged) == {"runs", "failures", "ratio"}
    for _ in range(2):  # two resumes with nothing new
        again, logged = reopen({"runs": 3, "failures": 0, "ratio": math.nan})
        assert again == run_id and logged == {}
    assert history(run_id, "runs") == [(0, 3.0)]  # log_metrics put a point per resume at step 0
    assert history(run_id, "failures") == [(0, 0.0)]
    # a resume that finished more runs: the changed count is the next point, and the latest
    _, logged = reopen({"runs": 5, "failures": 0, "ratio": math.nan})
    assert logged == {"runs": 5.0}
    assert history(run_id, "runs") == [(0, 3.0), (1, 5.0)]
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    assert client.get_run(run_id).data.metrics["runs"] == 5.0
