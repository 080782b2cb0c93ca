"""Benchmark Ray's per-task overhead against the local executor on the same 10-run ranking.

Usage: uv run python tools/bench_executors.py [--budget 2000] [--workers 2] [--rounds 1]

Ranks classic-control with two candidates (ppo-default, a2c-default: both fit all 5 envs of
its ranking subset, so 10 runs) twice per round, into fresh data roots: once through
`LocalExecutor` (fork server preloaded, as the CLI runs it) and once through `RayExecutor`
(a local Ray, started inside the timing, then its start reported apart). Per-task overhead is
the cores' time not spent in SB3's `learn`, divided by the runs:

    (workers x wall - sum of learn seconds) / runs

so it holds process or worker start, env workers, MLflow, plots, scheduling and the tail of
the last runs. The figure to read is the ratio Ray / local of the same round (the machine is
shared and noisy; absolute seconds are not comparable between runs). Small budgets make the
overhead visible: it is fixed per run. Figures go into packages/ldm-autorl/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ldm_autorl import pipeline
from ldm_autorl.executors import LocalExecutor, RayExecutor

CANDIDATES = ["ppo-default", "a2c-default"]


def rank_once(executor: Any, budget: int, workers: int) -> dict[str, float]:
    """One ranking into a fresh root; wall, learn and per-task overhead seconds."""
    root = Path(tempfile.mkdtemp(prefix="ldm-bench-executors-"))
    start = time.perf_counter()
    _, outcome = pipeline.rank(
        "classic-control",
        executor=executor,
        root=root,
        budget=budget,
        candidates=CANDIDATES,
        console=Console(quiet=True),
    )
    wall = time.perf_counter() - start
    if outcome.failures:
        raise SystemExit(f"ranking failed: {outcome.failures}")
    runs = len(outcome.results)
    learn = sum(r.learn_seconds - r.record_seconds for r in outcome.results)
    return {
        "runs": runs,
        "wall": wall,
        "learn": learn,
        "overhead_per_task": (workers * wall - learn) / runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2000, help="transitions per run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    console = Console()
    ratios: list[float] = []
    table = Table(title=f"10-run ranking of classic-control, {args.budget:,} transitions a run")
    for col in ("round", "executor", "runs", "wall s", "learn s", "overhead s/task", "ray start s"):
        table.add_column(col, justify="right")
    for round_ in range(1, args.rounds + 1):
        local = rank_once(
            LocalExecutor(max_workers=args.workers, preload=["ldm_autorl.preload"]),
            args.budget,
            args.workers,
        )
        with RayExecutor(num_cpus=args.workers, show_progress=False) as ray_executor:
            ray = rank_once(ray_executor, args.budget, args.workers)
            ray_start = ray_executor.init_seconds
        for name, figures, start in (("local", local, ""), ("ray", ray, f"{ray_start:.1f}")):
            table.add_row(
                str(round_),
                name,
                f"{figures['runs']:.0f}",
                f"{figures['wall']:.1f}",
                f"{figures['learn']:.1f}",
                f"{figures['overhead_per_task']:.2f}",
                start,
            )
        # Ray's own start is paid once per driver, not per task: the ratio leaves it out
        ray_steady = (args.workers * (ray["wall"] - ray_start) - ray["learn"]) / ray["runs"]
        ratios.append(ray_steady / local["overhead_per_task"])
    console.print(table)
    console.print(
        f"Ray / local per-task overhead, Ray's start left out: {statistics.median(ratios):.2f}x "
        f"(median of {len(ratios)} round(s): {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
