"""Benchmark LDM training: CPU processes (1 vs 2, the default), or one device's tokens/s and MFU.

CPU processes (no --device; the default):

    uv run python tools/bench_train.py [--steps 40] [--batch-size 32] [--context 64]
        [--model tiny] [--dir DIR] [--json FILE]

Writes a classic-control-like synthetic dataset (CartPole-like Box(4)/Discrete(2), Pendulum-like
Box(3)/Box(1), Acrobot-like Box(6)/Discrete(3); reference action a simple function of the
observation), then runs `ldm-model train` twice on it with the same global batch: one process
(torch's default threads), and `torchrun --nproc_per_node 2` (gloo, one thread per process).
Throughput is real (unpadded) transitions of the global batch per second of training, the
median over the logged intervals after the first (which holds start-up and warm-up).
Loss curves of both runs are printed side by side: DDP must reproduce the single-process curve.

One device (--device cuda, or cpu for a smoke run):

    PYTHONPATH=packages/ldm-envs/src:packages/ldm-model/src python3 tools/bench_train.py \
        --device cuda --models 32M,308M --context 2048 [--batch-size 4] [--steps 20]
        [--warmup 5] [--variants fp32-eager,bf16+sdpa+fused,bf16+flash+fused+compile]
        [--peak-tflops T] [--json FILE]

Each model and variant trains `--warmup` steps (not timed: compilation, allocator, cuDNN
heuristics) then `--steps` timed ones (`torch.cuda.synchronize` around them) on a synthetic batch
built on the device: no dataset, no DataLoader, so the figure is the training step's alone. The
step is the trainer's own (`ldm_model.training.trainer.TrainStep`: the same model, AdamW
construction, autocast, loss and clipping). The batch holds windows of `--context` transitions,
every action dim real in one window (the union a mixed-env batch has), no images.

Throughput is in tokens/s, one token being one transition. Model FLOPs per token follow PaLM
(Chowdhery et al. 2022, appendix B):

    flops/token = 6 * N + 12 * L * H * T

N: parameters of the matmuls a token goes through (the backbone's linear layers, the meta-token
merge, the decoder rows of the action dims decoded; not embedding lookups, not the unused
image encoder); L layers, H the hidden size, T the context. The attention term counts the full
T x T score matrix, as PaLM does, though a causal kernel computes about half of it. Achieved
TFLOP/s = flops/token * tokens/s; MFU = achieved / the device's dense bf16 peak (`--peak-tflops`,
else `PEAK_TFLOPS` by device name: H100/H200 SXM 989, A100 312), for every variant, fp32 ones
included. fp32 variants run true fp32 (TF32 off, torch's default, as in training).

This mode imports torch, transformers, numpy, pydantic and the project's sources only (the
GPU machine has nothing else): no polars, gymnasium, MLflow, SB3. Figures go into
packages/ldm-model/README.md.
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
from typing import Any

import numpy as np


def make_dataset(root: Path, rows: int = 20_000) -> Path:
    """Three classic-control-like envs, one run each, relabeled and kept."""
    from ldm_envs.dataset import (
        ShardMeta,
        ShardWriter,
        write_decision,
        write_index,
        write_ref_actions,
    )
    from ldm_envs.spaces import BoxSpace, DiscreteSpace

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


# --------------------------------------------------------------------------------------------
# One device: tokens/s and MFU of the training step on synthetic batches

#: Dense bf16 peak TFLOP/s by device name (first substring match), for MFU.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)

#: Variant name -> TrainConfig execution options.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32-eager": {
        "precision": "fp32",
        "attention": "eager",
        "fused_adamw": False,
        "compile": False,
    },
    "bf16+sdpa+fused": {
        "precision": "bf16",
        "attention": "sdpa",
        "fused_adamw": True,
        "compile": False,
    },
    "bf16+flash+fused+compile": {
        "precision": "bf16",
        "attention": "flash",
        "fused_adamw": True,
        "compile": True,
    },
}
DEVICE_DEFAULTS = {"models": "32M,308M", "context": 2048, "batch_size": 4, "steps": 20}


def peak_tflops(device: Any, given: float | None) -> float | None:
    """The dense bf16 peak for MFU: `given`, else by CUDA device name; None on the CPU."""
    import torch

    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value
    sys.exit(f"no bf16 peak known for {name!r}: give --peak-tflops (dense bf16 TFLOP/s)")


def synthetic_batch(model_config: Any, batch: int, context: int, *, seed: int = 0) -> Any:
    """`batch` windows of `context` transitions, shaped as the sampler's, on the CPU.

    Observation widths 1..obs_dims and action widths 1..act_dims vary by window; window 0
    holds every action dim, so the decoder runs all its rows (a mixed-env batch does). Odd
    windows have discrete actions, even ones continuous. No images, no padding.
    """
    import torch

    from ldm_model.batch import Batch

    c = model_config
    g = torch.Generator().manual_seed(seed)
    b, t = batch, context
    n_obs = torch.randint(1, c.obs_dims + 1, (b,), generator=g)
    n_act = torch.randint(1, c.act_dims + 1, (b,), generator=g)
    n_act[0] = c.act_dims
    obs_mask = torch.arange(c.obs_dims)[None] < n_obs[:, None]
    act_mask = torch.arange(c.act_dims)[None] < n_act[:, None]
    discrete = (torch.arange(b) % 2 == 1)[:, None].expand(b, c.act_dims).clone()
    classes = torch.randint(2, 7, (b, 1), generator=g).expand(b, c.act_dims)
    act_high = torch.where(discrete, classes - 1, c.n_bins - 1).long()
    uniform = torch.rand((b, t, c.act_dims), generator=g) * 2 - 1
    categorical = (torch.rand((b, t, c.act_dims), generator=g) * classes[:, None]).floor()
    target = torch.where(discrete[:, None], categorical, uniform) * act_mask[:, None]
    prev_valid = torch.ones(b, t, dtype=torch.bool)
    prev_valid[:, 0] = False
    prev_action = torch.zeros_like(target)
    prev_action[:, 1:] = target[:, :-1]
    return Batch(
        obs=(torch.rand((b, t, c.obs_dims), generator=g) * 2 - 1) * obs_mask[:, None],
        obs_mask=obs_mask,
        obs_discrete=torch.zeros(b, c.obs_dims, dtype=torch.bool),
        prev_action=prev_action,
        prev_reward=torch.randn((b, t), generator=g) * prev_valid,
        prev_done=(torch.rand((b, t), generator=g) < 0.005) & prev_valid,
        prev_valid=prev_valid,
        act_mask=act_mask,
        act_discrete=discrete,
        act_low=torch.zeros(b, c.act_dims, dtype=torch.long),
        act_high=act_high,
        target=target,
        loss_mask=torch.ones(b, t, dtype=torch.bool),
    )


def matmul_parameters(ldm: Any, decoded_dims: int) -> int:
    """N of the FLOPs formula: weights of the matmuls a token goes through (biases apart).

    The backbone's linear layers, the meta-token merge, and the decoder's rows of the
    `decoded_dims` action dims decoded; not the embedding tables, not the image encoder.
    """
    from torch import nn

    backbone = sum(m.weight.numel() for m in ldm.backbone.modules() if isinstance(m, nn.Linear))
    decoder = ldm.decoder.weight.numel() * decoded_dims // ldm.config.act_dims
    return backbone + ldm.merge.weight.numel() + decoder


def flops_per_token(ldm: Any, decoded_dims: int, context: int) -> float:
    """Training FLOPs per token: 6 N + 12 L H T (PaLM, attention counted over the full T x T)."""
    c = ldm.config
    return (
        6.0 * matmul_parameters(ldm, decoded_dims) + 12.0 * c.num_layers * c.hidden_size * context
    )


def bench_variant(
    model: str, variant: str, args: argparse.Namespace, device: Any, peak: float | None
) -> dict[str, Any]:
    """Warm up, then time `args.steps` training steps of one model under one variant."""
    import torch

    from ldm_model.training.config import TrainConfig
    from ldm_model.training.distributed import DistContext
    from ldm_model.training.trainer import TrainStep

    config = TrainConfig(
        model=model,
        batch_size=args.batch_size,
        context=args.context,
        device=device.type,
        mlflow=False,
        **VARIANTS[variant],
    )
    ctx = DistContext(rank=0, world=1, local_rank=0, device=device, backend=None)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    engine = TrainStep(config, ctx=ctx, has_images=False)
    batch = synthetic_batch(config.resolved_model(), args.batch_size, config.window).to(device)
    decoded = int(batch.act_mask.any(dim=0).sum())

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        engine(batch)
    sync()
    t1 = time.perf_counter()
    losses = [engine(batch)["loss"] for _ in range(args.steps)]
    sync()
    seconds = time.perf_counter() - t1
    tokens = args.batch_size * config.window * args.steps
    rate = tokens / seconds
    fpt = flops_per_token(engine.ldm, decoded, config.window)
    tflops = fpt * rate / 1e12
    return {
        "model": model,
        "variant": variant,
        **VARIANTS[variant],
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "parameters": engine.num_parameters,
        "matmul_parameters": matmul_parameters(engine.ldm, decoded),
        "batch_size": args.batch_size,
        "context": config.window,
        "steps": args.steps,
        "warmup": args.warmup,
        "setup_and_warmup_s": t1 - t0,
        "step_s": seconds / args.steps,
        "tokens_per_s": rate,
        "flops_per_token": fpt,
        "achieved_tflops": tflops,
        "peak_tflops": peak,
        "mfu": tflops / peak if peak else None,
        "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def device_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every model under every variant, printed and written to `--json` as each ends.

    A failing one (out of memory, a kernel missing) is recorded with its error and the others
    still run; a run cut short keeps what it measured.
    """
    import gc

    import torch

    from ldm_envs.atomic import atomic_write_bytes

    for key, value in DEVICE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    models = [m for m in args.models.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but CUDA is not available here")
    peak = peak_tflops(device, args.peak_tflops)
    print(
        f"torch {torch.__version__}, device {device}, peak {peak} TFLOP/s; batch "
        f"{args.batch_size} x {args.context}, {args.warmup} warm-up + {args.steps} timed steps",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for model in models:
        for variant in variants:
            try:
                row = bench_variant(model, variant, args, device, peak)
            except Exception as exc:  # recorded; the others still run
                row = {"model": model, "variant": variant, "error": f"{type(exc).__name__}: {exc}"}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                atomic_write_bytes(args.json, json.dumps(results, indent=1).encode())
    print(
        f"\n{'model':>6}  {'variant':<26} {'tokens/s':>10}  {'TFLOP/s':>8}  {'MFU':>6}  {'GiB':>6}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['model']:>6}  {r['variant']:<26} error: {r['error'][:120]}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['max_memory_gib']:.1f}" if r["max_memory_gib"] is not None else "-"
        print(
            f"{r['model']:>6}  {r['variant']:<26} {r['tokens_per_s']:>10,.0f}  "
            f"{r['achieved_tflops']:>8.2f}  {mfu:>6}  {mem:>6}"
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--device",
        default=None,
        help="cuda (or cpu, a smoke run): one process on synthetic batches, tokens/s and MFU "
        "per model and variant; default: the CPU 1 vs 2 processes benchmark",
    )
    p.add_argument("--model", default="tiny", help="CPU processes mode: the model")
    p.add_argument("--models", default=None, help="device mode: comma-separated (32M,308M)")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"device mode: comma-separated, of {', '.join(VARIANTS)}",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps (40 / device 20)")
    p.add_argument("--warmup", type=int, default=5, help="device mode: untimed first steps")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=None, help="windows per step (32 / 4)")
    p.add_argument("--context", type=int, default=None, help="transitions per window (64 / 2048)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device mode: bf16 peak")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.device is not None:
        device_main(args)
        return
    args.steps = args.steps or 40
    args.batch_size = args.batch_size or 32
    args.context = args.context or 64
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
