"""Ranking again at the same budget with a new seed or backend (issue 15, item 7).

The ranking's parent MLflow run is keyed by library and budget; it used to log the seeds and the
backend as params, which MLflow cannot change, so `rank --seed 1` after `rank` ended in a raw
`TrackingError` traceback. Now the call extends the ranking: the same parent run gains the new
child runs, grows its seed and backend tags, and the ranking pools every finished seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ldm_autorl import layout
from ldm_autorl.cli import app
from ldm_envs import tracking

pytestmark = pytest.mark.slow

BUDGET = 400  # CartPole episodes end within it on all 8 A2C envs; Pendulum's need not
RANK = ["rank", "toy", "--budget", str(BUDGET), "--candidate", "a2c-default", "--parallel", "1"]


def test_a_new_seed_or_backend_extends_the_ranking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    root = tmp_path / "autorl"
    runner = CliRunner()
    first = runner.invoke(app, [*RANK, "--dataset", str(root)])
    assert first.exit_code == 0, first.output
    # a new seed through a new backend, at the same budget
    again = runner.invoke(
        app, [*RANK, "--dataset", str(root), "--seed", "1", "--backend", "inprocess"]
    )
    assert again.exit_code == 0, f"{again.output}\n{again.exception!r}"
    assert "Traceback" not in again.output and "error" not in again.output.lower()

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ldm-ranking/toy")
    runs = client.search_runs([exp.experiment_id])
    key = layout.stage_key("ranking", "toy", BUDGET)
    (parent,) = [r for r in runs if r.data.tags[tracking.TAG_RUN_KEY] == key]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_SEEDS] == "0,1"
    assert parent.data.tags[tracking.TAG_BACKEND] == "inprocess,venv"
    children = [r for r in runs if r.info.run_id != parent.info.run_id]
    keys = [r.data.tags[tracking.TAG_RUN_KEY] for r in children]
    assert len(keys) == len(set(keys)) == 3 * 2  # 3 ranking envs x 2 seeds, each once
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags[tracking.TAG_BACKEND] for r in children} == {"venv", "inprocess"}

    # the ranking pools both seeds, although the second call named only seed 1
    saved = json.loads(layout.ranking_path(root, "toy").read_text())
    assert saved["seeds"] == [0, 1] and saved["budget"] == BUDGET
    assert "(6 runs)" in " ".join(again.output.split())
