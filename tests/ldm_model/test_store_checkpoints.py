"""`ldm-model train --out s3://...`: checkpoints published to a real S3-compatible server
(moto_server), a run resumed from the store alone, and `load_model` of the URL."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ldm_envs.store import DataRoot
from ldm_model import cli
from ldm_model.errors import CheckpointNotFoundError
from ldm_model.training.checkpoint import load_model
from ldm_model.training.checkpoint.store import mirror_dir
from tests.ldm_envs.store_server import export_env, make_bucket, moto_server

runner = CliRunner()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


def _train(dataset: Path, out: str, steps: int):
    torch.set_num_threads(1)
    return runner.invoke(
        cli.app,
        [
            *("train", "--dataset", str(dataset), "--batch-size", "2", "--context", "8"),
            *("--steps", str(steps), "--checkpoint-every", "2", "--log-every", "1"),
            *("--no-track", "--no-progress", "--out", out),
        ],
    )


def _steps(metrics: bytes) -> list[int]:
    return [json.loads(line)["step"] for line in metrics.decode().splitlines() if line.strip()]


def test_train_to_a_store_url_resumes_from_the_store_alone(
    tiny_dataset: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    export_env(monkeypatch, endpoint)
    home = tmp_path / "home"
    monkeypatch.setenv("LDM_HOME", str(home))
    url = f"s3://{make_bucket(endpoint)}/models/run-1"
    store = DataRoot.parse(url)

    first = _train(tiny_dataset, url, 3)
    assert first.exit_code == 0, first.output
    assert store.list("checkpoints") == ["checkpoints/step-00000002", "checkpoints/step-00000003"]
    assert _steps(store.read_bytes("metrics.jsonl") or b"") == [1, 2, 3]
    assert store.exists("train_config.json")
    assert (mirror_dir(store) / "checkpoints" / "step-00000003" / "model.safetensors").is_file()
    step2 = store.read_bytes("checkpoints/step-00000002/checkpoint.json")

    # a node with nothing local: no mirror, no cache; the same command, twice the steps
    shutil.rmtree(home)
    second = _train(tiny_dataset, url, 6)
    assert second.exit_code == 0, second.output
    assert "resuming at step 3" in second.output
    assert store.read_bytes("checkpoints/step-00000002/checkpoint.json") == step2  # not redone
    assert _steps(store.read_bytes("metrics.jsonl") or b"") == [1, 2, 3, 4, 5, 6]
    assert store.list("checkpoints")[-1] == "checkpoints/step-00000006"

    local = _train(tiny_dataset, str(tmp_path / "local"), 6)
    assert local.exit_code == 0, local.output
    shutil.rmtree(home)
    resumed, ckpt = load_model(url)
    assert ckpt.info.step == 6 and ckpt.path.is_relative_to(home)
    straight, _ = load_model(tmp_path / "local")
    for (name, a), (_, b) in zip(
        resumed.state_dict().items(), straight.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    # a step folder by URL is that checkpoint; a URL with nothing published is refused
    _, older = load_model(f"{url}/checkpoints/step-00000004")
    assert older.info.step == 4
    with pytest.raises(CheckpointNotFoundError, match="no published"):
        load_model(f"{url}-missing")
