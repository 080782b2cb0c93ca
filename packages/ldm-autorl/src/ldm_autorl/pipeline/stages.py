"""What every run stage shares: planning its runs, running them, and its parent run and lock.

`rank` and `train` differ in which (env, candidate) pairs they run, whether they record, and
what they do with the results; how a stage holds its lock and MLflow parent run, skips finished
runs, orders and submits the rest and reports failures is one code path, here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ldm_autorl import layout, verify
from ldm_autorl.candidates import CandidateConfig, compatibility
from ldm_autorl.candidates import registry as candidate_registry
from ldm_autorl.executors import Executor, TaskResult, TaskSpec
from ldm_autorl.jobs import MAX_WORKER_RESTARTS, RunResult, load_result, run_kwargs
from ldm_autorl.remote import STORE_TASK_TARGET
from ldm_envs import tracking
from ldm_envs.backends import check_backend
from ldm_envs.inputs import require_at_least, require_positive
from ldm_envs.locks import stage_lock
from ldm_envs.manifest import EnvLibrarySpec

TASK_TARGET = "ldm_autorl.jobs:train_run"


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
                f"quarantined:[/] "
                f"{escape(result.error.strip().splitlines()[-1]) if result.error else ''}",
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
    store: str | None = None,
) -> tuple[list[TaskSpec], list[RunResult]]:
    tasks: list[TaskSpec] = []
    done: list[RunResult] = []
    costs: dict[str, float] = {}
    for env_id, cand in pairs:
        for seed in seeds:
            rid = layout.RunId(spec.name, env_id, cand.name, seed, budget)
            finished = load_result(rid.result_path(root, stage))
            if finished is not None:
                done.append(finished)
                continue
            # on a remote root (`ldm_autorl.remote`) the task publishes what it wrote
            remote = {"store": store} if store else {}
            tasks.append(
                TaskSpec(
                    key=rid.key(stage),
                    target=STORE_TASK_TARGET if store else TASK_TARGET,
                    kwargs={
                        **remote,
                        **run_kwargs(stage, rid),
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


@contextlib.contextmanager
def stage_parent(
    stage: str, library: str, *, root: Path, budget: int, name: str
) -> Iterator[tracking.RunHandle]:
    """Hold the stage's lock and its parent MLflow run for the whole stage.

    The lock (`<root>/.locks/<library>.<stage>.lock`) refuses a second process running the
    same stage of the library on the root. The parent is keyed by stage, library and budget
    and reopened when it exists (FINISHED included), so a resume or another seed adds to it;
    its only param is the budget, what differs between calls goes into growing tags.

    Raises:
        StageBusyError: another process holds the lock.
    """
    with (
        stage_lock(root, library, stage),
        tracking.tracked_run(
            stage,
            library,
            layout.stage_key(stage, library, budget),
            name=name,
            params={"budget": budget},
            reuse_finished=True,
        ) as parent,
    ):
        yield parent


def _submit(
    stage: str,
    spec: EnvLibrarySpec,
    pairs: list[tuple[str, CandidateConfig]],
    *,
    parent: tracking.RunHandle,
    tags: Mapping[str, Sequence[Any]],
    executor: Executor,
    console: Console,
    summary: str,
    **plan: Any,
) -> StageOutcome:
    """Grow the parent's tags, plan the runs (skipping finished ones), say so, run the rest."""
    parent.add_tag_values(tags)
    tasks, done = _plan(stage, spec, pairs, parent_run_id=parent.run_id, **plan)
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


def _check_stage_inputs(
    *, budget: int, backend: str, top_n: int | None = None, max_restarts: int | None = None
) -> None:
    """A budget of 0 trains nothing but would still be launched and recorded (`b0`)."""
    require_positive("budget", budget)
    require_positive("top_n", top_n)
    require_at_least("max_restarts", max_restarts, 0, meaning="fail at the first restart")
    check_backend(backend)


def _stage_metrics(outcome: StageOutcome) -> dict[str, float]:
    """A stage parent's counts: runs, failures, worker restarts and the episodes they cut."""
    return {
        "runs": len(outcome.results),
        "failures": len(outcome.failures),
        "worker_restarts": sum(r.worker_restarts for r in outcome.results),
        "cut_episodes": sum(r.cut_episodes for r in outcome.results),
    }


def _warn(console: Console) -> verify.Say:
    """How the stages tell about lost runs, quarantined shards and orphans: one line each."""
    return lambda message: console.print(
        f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
