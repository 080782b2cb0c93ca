"""Benchmark: LDM training throughput (transitions/s) of the tiny config on CPU, 1 vs 2 processes.

Usage: uv run python tools/bench_train.py [--steps 40] [--batch-size 32] [--context 64]
       [--model tiny] [--dir DIR] [--json FILE]

Writes a classic-control-like synthetic dataset (CartPole-like Box(4)/Discrete(2), Pendulum-like
Box(3)/Box(1), Acrobot-like Box(6)/Discrete(3); reference action a simple function of the
observation), then runs `ldm-model train` twice on it with the same global batch: one process
(torch's default threads), and `torchrun --nproc_per_node 2` (gloo, one thread per process).
Throughput is real (unpadded) transitions of the global batch per second of training, the
median over the logged intervals after the first (which holds start-up and warm-up).
Loss curves of both runs are printed side by side: DDP must reproduce the single-process curve.
Figures go into packages/ldm-model/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ldm_envs.dataset import (
    ShardMeta,
    ShardWriter,
    write_decision,
    write_index,
    write_ref_actions,
)
from ldm_envs.spaces import BoxSpace, DiscreteSpace


def make_dataset(root: Path, rows: int = 20_000) -> Path:
    """Three classic-control-like envs, one run each, relabeled and kept."""
    envs = [
        ("CartPoleLike-v0", BoxSpace(shape=(4,), low=-5.0, high=5.0), DiscreteSpace(n=2)),
        (
            "PendulumLike-v0",
            BoxSpace(shape=(3,), low=-8.0, high=8.0),
            BoxSpace(shape=(1,), low=-2.0, high=2.0),
        ),
        ("AcrobotLike-v0", BoxSpace(shape=(6,), low=-10.0, high=10.0), DiscreteSpace(n=3)),
    ]
    for e, (env_id, obs_space, act_space) in enumerate(envs):
        rng = np.random.default_rng(e)
        path = root / "bench" / env_id / "run-0.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        obs = rng.uniform(-1, 1, (rows, obs_space.shape[0])).astype(np.float32)
        if isinstance(act_space, DiscreteSpace):
            ref = np.clip(((obs[:, 0] + 1) * act_space.n / 2).astype(np.int64), 0, act_space.n - 1)
            action = rng.integers(0, act_space.n, rows)
        else:
            ref = np.clip(obs[:, :1] * 2, -2, 2).astype(np.float32)
            action = rng.uniform(-2, 2, (rows, 1)).astype(np.float32)
        step = np.arange(rows) % 200
        meta = ShardMeta(
            library="bench",
            env_id=env_id,
            candidate="ppo",
            seed=0,
            run_key=f"bench/{env_id}/ppo/0",
            observation_space=obs_space,
            action_space=act_space,
            environment_ref="bench",
            created=time.time(),
        )
        with ShardWriter(path, meta) as writer:
            writer.append(
                obs=obs,
                action=action,
                reward=rng.standard_normal(rows).astype(np.float32),
                episode=np.arange(rows) // 200,
                step=step,
                terminated=step == 199,
                truncated=np.zeros(rows, bool),
            )
        write_ref_actions(path, ref)
        write_decision(path, {"kept": True, "reason": "kept"})
    write_index(root)
    return root


def run(
    world: int, args: argparse.Namespace, root: Path, out: Path, threads: int | None = None
) -> dict:
    """One `ldm-model train` (world 1) or torchrun (world > 1) launch; its throughput and loss.

    `threads`: OMP_NUM_THREADS per process (None: torch's default for one process, cores /
    world for several).
    """
    train_args = [
        "train",
        "--model",
        args.model,
        "--root",
        str(root),
        "--batch-size",
        str(args.batch_size),
        "--context",
        str(args.context),
        "--steps",
        str(args.steps),
        "--log-every",
        str(args.log_every),
        "--checkpoint-every",
        str(args.steps),
        "--no-mlflow",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if world == 1:
        cmd = [sys.executable, "-m", "ldm_model.cli", *train_args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(world),
            "-m",
            "ldm_model.cli",
            *train_args,
        ]
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"world {world} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["transitions_per_s"] for r in records[1:]] or [records[0]["transitions_per_s"]]
    return {
        "world": world,
        "threads_per_process": env.get("OMP_NUM_THREADS", "default"),
        "transitions_per_s": statistics.median(rates),
        "loss": [r["loss"] for r in records],
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ldm-bench-train-", dir=args.dir) as tmp:
        tmp_path = Path(tmp)
        root = make_dataset(tmp_path / "data", rows=args.rows)
        results = [
            run(1, args, root, tmp_path / "out-1"),
            run(1, args, root, tmp_path / "out-1-1", threads=1),
            run(2, args, root, tmp_path / "out-2"),
        ]
    print(
        f"\nLDM training throughput, config {args.model}, CPU ({os.cpu_count()} cores), global "
        f"batch {args.batch_size} x {args.context} transitions, {args.steps} steps"
    )
    print(f"{'processes':>9}  {'threads/proc':>12}  {'transitions/s':>13}  {'wall s':>7}")
    for r in results:
        print(
            f"{r['world']:>9}  {r['threads_per_process']:>12}  "
            f"{r['transitions_per_s']:>13,.0f}  {r['wall_s']:>7.1f}"
        )
    one, _, two = results
    best_one = max(results[:2], key=lambda r: r["transitions_per_s"])
    print(
        f"2 processes / best 1 process: "
        f"{two['transitions_per_s'] / best_one['transitions_per_s']:.2f}x"
    )
    diff = max(abs(a - b) / abs(a) for a, b in zip(one["loss"], two["loss"], strict=True))
    print(f"loss curves (every {args.log_every} steps), largest relative difference {diff:.2e}:")
    for i, (a, b) in enumerate(zip(one["loss"], two["loss"], strict=True)):
        print(f"  step {(i + 1) * args.log_every:>5}: 1 proc {a:.5f}   2 procs {b:.5f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
