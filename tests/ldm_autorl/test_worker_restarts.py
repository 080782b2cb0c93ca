"""An env worker SIGKILLed in the middle of a real reference run (issue 15, item 3).

The run goes on through a restarted worker, as before; but the episodes the restart cut short
are now marked in the shard (`restarted`), left out of the run's episode returns (so of the
first/last-10% means, the filter and the ranking) and of the index's means, and counted in the
run record and in MLflow. Past `max_restarts` the run fails, naming the cause.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from ldm_autorl import jobs, layout
from ldm_autorl.recording import RecordingVecEnv
from ldm_autorl.stats import window
from ldm_envs import tracking
from ldm_envs.dataset.index import read_index, write_index
from ldm_envs.dataset.shards import ShardReader

pytestmark = pytest.mark.slow

ENV = "CartPole-v1"
CANDIDATE = "a2c-default"  # 8 sub-envs in one venv worker: a restart cuts all 8 episodes
N_ENVS = 8
BUDGET = 800  # 100 vector steps: a few CartPole episodes per sub-env on either side of the kill
KILL_AT = 40  # the vector step at which the worker is SIGKILLed


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A SQLite MLflow store of this test (the session's data home keeps the toy venv)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.setup()
    yield uri


@pytest.fixture
def killer(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """SIGKILL the training env's worker (a real venv process) once, at step `KILL_AT`.

    Returns the killed pids. The kill lands between SB3 sending a step and collecting it, so the
    pool sees a dead worker on that step or the next, as with a crash in the wild.
    """
    killed: list[int] = []
    steps = [0]
    original = RecordingVecEnv.step_wait

    def step_wait(self: RecordingVecEnv):
        steps[0] += 1
        if steps[0] == KILL_AT:
            pid = self.venv.pool.workers[0].client.hello["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return original(self)

    monkeypatch.setattr(RecordingVecEnv, "step_wait", step_wait)
    return killed


def _train(root: Path, **over: object) -> jobs.RunResult:
    kwargs = dict(
        stage="reference",
        library="toy",
        env_id=ENV,
        candidate=CANDIDATE,
        seed=0,
        budget=BUDGET,
        root=str(root),
        record=True,
        backend="venv",
    )
    kwargs.update(over)
    return jobs.RunResult.model_validate(jobs.train_run(**kwargs))


def test_episodes_cut_by_a_restart_are_marked_and_left_out(
    store: str, killer: list[int], tmp_path: Path
) -> None:
    root = tmp_path / "autorl"
    result = _train(root)
    assert len(killer) == 1

    # the run record counts the restart and the episodes it cut, with the cause
    assert result.worker_restarts == 1
    assert result.cut_episodes == N_ENVS
    assert len(result.restart_causes) == 1 and "signal 9" in result.restart_causes[0]

    # the shard marks one cut episode per sub-env: a truncated last row, not a complete episode
    complete_returns: list[float] = []
    for shard in result.shards:
        with ShardReader(root / shard) as reader:
            assert reader.has_restarted
            marked = np.flatnonzero(reader.column("restarted"))
            assert len(marked) == 1
            assert reader.column("truncated")[marked[0]]
            eps = reader.episodes()
            cut = eps.filter(pl.col("restarted"))
            assert cut.height == 1 and not cut["complete"][0]
            assert cut["start"][0] + cut["length"][0] - 1 == marked[0]
            complete_returns += eps.filter(pl.col("complete"))["return"].to_list()
            reader.verify()  # the marks obey the episode rules

    # the run's episode returns (the filter's first/last 10%, the ranking, the learning curve)
    # are exactly the complete episodes: none of the cut ones
    assert sorted(result.episode_returns) == sorted(complete_returns)
    assert len(result.episode_lengths) == len(result.episode_returns)
    assert result.first10_mean == pytest.approx(window(result.episode_returns, "first").mean())
    assert result.last10_mean == pytest.approx(window(result.episode_returns, "last").mean())

    # the index counts them per shard and leaves them out of the means
    write_index(root)
    runs, episodes = read_index(root)
    assert runs["restarted_episodes"].sum() == N_ENVS
    assert episodes.filter(pl.col("restarted")).height == N_ENVS
    assert not episodes.filter(pl.col("restarted"))["complete"].any()
    for row in runs.iter_rows(named=True):
        mine = episodes.filter(pl.col("shard_path") == row["shard_path"], pl.col("complete"))
        if mine.height:
            assert row["mean_return"] == pytest.approx(mine["return"].mean())

    # MLflow counts them too
    run = MlflowClient(tracking_uri=store).get_run(result.mlflow_run_id)
    assert run.data.metrics["worker_restarts"] == 1
    assert run.data.metrics["cut_episodes"] == N_ENVS
    assert run.data.metrics["episodes"] == len(result.episode_returns)


def test_a_run_past_its_restart_limit_fails_with_the_cause(
    store: str, killer: list[int], tmp_path: Path
) -> None:
    root = tmp_path / "autorl"
    with pytest.raises(jobs.RestartLimitError, match=r"max_restarts=0.*signal 9") as info:
        _train(root, max_restarts=0)
    key = layout.run_key("reference", "toy", ENV, CANDIDATE, 0, BUDGET)
    assert key in str(info.value)
    # nothing recorded as done, the MLflow run failed with the cause
    assert not layout.result_path(root, "reference", "toy", ENV, CANDIDATE, 0, BUDGET).exists()
    found = tracking.find_run("reference", "toy", key)
    assert found is not None and found.info.status == "FAILED"
    assert "signal 9" in found.data.tags[tracking.TAG_ERROR]
