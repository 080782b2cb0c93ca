"""Benchmark ldm-autorl: time outside SB3's training, and what recording costs SB3.

Usage: uv run python tools/bench_autorl.py [--budget 10000] [--candidate ppo-zoo ... | --all]

1. Ranks classic-control (the given candidates, default ppo-zoo and dqn-zoo; `--all`: every
   registered candidate, which is what `ldm-autorl rank classic-control` runs) with the CLI's
   executor (fork server preloaded with torch/SB3/MLflow) and reports the wall time and the
   share of the cores' time spent outside `model.learn` (process start, env workers, MLflow,
   plots, scheduling): target <= 15%.
2. Trains the same reference run twice in the same process, recording on and off, and reports
   the ratio of `learn` times: target <= 1.10.
Figures go into packages/ldm-autorl/README.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from ldm_autorl import pipeline
from ldm_autorl.executors import LocalExecutor
from ldm_autorl.jobs import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=pipeline.DEFAULT_RANK_BUDGET)
    parser.add_argument("--candidate", action="append", default=None)
    parser.add_argument("--all", action="store_true", help="every registered candidate")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--record-budget", type=int, default=20_000)
    args = parser.parse_args()
    console = Console()
    candidates = None if args.all else args.candidate or ["ppo-zoo", "dqn-zoo"]
    root = Path(tempfile.mkdtemp(prefix="ldm-bench-autorl-"))

    start = time.perf_counter()
    executor = LocalExecutor(max_workers=args.workers, preload=["ldm_autorl.preload"])
    _, outcome = pipeline.rank(
        "classic-control",
        executor=executor,
        root=root,
        budget=args.budget,
        candidates=candidates,
        console=console,
    )
    wall = time.perf_counter() - start
    named = ", ".join(candidates or ["all candidates"])
    learn = sum(r.learn_seconds - r.record_seconds for r in outcome.results)
    busy = wall * args.workers
    console.print(
        f"rank classic-control, {len(outcome.results)} runs of {args.budget:,} transitions "
        f"({named}), {args.workers} workers: wall {wall:.0f} s; "
        f"outside SB3 training: {1 - learn / busy:.1%} of {args.workers} cores' time "
        f"({1 - learn / sum(r.seconds for r in outcome.results):.1%} inside the tasks)"
    )

    first = (candidates or ["ppo-zoo"])[0]
    timings = {}
    for record in (False, True):
        res = train_run(
            stage="reference",
            library="classic-control",
            env_id="CartPole-v1",
            candidate=first,
            seed=0,
            budget=args.record_budget,
            root=str(root / ("rec" if record else "norec")),
            record=record,
        )
        timings[record] = res["learn_seconds"]
    console.print(
        f"{first} on CartPole-v1, {args.record_budget:,} transitions: learn "
        f"{timings[False]:.1f} s without recording, {timings[True]:.1f} s with -> ratio "
        f"{timings[True] / timings[False]:.2f} (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
