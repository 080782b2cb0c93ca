"""The stages of the paper's dataset generation: rank, train (record + relabel), filter, index.

Every stage is resumable: runs are tasks whose result records are written last, a stage only
submits the runs without a record, and MLflow runs are found again by their run keys. A run
whose shards are gone (deleted, or quarantined as corrupt) is not finished any more: `train`
and `filter` first put it back to to-do (`ldm_autorl.verify.reconcile`), saying so.

One process at a time runs a stage of a library on a data root (`ldm_envs.locks`): a second
`rank`/`train`/`filter` of the same library and root is refused, naming the holder's pid,
while other libraries run alongside. A stage's parent MLflow run is keyed by its budget alone;
the seeds, backends and top-N of the calls that added to it are tags that grow, so calling a
stage again with another seed or backend at the same budget extends it (the ranking then
pools every finished seed at that budget).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel
from rich.console import Console

from ldm_autorl import layout, verify
from ldm_autorl.candidates import CandidateConfig, compatibility
from ldm_autorl.candidates import registry as candidate_registry
from ldm_autorl.errors import EmptyRankingError
from ldm_autorl.executors import Executor, TaskResult, TaskSpec
from ldm_autorl.jobs import MAX_WORKER_RESTARTS, RunResult, load_result
from ldm_autorl.random_baseline import DEFAULT_EPISODES as DEFAULT_RANDOM_EPISODES
from ldm_autorl.random_baseline import measure_random
from ldm_autorl.stats import FilterDecision, decide, rank_candidates, window
from ldm_autorl.zoo import ZooScore, pct_of_zoo, zoo_best
from ldm_envs import tracking
from ldm_envs.backends import check_backend
from ldm_envs.dataset.index import write_index
from ldm_envs.dataset.shards import write_decision
from ldm_envs.inputs import require_at_least, require_positive
from ldm_envs.locks import stage_lock
from ldm_envs.manifest import EnvLibrarySpec, atomic_write_text
from ldm_envs.plugins import get_library

#: Paper: at most this many envs of one library get reference runs.
MAX_ENVS_PER_LIBRARY = 250
DEFAULT_RANK_BUDGET = 10_000
DEFAULT_TRAIN_BUDGET = 20_000
TASK_TARGET = "ldm_autorl.jobs:train_run"


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


@dataclass
class StageOutcome:
    """What a stage did: finished runs (including earlier ones) and failures with their cause."""

    results: list[RunResult] = field(default_factory=list)
    failures: list[TaskResult] = field(default_factory=list)
    skipped: int = 0


def _candidates(names: Sequence[str] | None) -> list[CandidateConfig]:
    reg = candidate_registry()
    return [reg.get(n) for n in names] if names else [reg.get(n) for n in reg.names()]


def _run_tasks(
    tasks: list[TaskSpec],
    done: list[RunResult],
    executor: Executor,
    console: Console,
    description: str,
) -> StageOutcome:
    outcome = StageOutcome(results=list(done), skipped=len(done))
    if done:
        console.print(f"[dim]{len(done)} run(s) already finished: skipped[/]")
    if not tasks:
        return outcome
    for result in executor.run(tasks, description=description):
        if result.ok:
            outcome.results.append(RunResult.model_validate(result.value))
        else:
            outcome.failures.append(result)
            console.print(
                f"[red]run {result.key} failed after {result.attempts} attempt(s), "
                f"quarantined:[/] {result.error.strip().splitlines()[-1] if result.error else ''}",
                highlight=False,
            )
    return outcome


def _plan(
    stage: str,
    spec: EnvLibrarySpec,
    pairs: list[tuple[str, CandidateConfig]],
    *,
    seeds: Sequence[int],
    budget: int,
    root: Path,
    record: bool,
    backend: str,
    parent_run_id: str | None,
    timeout_s: float,
    max_restarts: int = MAX_WORKER_RESTARTS,
) -> tuple[list[TaskSpec], list[RunResult]]:
    tasks: list[TaskSpec] = []
    done: list[RunResult] = []
    costs: dict[str, float] = {}
    for env_id, cand in pairs:
        for seed in seeds:
            path = layout.result_path(root, stage, spec.name, env_id, cand.name, seed, budget)
            finished = load_result(path)
            if finished is not None:
                done.append(finished)
                continue
            tasks.append(
                TaskSpec(
                    key=layout.run_key(stage, spec.name, env_id, cand.name, seed, budget),
                    target=TASK_TARGET,
                    kwargs={
                        "stage": stage,
                        "library": spec.name,
                        "env_id": env_id,
                        "candidate": cand.name,
                        "seed": seed,
                        "budget": budget,
                        "root": str(root),
                        "record": record,
                        "backend": backend,
                        "parent_run_id": parent_run_id,
                        "max_restarts": max_restarts,
                    },
                    timeout_s=timeout_s,
                    retries=1,
                )
            )
            costs[tasks[-1].key] = cand.work_per_transition
    # Costliest first (longest-processing-time scheduling): the slow off-policy runs start at
    # once instead of trailing at the end of the stage with the other workers idle.
    tasks.sort(key=lambda task: -costs[task.key])
    return tasks, done


def _submit(
    stage: str,
    spec: EnvLibrarySpec,
    pairs: list[tuple[str, CandidateConfig]],
    *,
    parent_run_id: str,
    executor: Executor,
    console: Console,
    summary: str,
    **plan: Any,
) -> StageOutcome:
    """Plan the stage's runs (skipping finished ones), say what will run, and run the rest."""
    tasks, done = _plan(stage, spec, pairs, parent_run_id=parent_run_id, **plan)
    console.print(summary)
    return _run_tasks(tasks, done, executor, console, f"{stage} {spec.name}")


def compatible_pairs(
    spec: EnvLibrarySpec, env_ids: Sequence[str], candidates: Sequence[CandidateConfig]
) -> list[tuple[str, CandidateConfig]]:
    """Every (env, candidate) whose spaces fit, in env then candidate order."""
    pairs = []
    for env_id in env_ids:
        env = spec.env(env_id)
        if env.observation_space is None or env.action_space is None:
            continue
        for cand in candidates:
            if compatibility(cand, env.observation_space, env.action_space)[0]:
                pairs.append((env_id, cand))
    return pairs


def rank(
    library: str,
    *,
    executor: Executor,
    root: Path,
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
    spec = get_library(library)
    pairs = compatible_pairs(spec, spec.ranking_envs, _candidates(candidates))
    with (
        stage_lock(root, library, "ranking"),
        tracking.tracked_run(
            "ranking",
            library,
            layout.stage_key("ranking", library, budget),
            name=f"ranking {library}",
            params={"budget": budget},
            reuse_finished=True,
        ) as parent,
    ):
        earlier = _other_seeds("ranking", root, spec, pairs, budget=budget, seeds=seeds)
        parent.add_tag_values(
            {
                tracking.TAG_SEEDS: [*seeds, *(r.seed for r in earlier)],
                tracking.TAG_BACKEND: [backend],
            }
        )
        outcome = _submit(
            "ranking",
            spec,
            pairs,
            parent_run_id=parent.run_id,
            executor=executor,
            console=console,
            summary=f"ranking [bold]{library}[/]: {len(pairs)} (env, candidate) pairs on "
            f"{len(spec.ranking_envs)} envs x {len(seeds)} seed(s), budget {budget:,} transitions",
            seeds=seeds,
            budget=budget,
            root=root,
            record=False,
            backend=backend,
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
            console.print(f"[yellow]{cand} is not ranked:[/] {why}", highlight=False)
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
    return table, outcome


def _check_stage_inputs(
    *, budget: int, backend: str, top_n: int | None = None, max_restarts: int | None = None
) -> None:
    """A budget of 0 trains nothing but would still be launched and recorded (`b0`)."""
    require_positive("budget", budget)
    require_positive("top_n", top_n)
    require_at_least("max_restarts", max_restarts, 0, meaning="fail at the first restart")
    check_backend(backend)


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


def _stage_metrics(outcome: StageOutcome) -> dict[str, float]:
    """A stage parent's counts: runs, failures, worker restarts and the episodes they cut."""
    return {
        "runs": len(outcome.results),
        "failures": len(outcome.failures),
        "worker_restarts": sum(r.worker_restarts for r in outcome.results),
        "cut_episodes": sum(r.cut_episodes for r in outcome.results),
    }


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


def train(
    library: str,
    *,
    executor: Executor,
    root: Path,
    top_n: int = 3,
    budget: int = DEFAULT_TRAIN_BUDGET,
    seeds: Sequence[int] = (0,),
    env_ids: Sequence[str] | None = None,
    max_envs: int = MAX_ENVS_PER_LIBRARY,
    backend: str = "venv",
    timeout_s: float = 6 * 3600,
    console: Console | None = None,
    max_restarts: int = MAX_WORKER_RESTARTS,
) -> StageOutcome:
    """Reference runs: the top-N compatible ranked candidates on every env, recorded.

    Raises:
        BadInputError: a budget or `top_n` below 1, a negative `max_restarts` or an unknown
            backend, before any run or MLflow record.
        StageBusyError: another process runs this library's reference runs under `root`.
    """
    _check_stage_inputs(budget=budget, backend=backend, top_n=top_n, max_restarts=max_restarts)
    console = console or Console()
    spec = get_library(library)
    names = load_ranking(root, library)
    if not names:
        raise EmptyRankingError(
            f"the ranking of library {library!r} under {root} is empty: no ranking run ended an "
            "episode, so no candidate scored; rank again with a larger budget "
            f"(`ldm-autorl rank {library} --budget N`)"
        )
    ranked = _candidates(names)
    verify.reconcile(root, say=_warn(console))  # runs that lost shards are to do again
    envs = list(env_ids or spec.env_ids)[:max_envs]
    pairs = []
    for env_id in envs:
        pairs += compatible_pairs(spec, [env_id], ranked)[:top_n]
    with (
        stage_lock(root, library, "reference"),
        tracking.tracked_run(
            "reference",
            library,
            layout.stage_key("reference", library, budget),
            name=f"reference runs {library}",
            params={"budget": budget},
            reuse_finished=True,
        ) as parent,
    ):
        parent.add_tag_values(
            {
                tracking.TAG_SEEDS: seeds,
                tracking.TAG_BACKEND: [backend],
                tracking.TAG_TOP_N: [top_n],
            }
        )
        outcome = _submit(
            "reference",
            spec,
            pairs,
            parent_run_id=parent.run_id,
            executor=executor,
            console=console,
            summary=f"reference runs for [bold]{library}[/]: {len(pairs)} (env, candidate) "
            f"pairs, top {top_n} per env, budget {budget:,} transitions, recorded",
            seeds=seeds,
            budget=budget,
            root=root,
            record=True,
            backend=backend,
            timeout_s=timeout_s,
            max_restarts=max_restarts,
        )
        parent.log_summary(_stage_metrics(outcome))  # once: a resume reopens the parent
    return outcome


def _warn(console: Console) -> verify.Say:
    """How the stages tell about lost runs, quarantined shards and orphans: one line each."""
    return lambda message: console.print(
        f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True
    )


def _random_mean(
    library: str, env_id: str, *, root: Path, backend: str, episodes: int, console: Console
) -> float | None:
    """The env's random-policy mean return, measured once per data root (None: it failed)."""
    try:
        score = measure_random(library, env_id, root=root, episodes=episodes, backend=backend)
    except Exception as exc:  # reported, never hidden: the filter then runs without the bar
        console.print(
            f"[yellow]random policy on {library}/{env_id} failed, not compared:[/] {exc}",
            highlight=False,
        )
        return None
    return score.mean


def filter_runs(
    library: str,
    *,
    root: Path,
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
    with stage_lock(root, library, "filter"):
        return _filter_runs(
            library, root=root, backend=backend, random_episodes=random_episodes, console=console
        )


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
