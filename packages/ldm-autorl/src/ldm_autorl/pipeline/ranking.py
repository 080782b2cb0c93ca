"""The ranking stage: compatible candidates on the ranking subset, ranked by Welch points."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console
from rich.markup import escape

from ldm_autorl import layout, remote
from ldm_autorl.candidates import CandidateConfig
from ldm_autorl.config import AutoRLConfig
from ldm_autorl.executors import Executor
from ldm_autorl.jobs import MAX_WORKER_RESTARTS, RunResult, load_result
from ldm_autorl.pipeline.stages import (
    StageOutcome,
    _candidates,
    _check_stage_inputs,
    _stage_metrics,
    _submit,
    compatible_pairs,
    stage_parent,
)
from ldm_autorl.stats import rank_candidates, window
from ldm_envs import tracking
from ldm_envs.manifest import EnvLibrarySpec, atomic_write_text
from ldm_envs.plugins import get_library
from ldm_envs.store import DataRoot

#: The stage config's default (`AutoRLConfig.rank_budget`).
DEFAULT_RANK_BUDGET: int = AutoRLConfig.model_fields["rank_budget"].default


def rank(
    library: str,
    *,
    executor: Executor,
    root: Path | str | DataRoot,
    budget: int = DEFAULT_RANK_BUDGET,
    seeds: Sequence[int] = (0,),
    candidates: Sequence[str] | None = None,
    backend: str = "venv",
    timeout_s: float = 3600,
    console: Console | None = None,
    max_restarts: int = MAX_WORKER_RESTARTS,
) -> tuple[pl.DataFrame, StageOutcome]:
    """Train compatible candidates on the ranking subset and rank them by Welch points.

    The ranking at a budget pools every finished seed: calling `rank` again with a new seed
    (or backend) at the same budget adds its runs to the same parent MLflow run and ranks on
    all of them. Episodes cut by a worker restart are not ranked (`RunResult.cut_episodes`).

    Raises:
        BadInputError: a budget below 1, a negative `max_restarts` or an unknown backend,
            before any run or MLflow record.
        StageBusyError: another process is ranking this library under `root`.
    """
    _check_stage_inputs(budget=budget, backend=backend, max_restarts=max_restarts)
    console = console or Console()
    root, store = remote.open_root(root)
    spec = get_library(library)
    pairs = compatible_pairs(spec, spec.ranking_envs, _candidates(candidates))
    if store is not None:
        remote.pull_records(store, root, library, ["ranking"])
    with stage_parent(
        "ranking", library, root=root, budget=budget, name=f"ranking {library}"
    ) as parent:
        earlier = _other_seeds("ranking", root, spec, pairs, budget=budget, seeds=seeds)
        outcome = _submit(
            "ranking",
            spec,
            pairs,
            parent=parent,
            tags={
                tracking.TAG_SEEDS: [*seeds, *(r.seed for r in earlier)],
                tracking.TAG_BACKEND: [backend],
            },
            executor=executor,
            console=console,
            summary=f"ranking [bold]{library}[/]: {len(pairs)} (env, candidate) pairs on "
            f"{len(spec.ranking_envs)} envs x {len(seeds)} seed(s), budget {budget:,} transitions",
            seeds=seeds,
            budget=budget,
            root=root,
            record=False,
            backend=backend,
            store=store.url if store else None,
            timeout_s=timeout_s,
            max_restarts=max_restarts,
        )
        if earlier:
            console.print(
                f"[dim]{len(earlier)} finished run(s) of other seeds at this budget: ranked too[/]"
            )
            outcome.results += earlier
            outcome.skipped += len(earlier)
        last: dict[str, dict[str, list[float]]] = {}
        for res in outcome.results:
            last.setdefault(res.env_id, {}).setdefault(res.candidate, []).extend(
                window(res.episode_returns, "last").tolist()
            )
        table = rank_candidates(last)
        unranked = _without_episodes(outcome.results, set(table["candidate"].to_list()))
        for cand, why in unranked.items():
            console.print(f"[yellow]{cand} is not ranked:[/] {escape(why)}", highlight=False)
        per_env = _per_env_scores(outcome.results)
        parent.log_table(table, "ranking")
        if per_env.height:
            parent.log_table(per_env, "ranking_per_env")
            parent.log_figure(_ranking_figure(table, per_env), "ranking.png")
        parent.log_summary(_stage_metrics(outcome))  # once: a resume reopens the parent
    atomic_write_text(
        layout.ranking_path(root, library),
        json.dumps(
            {
                "library": library,
                "budget": budget,
                "seeds": sorted({r.seed for r in outcome.results}),
                "ranking": table.to_dicts(),
                "failures": [f.key for f in outcome.failures],
                "unranked": unranked,
            },
            indent=2,
        ),
    )
    if store is not None:
        remote.publish_ranking(store, root, library)
    return table, outcome


def _other_seeds(
    stage: str,
    root: Path,
    spec: EnvLibrarySpec,
    pairs: Sequence[tuple[str, CandidateConfig]],
    *,
    budget: int,
    seeds: Sequence[int],
) -> list[RunResult]:
    """Finished runs of `pairs` at `budget` with seeds other than `seeds` (earlier calls').

    A ranking at a budget is one parent run that grows with each seed added: its table ranks
    every seed finished so far, not only the seeds of the latest call.
    """
    wanted = {(env_id, cand.name) for env_id, cand in pairs}
    found: list[RunResult] = []
    for env_id in sorted({env_id for env_id, _ in pairs}):
        folder = root / "runs" / stage / spec.name / layout.safe(env_id)
        for path in sorted(folder.glob(f"*-b{budget}.json")):
            res = load_result(path)
            if (
                res is not None
                and res.budget == budget
                and res.seed not in seeds
                and (res.env_id, res.candidate) in wanted
            ):
                found.append(res)
    return found


def _without_episodes(results: Sequence[RunResult], ranked: set[str]) -> dict[str, str]:
    """Candidates that ran but ended no episode anywhere, so they neither score nor concede.

    Said out loud: otherwise a budget too small for a candidate's parallel envs (A2C steps 8
    envs, so each sees 1/8 of it) makes the candidate vanish from the ranking unexplained.
    """
    runs: dict[str, list[RunResult]] = {}
    for r in results:
        runs.setdefault(r.candidate, []).append(r)
    return {
        cand: f"none of its {len(rs)} ranking run(s) ended an episode at budget "
        f"{rs[0].budget:,}; raise the ranking budget"
        for cand, rs in sorted(runs.items())
        if cand not in ranked
    }


def _per_env_scores(results: Sequence[RunResult]) -> pl.DataFrame:
    rows = [
        {
            "env_id": r.env_id,
            "candidate": r.candidate,
            "seed": r.seed,
            "episodes": len(r.episode_returns),
            "first10_mean": r.first10_mean,
            "last10_mean": r.last10_mean,
            "seconds": round(r.seconds, 1),
        }
        for r in results
    ]
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def _ranking_figure(table: pl.DataFrame, per_env: pl.DataFrame) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    axes[0].barh(table["candidate"].to_list()[::-1], table["points"].to_list()[::-1])
    axes[0].set_xlabel("Welch points (summed over the ranking subset)")
    axes[0].set_title("candidate ranking")
    pivot = per_env.pivot(
        on="env_id", index="candidate", values="last10_mean", aggregate_function="mean"
    )
    envs = [c for c in pivot.columns if c != "candidate"]
    data = pivot.select(envs).to_numpy().astype(float)
    finite = np.where(np.isfinite(data), data, np.nan)
    with np.errstate(all="ignore"):
        lo = np.nanmin(np.nan_to_num(finite, nan=np.inf), axis=0)
        hi = np.nanmax(np.nan_to_num(finite, nan=-np.inf), axis=0)
        norm = (finite - lo) / np.where(hi > lo, hi - lo, 1.0)
    axes[1].imshow(norm, aspect="auto", cmap="viridis")
    axes[1].set_xticks(range(len(envs)), envs, rotation=30, ha="right")
    axes[1].set_yticks(range(pivot.height), pivot["candidate"].to_list())
    axes[1].set_title("last-10% return, normalized per env")
    fig.tight_layout()
    return fig


def load_ranking(root: Path, library: str) -> list[str]:
    """Candidate names in ranking order.

    Raises:
        FileNotFoundError: telling to run `ldm-autorl rank LIB` first.
    """
    path = layout.ranking_path(root, library)
    if not path.exists():
        raise FileNotFoundError(
            f"no ranking for library {library!r} under {root}: run `ldm-autorl rank {library}`"
        )
    return [row["candidate"] for row in json.loads(path.read_text())["ranking"]]
