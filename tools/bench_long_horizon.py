r"""Benchmark: LDMPolicy cache modes past the context, on real envs, with a trained checkpoint.

Usage: uv run python tools/bench_long_horizon.py --checkpoint PATH
       [--env classic-control:CartPole-v1 --env classic-control:Acrobot-v1]
       [--modes ring,chunked,exact] [--refresh 0.25] [--episodes 10] [--rollouts 2] [--seed 0]
       [--context N] [--threads 1] [--latency-contexts 64,2048] [--latency-envs 16]
       [--latency-steps 100] [--latency-repeats 3] [--json PATH]

Episodes run far past a `tiny` model's context of 64 transitions (CartPole up to 500 steps,
Acrobot 500, LunarLander 1,000; the context is kept across episodes, so a rollout of 10
episodes is thousands of steps). The modes (ldm_model.policy, "Long horizons"):

* `ring`: slides the KV cache in place; past the context, upper layers' cached keys carry
  transitions that slid out (not a forward over the window).
* `chunked/F`: exact windows of (1 - F) x context to context transitions, the cache refilled
  every F x context steps (`--refresh F`, several give a row each).
* `exact`: a from-scratch forward over the last `context` transitions at every step (what
  the model was trained on).

Per mode and env: the paper's protocol (ldm_eval.protocol, `--rollouts` fresh rollouts of
`--episodes` episodes, context kept across episodes, deterministic argmax), each policy
stepping all rollouts of the env as one batch; the mean episode return, and the mean wall time
of one `act()` (one step of every rollout, in the rollouts' own process). All modes meet the
same env seeds. Then, per mode, the per-step latency at each of `--latency-contexts` with the
checkpoint's weights, timed by tools/bench_inference.py (`measure`: a full sliding cache,
interleaved rounds, median; `--latency-envs` envs of MuJoCo-like spaces), and the ratio of the
longest to the shortest (DESIGN.md's bar: context 2048 at most 2x context 64).
`--latency-contexts ''` skips that part.

Get a trained checkpoint with the quickstart suite (about 3 min on 2 cores):

    LDM_HOME=/tmp/lh-home uv run ldm-eval suite suites/quickstart.yaml
    uv run python tools/bench_long_horizon.py --checkpoint \
        /tmp/lh-home/suites/quickstart/models/tiny-<hash>/checkpoints/step-00000500

Figures go into packages/ldm-model/README.md ("Long horizons").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ldm_eval.policies import SlotInfo, shared_codecs
from ldm_eval.protocol import EnvTarget, EvalConfig, run_protocol
from ldm_model.model import LDM
from ldm_model.policy import LDMPolicy
from ldm_model.training.checkpoint import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inference  # a sibling script, not a package


class TimedPolicy:
    """An `LDMPolicy` whose `act()` calls are timed (the protocol's `Policy`)."""

    def __init__(self, policy: LDMPolicy, times: list[float]) -> None:
        self.policy = policy
        self.times = times

    def reset(self, envs: Sequence[int] | None = None) -> None:
        self.policy.reset(envs)

    def act(self, obs: Any, reward: Any = None, done: Any = None) -> Any:
        start = time.perf_counter()
        out = self.policy.act(obs, reward, done)
        self.times.append(time.perf_counter() - start)
        return out


class ModeFactory:
    """A `PolicyFactory`: `LDMPolicy` with one cache mode over a shared, loaded model."""

    def __init__(self, model: LDM, context: int | None, **cache: Any) -> None:
        self.model = model
        self.context = context
        self.cache = cache
        self.times: list[float] = []

    def __call__(self, slots: Sequence[SlotInfo]) -> TimedPolicy:
        codecs = shared_codecs(
            [s.observation_space for s in slots],
            [s.action_space for s in slots],
            n_bins=self.model.config.n_bins,
        )
        policy = LDMPolicy(self.model, codecs, len(slots), context=self.context, **self.cache)
        return TimedPolicy(policy, self.times)


def mode_settings(kind: str, context: int) -> dict[str, Any]:
    """`LDMPolicy` keyword arguments of a bench kind (`ring`, `exact`, `chunked/<fraction>`)."""
    if kind.startswith("chunked"):
        return {"cache": "chunked", "refresh": bench_inference.refresh_of(kind, context)}
    return {"cache": kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--env",
        action="append",
        default=None,
        metavar="LIB:ENV",
        help="env to roll out (repeatable; default CartPole-v1 and Acrobot-v1 of classic-control)",
    )
    parser.add_argument("--modes", default="ring,chunked,exact")
    parser.add_argument("--refresh", default="0.25", help="chunked: refill strides / context")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", type=int, default=None, help="default: the model's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--latency-contexts", default="64,2048")
    parser.add_argument("--latency-envs", type=int, default=16)
    parser.add_argument("--latency-steps", type=int, default=100)
    parser.add_argument("--latency-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    console = Console(width=max(Console().width, 120))
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    context = args.context or model.config.context
    envs = [
        EnvTarget(library=lib, env_id=env_id)
        for lib, env_id in (
            e.split(":", 1)
            for e in args.env or ["classic-control:CartPole-v1", "classic-control:Acrobot-v1"]
        )
    ]
    kinds = list(bench_inference.policy_kinds(args.modes.split(","), args.refresh.split(",")))
    console.print(
        f"{args.checkpoint}: {model.config.name}, trained context {model.config.context}, "
        f"rollout context {context}; modes {', '.join(kinds)}; {args.rollouts} rollout(s) x "
        f"{args.episodes} episodes per env; {torch.get_num_threads()} torch thread(s)"
    )

    # -- scores and per-step latency on the envs -------------------------------------------------
    rows: list[dict[str, Any]] = []
    config = EvalConfig(episodes=args.episodes, rollouts=args.rollouts, seed=args.seed)
    for target in envs:
        factories = {k: ModeFactory(model, context, **mode_settings(k, context)) for k in kinds}
        start = time.perf_counter()
        results = run_protocol([target], factories, config, console=console)
        console.print(f"  {target}: {time.perf_counter() - start:.0f} s")
        for kind, factory in factories.items():
            done = [r for r in results if r.policy == kind and r.status == "ok"]
            returns = [x for r in done for x in r.returns]
            lengths = [n for r in done for n in r.lengths]
            rows.append(
                {
                    "mode": kind,
                    "env": str(target),
                    "episodes": len(returns),
                    "mean_return": float(np.mean(returns)) if returns else float("nan"),
                    "std_return": float(np.std(returns)) if returns else float("nan"),
                    "mean_length": float(np.mean(lengths)) if lengths else float("nan"),
                    "steps": sum(r.steps for r in done),
                    "ms_per_step": statistics.fmean(factory.times) * 1e3,
                    "failed": sum(r.status != "ok" for r in results if r.policy == kind),
                }
            )

    # -- per-step latency against the context (tools/bench_inference.py) --------------------------
    contexts = [int(c) for c in args.latency_contexts.split(",") if c]
    figures: dict[tuple[str, int], float] = {}
    worst: dict[tuple[str, int], float] = {}
    ratios: dict[str, float] = {}
    if contexts:
        console.print(f"latency: {args.latency_envs} envs, contexts {contexts}")
        figures, worst = bench_inference.measure(
            model,
            bench_inference.make_codec(),
            args.latency_envs,
            bench_inference.policy_kinds(args.modes.split(","), args.refresh.split(",")),
            contexts,
            steps=args.latency_steps,
            repeats=args.latency_repeats,
            slow_steps=3,
            console=console,
        )
        lo, hi = min(contexts), max(contexts)
        ratios = {k: figures[k, hi] / figures[k, lo] for k in kinds}

    table = Table(title=f"Long horizons: {model.config.name}, rollout context {context}")
    for col in ("mode", "env", "episodes", "mean return", "std", "mean length", "ms / step"):
        table.add_column(col, justify="left" if col in ("mode", "env") else "right", no_wrap=True)
    for row in rows:
        table.add_row(
            row["mode"],
            row["env"],
            str(row["episodes"]) + (f" ({row['failed']} failed)" if row["failed"] else ""),
            f"{row['mean_return']:.1f}",
            f"{row['std_return']:.1f}",
            f"{row['mean_length']:.0f}",
            f"{row['ms_per_step']:.2f}",
        )
    console.print(table)
    if contexts:
        table = Table(title=f"Per-step latency, {args.latency_envs} envs, full sliding cache")
        cols = ["mode", *(f"ms @ {c}" for c in contexts), f"@{hi} / @{lo}", f"worst ms @ {hi}"]
        for col in cols:
            table.add_column(col, justify="left" if col == "mode" else "right", no_wrap=True)
        for kind in kinds:
            table.add_row(
                kind,
                *(f"{figures[kind, c] * 1e3:.2f}" for c in contexts),
                f"{ratios[kind]:.2f}x" + ("" if ratios[kind] <= 2 else " (bar: <= 2)"),
                f"{worst[kind, hi] * 1e3:.0f}",
            )
        console.print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "config": model.config.name,
                    "context": context,
                    "threads": torch.get_num_threads(),
                    "rows": rows,
                    "latency_ms": {f"{k}@{c}": s * 1e3 for (k, c), s in figures.items()},
                    "worst_ms": {f"{k}@{c}": s * 1e3 for (k, c), s in worst.items()},
                    "ratios": ratios,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
