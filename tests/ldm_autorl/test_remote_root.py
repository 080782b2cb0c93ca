"""`ldm-autorl run --dataset s3://...`: a tiny toy pipeline into a real S3-compatible server
(moto_server), its index against the same run into a local folder."""

import os
import shutil
import subprocess
import sys

import polars as pl
import pytest

from ldm_envs.dataset.index import read_index
from ldm_envs.store import DataRoot
from tests.ldm_envs.store_server import S3_ENV, make_bucket, moto_server

pytestmark = pytest.mark.slow
BUDGET = 400


def _run(dataset: str, home, endpoint: str, *extra: str) -> str:
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": endpoint, "LDM_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "ldm_autorl.cli", "run", "toy", "--dataset", dataset),
            *("--rank-budget", str(BUDGET), "--train-budget", str(BUDGET), "--top-n", "1"),
            *("--candidate", "a2c-default", "--backend", "inprocess", "--parallel", "1"),
            *("--random-episodes", "2", *extra),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _summary(runs: pl.DataFrame) -> list[tuple[str, int]]:
    by_run = runs.group_by("run_key").agg(pl.col("rows").sum()).sort("run_key")
    return [(k, int(n)) for k, n in by_run.iter_rows()]


def test_a_run_into_the_store_indexes_like_a_local_one(tmp_path, monkeypatch):
    with moto_server(tmp_path) as endpoint:
        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        url = f"s3://{make_bucket(endpoint)}/autorl"
        _run(url, tmp_path / "home-s3", endpoint)
        _run(str(tmp_path / "local"), tmp_path / "home-local", endpoint)

        store = DataRoot.parse(url)
        # everything a run wrote is published: records, shards, models, ranking, index
        assert store.exists("ranking/toy.json")
        assert store.list_folders("runs/reference/toy")
        index = store.pull("index", tmp_path / "from-store")
        remote_runs, remote_episodes = read_index(index.parent)
        local_runs, local_episodes = read_index(tmp_path / "local")
        assert remote_runs.height > 0
        assert _summary(remote_runs) == _summary(local_runs)
        assert remote_episodes.height == local_episodes.height

        # nothing is redone on a second call, even without the driver's local mirror (another
        # machine, same MLflow store): every run resumes from its published record
        shutil.rmtree(tmp_path / "home-s3" / "stores")
        again = _run(url, tmp_path / "home-s3", endpoint)
        assert again.count("already finished: skipped") == 2, again
