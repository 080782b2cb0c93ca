"""Size reference-run budgets against rl-baselines3-zoo: train, then score on the zoo's scale.

Each RUN is `LIBRARY:ENV:CANDIDATE:BUDGET`. The run is a real reference run (ldm-autorl's
`train_run`: isolated env, recorded, relabeled, the final policy evaluated deterministically
for 10 episodes), its env gets a random-policy score, and the table gives both ends of
`% of zoo` = (return - random) / (zoo best - random): the last 10% of training episodes (the
paper's reference level) and the final deterministic policy (what the zoo's benchmark
reports, and what the relabeled actions carry). Runs already finished under `--root` are read
back, not redone, so a sweep is resumable and can grow.

    uv run python tools/reference_budgets.py classic-control:CartPole-v1:dqn-zoo:50000 \
        box2d:LunarLander-v3:ppo-long:1000000 --out reports/reference-budgets
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from ldm_autorl.jobs import train_run
from ldm_autorl.random_baseline import measure_random
from ldm_autorl.zoo import pct_of_zoo, zoo_best
from ldm_envs.manifest import atomic_write_text

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LIBRARY:ENV:CANDIDATE:BUDGET")
    parser.add_argument("--root", type=Path, default=Path("/tmp/ldm-reference-budgets"))
    parser.add_argument("--out", type=Path, help="folder for reference_budgets.csv")
    parser.add_argument("--backend", default="venv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for spec in args.runs:
        library, env_id, candidate, budget = spec.split(":")
        start = time.perf_counter()
        run = train_run(
            stage="reference",
            library=library,
            env_id=env_id,
            candidate=candidate,
            seed=args.seed,
            budget=int(budget),
            root=str(args.root),
            record=True,
            backend=args.backend,
        )
        random = measure_random(library, env_id, root=args.root, backend=args.backend).mean
        zoo = zoo_best(library, env_id)
        best = zoo.mean_reward if zoo else None
        rows.append(
            {
                "library": library,
                "env_id": env_id,
                "candidate": candidate,
                "budget": int(budget),
                "first10": run["first10_mean"],
                "last10": run["last10_mean"],
                "final": run["final_mean"],
                "random": random,
                "zoo_best": best,
                "zoo_algo": zoo.algo if zoo else None,
                "zoo_budget": zoo.n_timesteps if zoo else None,
                "pct_of_zoo_last10": pct_of_zoo(run["last10_mean"], random, best),
                "pct_of_zoo_final": pct_of_zoo(run["final_mean"], random, best),
                "train_seconds": round(run["seconds"], 1),
                "wall_seconds_here": round(time.perf_counter() - start, 1),
            }
        )
        console.print(rows[-1])
        if args.out:
            _write(pl.DataFrame(rows), args.out)  # after every run: a stopped sweep keeps it
    df = pl.DataFrame(rows)
    table = Table(title="reference runs on rl-zoo's scale (0 = random, 1 = zoo's best)")
    for col in df.columns:
        table.add_column(col)
    for row in df.iter_rows():
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    if args.out:
        console.print(f"written: {args.out / 'reference_budgets.csv'}")


def _write(df: pl.DataFrame, out: Path) -> None:
    """Merge into `reference_budgets.csv`: earlier sweeps' rows stay, a rerun replaces its row."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reference_budgets.csv"
    if path.exists():
        old = pl.read_csv(path)
        keys = ["library", "env_id", "candidate", "budget"]
        df = pl.concat([old.join(df.select(keys), on=keys, how="anti"), df], how="diagonal")
    atomic_write_text(path, df.sort("library", "env_id", "budget").write_csv())


if __name__ == "__main__":
    main()
