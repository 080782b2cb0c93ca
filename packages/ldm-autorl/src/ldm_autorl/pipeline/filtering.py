"""The filter stage: decide every reference run, compare it with the zoo and random, index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from ldm_autorl import layout, remote, verify
from ldm_autorl.jobs import RunResult, load_result
from ldm_autorl.pipeline.stages import _warn
from ldm_autorl.random_baseline import DEFAULT_EPISODES as DEFAULT_RANDOM_EPISODES
from ldm_autorl.random_baseline import measure_random
from ldm_autorl.stats import FilterDecision, decide
from ldm_autorl.zoo import ZooScore, pct_of_zoo, zoo_best
from ldm_envs import tracking
from ldm_envs.dataset.index import write_index
from ldm_envs.dataset.shards import write_decision
from ldm_envs.locks import stage_lock
from ldm_envs.plugins import get_library
from ldm_envs.store import DataRoot


class ZooComparison(BaseModel):
    """A reference run against rl-baselines3-zoo's best published score and a random policy."""

    zoo_best: float | None = None
    zoo_algo: str | None = None
    zoo_budget: int | None = None
    #: the last-10% training return on the zoo's scale (0 = random, 1 = the zoo's best)
    pct_of_zoo: float | None = None
    #: the final policy's deterministic return (what the zoo reports, and what the relabeled
    #: actions carry), and that on the zoo's scale
    final_mean: float | None = None
    final_pct_of_zoo: float | None = None

    @classmethod
    def of(
        cls, decision: FilterDecision, zoo: ZooScore | None, final_mean: float | None = None
    ) -> ZooComparison:
        """`% of zoo` of the run's last-10% and final means (None where an end is unknown)."""
        if zoo is None:
            return cls(final_mean=final_mean)
        last = decision.last10_mean
        return cls(
            zoo_best=zoo.mean_reward,
            zoo_algo=zoo.algo,
            zoo_budget=zoo.n_timesteps,
            pct_of_zoo=pct_of_zoo(
                last if np.isfinite(last) else None, decision.random_mean, zoo.mean_reward
            ),
            final_mean=final_mean,
            final_pct_of_zoo=pct_of_zoo(final_mean, decision.random_mean, zoo.mean_reward),
        )


def _random_mean(
    library: str, env_id: str, *, root: Path, backend: str, episodes: int, console: Console
) -> float | None:
    """The env's random-policy mean return, measured once per data root (None: it failed)."""
    try:
        score = measure_random(library, env_id, root=root, episodes=episodes, backend=backend)
    except Exception as exc:  # reported, never hidden: the filter then runs without the bar
        console.print(
            f"[yellow]random policy on {library}/{env_id} failed, not compared:[/] "
            f"{escape(str(exc))}",
            highlight=False,
        )
        return None
    return score.mean


def filter_runs(
    library: str,
    *,
    root: Path | str | DataRoot,
    backend: str = "venv",
    random_episodes: int = DEFAULT_RANDOM_EPISODES,
    console: Console | None = None,
) -> pl.DataFrame:
    """Decide every reference run of the library, record decisions, rebuild the index.

    Each env with runs first gets its random-policy score (`random_baseline`, measured once
    through `backend`, `random_episodes` episodes; 0 skips it): the bar a reference must clear,
    and with rl-baselines3-zoo's best published score (`zoo`) the two ends of `% of zoo`,
    which every decision, the filter table and each run's MLflow metrics carry.

    Before deciding, the library's shards are read whole (CRC-32 of every column, flags and
    episode rules: 0.6-2.1 GiB/s on 2 cores, see the README): corrupt ones are quarantined,
    and runs that lost a shard go back to to-do instead of being decided on part of their
    data. A run that lost a shard is never decided, so it leaves no decision behind.

    Raises:
        StageBusyError: another process is filtering this library under `root`.
    """
    root, store = remote.open_root(root)
    if store is not None:
        remote.pull_for_filter(store, root, library)
    with stage_lock(root, library, "filter"):
        table = _filter_runs(
            library, root=root, backend=backend, random_episodes=random_episodes, console=console
        )
    if store is not None:
        remote.publish_filter(store, root, library)
    return table


def _filter_runs(
    library: str,
    *,
    root: Path,
    backend: str,
    random_episodes: int,
    console: Console | None,
) -> pl.DataFrame:
    """`filter_runs` once its stage lock is held."""
    console = console or Console()
    say = _warn(console)
    spec = get_library(library)
    verify.quarantine_corrupt(
        root, _library_shards(root, library), say=say, found_by=f"filter {library}"
    )
    verify.reconcile(root, say=say)
    results: dict[str, list[RunResult]] = {}
    for env_id in spec.env_ids:
        folder = root / "runs" / "reference" / library / layout.safe(env_id)
        for path in sorted(folder.glob("*.json")):
            res = load_result(path)
            if res is not None:
                results.setdefault(env_id, []).append(res)
    rows = []
    with tracking.tracked_run(
        "filter",
        library,
        layout.stage_key("filter", library),
        name=f"filter {library}",
        reuse_finished=True,
    ) as parent:
        for env_id, runs in results.items():
            random = (
                _random_mean(
                    library,
                    env_id,
                    root=root,
                    backend=backend,
                    episodes=random_episodes,
                    console=console,
                )
                if random_episodes > 0
                else None
            )
            zoo = zoo_best(library, env_id)
            decisions = decide(
                {r.run_key: r.episode_returns for r in runs},
                random_mean=random,
                final_means={r.run_key: r.final_mean for r in runs},
            )
            for r in runs:
                d = decisions[r.run_key]
                vs_zoo = ZooComparison.of(d, zoo, r.final_mean)
                payload = {
                    "kept": d.kept,
                    "reason": d.reason,
                    "stats": {**d.model_dump(), **vs_zoo.model_dump()},
                }
                for shard in r.shards:
                    write_decision(root / shard, payload)
                tracking.set_run_tags(
                    r.mlflow_run_id,
                    {
                        tracking.TAG_DECISION: "kept" if d.kept else "dropped",
                        tracking.TAG_REASON: d.reason,
                        **({"ldm.zoo_algo": zoo.algo} if zoo else {}),
                    },
                )
                metrics = {
                    "random_mean": d.random_mean,
                    "zoo_best": vs_zoo.zoo_best,
                    "pct_of_zoo": vs_zoo.pct_of_zoo,
                    "final_pct_of_zoo": vs_zoo.final_pct_of_zoo,
                }
                tracking.RunHandle(r.mlflow_run_id).log_summary(
                    {k: v for k, v in metrics.items() if v is not None}
                )
                rows.append(
                    {
                        "env_id": env_id,
                        "candidate": r.candidate,
                        "seed": r.seed,
                        "budget": r.budget,
                        "kept": d.kept,
                        "reason": d.reason,
                        "first10_mean": d.first10_mean,
                        "last10_mean": d.last10_mean,
                        "improvement_p": d.improvement_p,
                        "threshold": d.threshold,
                        "random_mean": d.random_mean,
                        "zoo_best": vs_zoo.zoo_best,
                        "zoo_algo": vs_zoo.zoo_algo,
                        "pct_of_zoo": vs_zoo.pct_of_zoo,
                        "final_mean": vs_zoo.final_mean,
                        "final_pct_of_zoo": vs_zoo.final_pct_of_zoo,
                        # episodes cut by worker restarts: already left out of the means
                        "worker_restarts": r.worker_restarts,
                        "cut_episodes": r.cut_episodes,
                    }
                )
        table = pl.DataFrame(rows) if rows else pl.DataFrame()
        if rows:
            parent.log_table(table, "filter_decisions")
            parent.log_summary({"kept": int(table["kept"].sum()), "runs": table.height})
    index = write_index(root, on_corrupt="quarantine", report=say)
    if verify.reconcile(root, say=say):  # another library's shard failed at the index build
        index = write_index(root, on_corrupt="quarantine", report=say)
    console.print(f"index written: {index}")
    return table


def _library_shards(root: Path, library: str) -> list[str]:
    """The shards the library's finished reference runs name (relative to `root`)."""
    folder = root / "runs" / "reference" / library
    shards: list[str] = []
    for path in sorted(folder.rglob("*.json")):
        res = load_result(path)
        if res is not None:
            shards += res.shards
    return shards
