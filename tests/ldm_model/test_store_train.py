"""`ldm-model train --dataset s3://...`: windows sampled through the bounded local cache of the
shards it uses, from a real S3-compatible server (moto_server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ldm_envs.store import publish_dataset
from ldm_model import cli
from tests.ldm_envs.store_server import export_env, make_bucket, moto_server

runner = CliRunner()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


def _train(dataset: str, out: Path, *extra: str):
    torch.set_num_threads(1)
    return runner.invoke(
        cli.app,
        [
            *("train", "--dataset", dataset, "--batch-size", "2", "--context", "8"),
            *("--steps", "3", "--no-track", "--no-progress", "--out", str(out), *extra),
        ],
    )


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def test_train_from_the_store_equals_local(
    tiny_dataset: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    export_env(monkeypatch, endpoint)
    monkeypatch.setenv("LDM_HOME", str(tmp_path / "home"))
    url = f"s3://{make_bucket(endpoint)}/autorl"
    publish_dataset(tiny_dataset, url)

    remote = _train(url, tmp_path / "remote")
    assert remote.exit_code == 0, remote.output
    local = _train(str(tiny_dataset), tmp_path / "local")
    assert local.exit_code == 0, local.output
    assert _losses(tmp_path / "remote") and _losses(tmp_path / "remote") == _losses(
        tmp_path / "local"
    )
    cached = [p for p in (tmp_path / "home" / "cache").rglob("*.arrow")]
    assert len(cached) == len(list(tiny_dataset.rglob("*.arrow")))

    # a bound below what the selected shards hold is refused before any step
    small = _train(url, tmp_path / "small", "--store-cache-gb", "0.00001")
    assert small.exit_code != 0
    assert "more than the cache bound" in small.output or "exceed the cache bound" in small.output
