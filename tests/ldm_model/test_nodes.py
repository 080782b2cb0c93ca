"""Training across nodes: two torchrun agents (c10d rendezvous, gloo), a lost agent, FSDP.

The two "nodes" are two `torchrun` agents on this machine that meet through a c10d rendezvous
on 127.0.0.1, as two hosts would through the first one's address; with a store URL as the
dataset, each has its own data home, so they share nothing but the store. Every multi-process test
compares against `train` in this process on the same config: DDP and FSDP must give its loss
curve and its weights within float tolerance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm_envs.store import publish_dataset
from ldm_model.training import TrainConfig, TrainResult, read_metrics, train
from ldm_model.training.checkpoint import list_checkpoints, load_checkpoint, load_model
from tests.ldm_envs.store_server import S3_ENV, export_env, make_bucket, moto_server

STEPS, BATCH, CONTEXT, EVERY = 12, 8, 16, 4
TRAIN_ARGS = [
    "train",
    "--batch-size",
    str(BATCH),
    "--context",
    str(CONTEXT),
    "--log-every",
    "1",
    "--checkpoint-every",
    str(EVERY),
    "--no-track",
    "--no-progress",
    "--device",
    "cpu",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Two slow shared cores: one intra-op thread is several times faster than two here."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def single(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The reference: the same run in this one process."""
    out = tmp_path_factory.mktemp("single")
    return train(
        TrainConfig(
            model="tiny",
            data_root=tiny_dataset,
            batch_size=BATCH,
            context=CONTEXT,
            steps=STEPS,
            log_every=1,
            checkpoint_every=EVERY,
            mlflow=False,
            device="cpu",
            out=out,
        ),
        progress=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _agent(dataset: Path | str, out: Path, port: int, rdzv_id: str, *extra: str) -> list[str]:
    """One node's agent: `torchrun --nnodes 2 --nproc-per-node 1` with a c10d rendezvous."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        rdzv_id,
        "--max-restarts",
        "0",
        "-m",
        "ldm_model.cli",
        *TRAIN_ARGS,
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        *extra,
    ]


def _start_agents(
    dataset: Path | str,
    out: Path,
    *extra: str,
    envs: tuple[dict[str, str], dict[str, str]] = (ENV, ENV),
) -> list[subprocess.Popen[str]]:
    """The two nodes' agents; `envs` gives each its own environment (its own data home)."""
    port, rdzv_id = _free_port(), f"ldm-{uuid.uuid4().hex[:8]}"
    return [
        subprocess.Popen(
            _agent(dataset, out, port, rdzv_id, *extra),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for env in envs
    ]


def _finish(agents: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    logs = [a.communicate(timeout=timeout)[0] for a in agents]
    for agent, log in zip(agents, logs, strict=True):
        assert agent.returncode == 0, log[-4000:]
    return logs


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the agent and the worker it spawned), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _kill_node(agent: subprocess.Popen[str]) -> None:
    """SIGKILL the agent and its worker at once, as a node that loses power."""
    for pid in _tree(agent.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _assert_same_run(out: Path, single: TrainResult, steps: int = STEPS) -> None:
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert np.allclose(
        [r["loss"] for r in records],
        [r["loss"] for r in single.history[:steps]],
        rtol=1e-4,
        atol=0,
    ), (records, single.history)
    a = load_checkpoint(out).model_state
    b = load_checkpoint(single.out / "checkpoints" / f"step-{steps:08d}").model_state
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst


@pytest.mark.slow  # two agents and their workers: ~35 s on 2 cores
def test_two_agents_match_one_process(
    tiny_dataset: Path, single: TrainResult, tmp_path: Path
) -> None:
    """`torchrun --nnodes 2` with a c10d rendezvous trains the one-process run."""
    out = tmp_path / "nodes"
    _finish(_start_agents(tiny_dataset, out, "--steps", str(STEPS)))
    _assert_same_run(out, single)
    info = load_checkpoint(out).info
    assert info.world_size == 2 and info.step == STEPS


@pytest.mark.slow  # a moto S3 server and two agents: ~45 s on 2 cores
def test_two_agents_read_the_dataset_from_a_store_url(
    tiny_dataset: Path, single: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes that share no folder: each pulls the shards from the store into its own cache."""
    with moto_server(tmp_path) as endpoint:
        export_env(monkeypatch, endpoint)
        url = f"s3://{make_bucket(endpoint)}/autorl"
        publish_dataset(tiny_dataset, url)
        homes = [tmp_path / "node-0", tmp_path / "node-1"]
        s3 = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
        node_env = [{**ENV, **s3, "LDM_HOME": str(home)} for home in homes]
        out = tmp_path / "nodes"
        envs = (node_env[0], node_env[1])
        _finish(_start_agents(url, out, "--steps", str(STEPS), envs=envs))
    _assert_same_run(out, single)
    shards = sorted(p.name for p in tiny_dataset.rglob("*.arrow"))
    for home in homes:  # each node's own copy of every shard the training samples
        assert sorted(p.name for p in (home / "cache").rglob("*.arrow")) == shards


@pytest.mark.slow  # four agents in two launches: ~60 s on 2 cores
def test_a_lost_agent_fails_the_run_and_the_rerun_resumes(
    tiny_dataset: Path, single: TrainResult, tmp_path: Path
) -> None:
    """A node killed after a checkpoint: the other exits at once (no hang), every checkpoint
    left is whole, and the same command resumes and ends on the uninterrupted run's weights."""
    out = tmp_path / "nodes"
    agents = _start_agents(tiny_dataset, out, "--steps", str(STEPS))
    first = out / "checkpoints" / f"step-{EVERY:08d}"
    deadline = time.monotonic() + 180
    while not first.exists():
        assert all(a.poll() is None for a in agents), "an agent ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in 180 s"
        time.sleep(0.1)
    _kill_node(agents[1])
    killed = time.monotonic()
    log = agents[0].communicate(timeout=120)[0]
    waited = time.monotonic() - killed
    agents[1].wait(timeout=30)
    assert agents[0].returncode != 0, log[-3000:]
    assert waited < 60, waited
    saved = list_checkpoints(out)
    assert saved and max(int(p.name.split("-")[1]) for p in saved) < STEPS, saved
    for folder in saved:
        load_checkpoint(folder)  # verifies every file's sha256: none is half-written

    logs = _finish(_start_agents(tiny_dataset, out, "--steps", str(STEPS)))
    assert any("resuming at step" in text for text in logs), logs[0][-3000:]
    _assert_same_run(out, single)


@pytest.mark.slow  # three torchrun launches of 2 processes: ~75 s on 2 cores
def test_fsdp_matches_ddp_and_its_checkpoint_loads_in_one_process(
    tiny_dataset: Path, single: TrainResult, tmp_path: Path
) -> None:
    """FSDP (paused and resumed half-way) gives DDP's losses and weights; its checkpoints are
    full state dicts that one process loads, evaluates and resumes from."""
    standalone = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "ldm_model.cli",
        *TRAIN_ARGS,
        "--dataset",
        str(tiny_dataset),
        "--steps",
        str(2 * EVERY),
    ]

    def launch(out: Path, *extra: str) -> str:
        proc = subprocess.run(
            [*standalone, "--out", str(out), *extra],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stderr

    launch(tmp_path / "ddp")
    launch(tmp_path / "fsdp", "--parallel", "fsdp", "--stop-after", str(EVERY))
    assert "resuming at step 4" in launch(tmp_path / "fsdp", "--parallel", "fsdp")
    ddp, fsdp = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "fsdp")
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == list(range(1, 2 * EVERY + 1))
    assert np.allclose([r["loss"] for r in fsdp], [r["loss"] for r in ddp], rtol=1e-4, atol=0)
    _assert_same_run(tmp_path / "fsdp", single, steps=2 * EVERY)

    # one process: the policy's loader, the optimizer state, and a resume under "fsdp"
    model, ckpt = load_model(tmp_path / "fsdp")
    assert ckpt.info.train.parallel == "fsdp" and ckpt.info.world_size == 2
    ddp_ckpt = load_checkpoint(tmp_path / "ddp")
    weights = model.state_dict()
    assert max(float((weights[k] - v).abs().max()) for k, v in ddp_ckpt.model_state.items()) < 1e-4
    saved, reference = ckpt.optimizer_state(), ddp_ckpt.optimizer_state()
    assert saved["state"].keys() == reference["state"].keys()
    for pid, values in reference["state"].items():
        for key, value in values.items():
            assert torch.allclose(saved["state"][pid][key], value, atol=1e-5), (pid, key)
    resumed = train(
        ckpt.info.train.model_copy(update={"steps": STEPS}), progress=False, console=None
    )
    assert resumed.start_step == 2 * EVERY and resumed.step == STEPS
    assert np.allclose(
        [r["loss"] for r in resumed.history],
        [r["loss"] for r in single.history[2 * EVERY :]],
        rtol=1e-4,
        atol=0,
    )


def test_parallel_is_an_execution_option(tiny_dataset: Path) -> None:
    """DDP or FSDP decides how the run is carried out, not its weights: same run key, and a
    run begun under one resumes under the other."""
    ddp = TrainConfig(data_root=tiny_dataset, parallel="ddp")
    fsdp = TrainConfig(data_root=tiny_dataset, parallel="fsdp")
    assert ddp.run_key() == fsdp.run_key()
    assert ddp.resume_differences(fsdp) == {}
    with pytest.raises(ValueError, match="parallel"):
        TrainConfig(parallel="zero3")
