"""The trainer: exact DDP gradients, resume without drift, NaN stops, MLflow records, learning."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm_envs.dataset import ShardWriter, write_decision, write_index, write_ref_actions
from ldm_envs.spaces import BoxSpace, DiscreteSpace
from ldm_model.config import get_config
from ldm_model.data import WindowSampler
from ldm_model.model import LDM
from ldm_model.training import (
    NonFiniteLossError,
    ResumeError,
    TrainConfig,
    load_checkpoint,
    read_metrics,
    train,
)
from ldm_model.training.trainer import LossTerms
from tests.ldm_model.datasets import ShardMeta, episode_columns


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Two slow shared cores: one intra-op thread is several times faster than two here."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _config(root: Path, out: Path, **kw) -> TrainConfig:
    base = {
        "model": "tiny",
        "data_root": root,
        "batch_size": 4,
        "context": 8,
        "steps": 4,
        "log_every": 1,
        "checkpoint_every": 2,
        "mlflow": False,
        "out": out,
    }
    return TrainConfig(**{**base, **kw})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out).model_state


def make_learnable(root: Path, rows: int = 400, runs: int = 2) -> Path:
    """Box(4) -> Discrete(2) where the reference action is `obs[0] > 0`.

    `obs[0]` takes 8 values: each value is its own bin with its own embedding, so a budget of
    tens of steps sees every one of them often (the other dims are uniform noise).
    """
    for r in range(runs):
        rng = np.random.default_rng(r)
        path = root / "toy" / "Sign-v0" / f"run-{r}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = ShardMeta(
            library="toy",
            env_id="Sign-v0",
            candidate="ppo",
            seed=r,
            run_key=f"toy/Sign-v0/ppo/{r}",
            observation_space=BoxSpace(shape=(4,), low=-1.0, high=1.0),
            action_space=DiscreteSpace(n=2),
            environment_ref="venv-test",
            created=1_700_000_000.0,
        )
        obs = rng.uniform(-1, 1, (rows, 4)).astype(np.float32)
        obs[:, 0] = rng.choice([-0.9, -0.6, -0.3, -0.1, 0.1, 0.3, 0.6, 0.9], rows)
        with ShardWriter(path, meta) as writer:
            writer.append(
                obs=obs,
                action=rng.integers(0, 2, rows),
                reward=rng.standard_normal(rows).astype(np.float32),
                **episode_columns(rows, 50),
            )
        write_ref_actions(path, (obs[:, 0] > 0).astype(np.int64))
        write_decision(path, {"kept": True, "reason": "kept"})
    write_index(root)
    return root


# --------------------------------------------------------------------------------------------


def test_loss_terms_match_model_loss(tiny_dataset: Path) -> None:
    torch.manual_seed(0)
    model = LDM(get_config("tiny"))
    batch = WindowSampler(tiny_dataset, context=8).sample(3, 6)
    with torch.no_grad():
        ref = model.loss(batch)
        ce, hits, count = LossTerms(model)(batch)
    assert float(count) == float(ref.count)
    assert float(ce / count) == pytest.approx(float(ref.loss), rel=1e-5)
    assert float(hits / count) == pytest.approx(float(ref.accuracy), abs=1e-6)


def test_resume_after_a_crash_ends_with_the_same_weights(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train(_config(tiny_dataset, tmp_path / "whole"), progress=False)
    assert whole.step == 4 and [r["step"] for r in whole.history] == [1, 2, 3, 4]

    # crash in step 3 (index 2): the last checkpoint is step 2
    from ldm_model.training.trainer import Trainer

    real_step = Trainer.step

    def crash(self, step, batch):
        if step == 2:
            raise RuntimeError("killed")
        return real_step(self, step, batch)

    monkeypatch.setattr(Trainer, "step", crash)
    with pytest.raises(RuntimeError, match="killed"):
        train(_config(tiny_dataset, tmp_path / "crashed"), progress=False)
    monkeypatch.setattr(Trainer, "step", real_step)
    resumed = train(_config(tiny_dataset, tmp_path / "crashed"), progress=False)
    assert resumed.start_step == 2 and resumed.step == 4

    # a clean pause after one step, then two resumptions
    paused = train(_config(tiny_dataset, tmp_path / "paused"), stop_after=1, progress=False)
    assert paused.paused and paused.step == 1
    train(_config(tiny_dataset, tmp_path / "paused"), stop_after=2, progress=False)
    last = train(_config(tiny_dataset, tmp_path / "paused"), progress=False)
    assert last.start_step == 3 and not last.paused

    expected = _weights(tmp_path / "whole")
    for run in ("crashed", "paused"):
        got = _weights(tmp_path / run)
        for key, value in expected.items():
            assert torch.equal(got[key], value), (run, key)
        # same loss curve too (records past the crash were dropped and redone)
        assert [r["loss"] for r in read_metrics(tmp_path / run)] == [
            r["loss"] for r in read_metrics(tmp_path / "whole")
        ]
    # nothing left to do: returns at once
    again = train(_config(tiny_dataset, tmp_path / "whole"), progress=False)
    assert again.step == 4 and again.history == []
    # more steps continue the same run
    more = train(_config(tiny_dataset, tmp_path / "whole", steps=5), progress=False)
    assert more.start_step == 4 and more.step == 5


@pytest.mark.parametrize("dataset", ["tiny_dataset", "tiny_image_dataset"])
def test_micro_batches_give_the_same_updates(
    dataset: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # with images: 7x7x3 windows travel as image groups that `Batch.select` splits
    tiny_dataset = request.getfixturevalue(dataset)
    whole = train(_config(tiny_dataset, tmp_path / "whole", steps=3), progress=False)
    micro = train(_config(tiny_dataset, tmp_path / "micro", steps=3, micro_batch=3), progress=False)
    assert np.allclose(
        [r["loss"] for r in micro.history], [r["loss"] for r in whole.history], rtol=1e-5
    )
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "micro")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_resume_refuses_other_options(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(tiny_dataset, out, steps=2), progress=False)
    with pytest.raises(ResumeError, match=r"lr: 0\.00025 -> 0\.001") as err:
        train(_config(tiny_dataset, out, steps=4, lr=1e-3), progress=False)
    assert str(out) in str(err.value)
    other_model = get_config("tiny").model_copy(update={"name": "tiny-4", "token_dim": 4})
    with pytest.raises(ResumeError, match=r"'tiny'.*'tiny-4'.*token_dim"):
        train(_config(tiny_dataset, out, model=other_model), progress=False)
    # a corrupt latest checkpoint is named, with what to do
    (out / "checkpoints" / "step-00000002" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ResumeError, match=r"model\.safetensors.*Delete"):
        train(_config(tiny_dataset, out, steps=4), progress=False)


def _mlflow_run(run_id: str):
    from mlflow.tracking import MlflowClient

    from ldm_envs.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    return client, client.get_run(run_id)


def test_nan_loss_stops_with_step_and_envs(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = LossTerms.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        ce, hits, count = real(self, batch)
        calls["n"] += 1
        if calls["n"] == 2:
            ce = ce * float("nan")
        return ce, hits, count

    monkeypatch.setattr(LossTerms, "forward", poisoned)
    config = _config(tiny_dataset, tmp_path / "nan", mlflow=True, seed=7)
    with pytest.raises(NonFiniteLossError) as err:
        train(config, progress=False)
    exc = err.value
    assert exc.step == 1 and len(exc.env_ids) == 4
    assert set(exc.env_ids) <= {"VecDiscrete-v0", "VecBox-v0"}
    assert "step 1" in str(exc) and exc.env_ids[0] in str(exc)
    # the weights were not touched by the bad step: the checkpoint-less run left nothing
    assert not (tmp_path / "nan" / "checkpoints").exists()
    from ldm_envs.tracking import find_run

    run = find_run("model", "all", config.run_key())
    assert run is not None and run.info.status == "FAILED"
    assert "non-finite loss" in run.data.tags["ldm.error"]


def test_mlflow_records_the_run(tiny_dataset: Path, tmp_path: Path) -> None:
    config = _config(
        tiny_dataset, tmp_path / "tracked", mlflow=True, libraries=["toy"], log_every=2
    )
    first = train(config, stop_after=2, progress=False)
    client, run = _mlflow_run(first.mlflow_run_id)
    assert run.info.status == "KILLED" and run.data.tags["ldm.paused_at_step"] == "2"
    assert "ldm.error" not in run.data.tags
    done = train(config, progress=False)
    assert done.mlflow_run_id == first.mlflow_run_id  # the same run, reopened
    client, run = _mlflow_run(done.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert "ldm.paused_at_step" not in run.data.tags
    tags, params = run.data.tags, run.data.params
    assert tags["ldm.stage"] == "model" and tags["ldm.library"] == "toy"
    assert tags["ldm.checkpoint"] == str(done.checkpoint)
    assert tags["ldm.dataset"] == str(tiny_dataset.resolve())
    assert len(tags["ldm.dataset.index_sha256"]) == 64
    assert params["model.hidden_size"] == "64" and params["lr"] == "0.00025"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [2, 4]
    for name in ("accuracy", "lr", "grad_norm", "transitions_per_s"):
        assert name in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "dataset_index", "loss_curve.png"} <= arts
    ckpt_files = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/model.safetensors" in ckpt_files
    assert "checkpoint/checkpoint.json" in ckpt_files
    index_files = {a.path for a in client.list_artifacts(run.info.run_id, "dataset_index")}
    assert "dataset_index/runs.parquet" in index_files
    assert load_checkpoint(done.checkpoint).info.mlflow_run_id == run.info.run_id
    assert (tmp_path / "tracked" / "loss_curve.png").is_file()


def test_tiny_learns_a_simple_rule(tmp_path: Path) -> None:
    root = make_learnable(tmp_path / "data")
    config = TrainConfig(
        model="tiny",
        data_root=root,
        batch_size=16,
        context=16,
        steps=60,
        lr=1e-3,
        log_every=10,
        checkpoint_every=1000,
        mlflow=False,
        out=tmp_path / "run",
    )
    result = train(config, progress=False)
    curve = [r["accuracy"] for r in result.history]
    assert curve[-1] > 0.9, curve
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 4


@pytest.mark.slow  # trains in two spawned processes: ~20 s each on 2 cores
@pytest.mark.parametrize("dataset", ["tiny_dataset", "tiny_image_dataset"])
def test_ddp_two_processes_match_one(
    dataset: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """torchrun with 2 gloo processes gives the loss curve of 1 process on the same batch.

    With images, some steps give one rank no image window: it does not run the image encoder
    (DDP's find_unused_parameters), the other resizes its 7x7x3 groups in the model.
    """
    tiny_dataset = request.getfixturevalue(dataset)
    args = [
        "train",
        "--dataset",
        str(tiny_dataset),
        "--batch-size",
        "8",
        "--context",
        "16",
        "--steps",
        "6",
        "--log-every",
        "1",
        "--checkpoint-every",
        "6",
        "--no-track",
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ldm_model.cli",
        *args,
        "--out",
        str(tmp_path / "ddp"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = train(
        TrainConfig(
            model="tiny",
            data_root=tiny_dataset,
            batch_size=8,
            context=16,
            steps=6,
            log_every=1,
            checkpoint_every=6,
            mlflow=False,
            device="cpu",
            out=tmp_path / "single",
        ),
        progress=False,
    )
    ddp = read_metrics(tmp_path / "ddp")
    assert [r["step"] for r in ddp] == [1, 2, 3, 4, 5, 6]
    assert np.allclose(
        [r["loss"] for r in ddp], [r["loss"] for r in single.history], rtol=1e-4, atol=0
    ), (ddp, single.history)
    assert [r["transitions"] for r in ddp] == [r["transitions"] for r in single.history]
    info = load_checkpoint(tmp_path / "ddp").info
    assert info.world_size == 2 and info.step == 6
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst
    assert not math.isnan(worst)
    assert json.loads((tmp_path / "ddp" / "train_config.json").read_text())["batch_size"] == 8


def _real_pairs(batch) -> int:
    """Real (step, action dim) pairs of a batch: what its loss is averaged over."""
    pairs = batch.act_mask[:, None, :].expand(*batch.shape, -1)
    if batch.loss_mask is not None:
        pairs = pairs & batch.loss_mask[:, :, None]
    return int(pairs.sum())


@pytest.mark.slow  # trains in two spawned processes
def test_ddp_matches_one_process_when_ranks_hold_unequal_real_counts(tmp_path: Path) -> None:
    """Rank 0 and rank 1 hold very different numbers of real action dims and steps (a 24-dim
    Box action beside a 1-dim Discrete one, the latter in 6-row runs, so its windows are mostly
    padding), yet the gradient is that of the global batch's mean loss: a rank dividing its sum
    by its own count would weigh the other rank's few pairs many times over."""
    from tests.ldm_model.datasets import EnvSpec, make_dataset

    root = tmp_path / "data"
    make_dataset(
        root,
        envs=(
            EnvSpec(
                "toy",
                "Wide-v0",
                BoxSpace(shape=(3,), low=-1.0, high=1.0),
                BoxSpace(shape=(24,), low=-1.0, high=1.0),
            ),
            EnvSpec(
                "toy",
                "Short-v0",
                BoxSpace(shape=(4,), low=-1.0, high=1.0),
                DiscreteSpace(n=3),
                runs=(6, 6, 6),
                episode_length=3,
            ),
        ),
    )
    steps, batch_size, context = 4, 8, 16
    sampler = WindowSampler(root, context=context)
    counts = [
        [_real_pairs(sampler.sample(s, batch_size, rank=r, world=2)) for r in (0, 1)]
        for s in range(steps)
    ]
    sampler.close()
    # the ranks' shares differ at least three-fold at some steps
    assert sum(max(c) >= 3 * max(min(c), 1) for c in counts) >= 2, counts

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ldm_model.cli",
        "train",
        "--dataset",
        str(root),
        "--batch-size",
        str(batch_size),
        "--context",
        str(context),
        "--steps",
        str(steps),
        "--log-every",
        "1",
        "--checkpoint-every",
        str(steps),
        "--no-track",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = train(
        _config(
            root,
            tmp_path / "single",
            batch_size=batch_size,
            context=context,
            steps=steps,
            checkpoint_every=steps,
            device="cpu",
        ),
        progress=False,
    )
    ddp = read_metrics(tmp_path / "ddp")
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(
            [r[key] for r in ddp], [r[key] for r in single.history], rtol=1e-5, err_msg=key
        )
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
