"""The reference stage: the top-N ranked candidates on every env, recorded and relabeled.

Which candidates an env gets is printed before any run starts (`chosen_table`): the ranking is
pooled over earlier calls and narrowed by what fits each env, so the top-N of an env is not
something a user could read off the ranking table alone.

Calling the stage again at the same budget with another `top_n` reuses the finished runs: a
larger N adds the next candidates' runs, a smaller one runs nothing new, and the parent run's
`top_n` tag lists every N it was called with. The filter and the dataset then hold every
finished reference run of that budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ldm_autorl import remote, verify
from ldm_autorl.candidates import CandidateConfig
from ldm_autorl.config import AutoRLConfig
from ldm_autorl.errors import EmptyRankingError
from ldm_autorl.executors import Executor
from ldm_autorl.jobs import MAX_WORKER_RESTARTS
from ldm_autorl.pipeline.ranking import load_ranking
from ldm_autorl.pipeline.stages import (
    StageOutcome,
    _candidates,
    _check_stage_inputs,
    _stage_metrics,
    _submit,
    _warn,
    compatible_pairs,
    stage_parent,
)
from ldm_envs import tracking
from ldm_envs.plugins import get_library
from ldm_envs.store import DataRoot

MAX_ENVS_PER_LIBRARY = 250
#: The stage config's default (`AutoRLConfig.train_budget`).
DEFAULT_TRAIN_BUDGET: int = AutoRLConfig.model_fields["train_budget"].default


def train(
    library: str,
    *,
    executor: Executor,
    root: Path | str | DataRoot,
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
    root, store = remote.open_root(root)
    spec = get_library(library)
    if store is not None:
        remote.pull_records(store, root, library, ["reference"])
    names = load_ranking(root, library)
    if not names:
        raise EmptyRankingError(
            f"the ranking of library {library!r} under {root} is empty: no ranking run ended an "
            "episode, so no candidate scored; rank again with a larger budget "
            f"(`ldm-autorl rank {library} --budget N`)"
        )
    ranked = _candidates(names)
    if store is None:  # a published record's shards were published before it
        verify.reconcile(root, say=_warn(console))  # runs that lost shards are to do again
    envs = list(env_ids or spec.env_ids)[:max_envs]
    pairs = []
    for env_id in envs:
        pairs += compatible_pairs(spec, [env_id], ranked)[:top_n]
    console.print(chosen_table(library, envs, pairs, names, top_n=top_n))
    with stage_parent(
        "reference", library, root=root, budget=budget, name=f"reference runs {library}"
    ) as parent:
        outcome = _submit(
            "reference",
            spec,
            pairs,
            parent=parent,
            tags={
                tracking.TAG_SEEDS: seeds,
                tracking.TAG_BACKEND: [backend],
                tracking.TAG_TOP_N: [top_n],
            },
            executor=executor,
            console=console,
            summary=f"reference runs for [bold]{library}[/]: {len(pairs)} (env, candidate) "
            f"pairs, top {top_n} per env, budget {budget:,} transitions, recorded",
            seeds=seeds,
            budget=budget,
            root=root,
            record=True,
            backend=backend,
            store=store.url if store else None,
            timeout_s=timeout_s,
            max_restarts=max_restarts,
        )
        parent.log_summary(_stage_metrics(outcome))  # once: a resume reopens the parent
    return outcome


def chosen_table(
    library: str,
    env_ids: Sequence[str],
    pairs: Sequence[tuple[str, CandidateConfig]],
    ranking: Sequence[str],
    *,
    top_n: int,
) -> Table:
    """The candidates each env gets, in ranking order with their rank; alike envs share a row.

    An env may get fewer than `top_n` (only the candidates that fit its spaces count) or none;
    grouping keeps a library of hundreds of envs to a few rows.
    """
    rank_of = {name: i for i, name in enumerate(ranking, 1)}
    chosen: dict[str, list[str]] = {env_id: [] for env_id in env_ids}
    for env_id, cand in pairs:
        chosen[env_id].append(cand.name)
    groups: dict[tuple[str, ...], list[str]] = {}
    for env_id, names in chosen.items():
        groups.setdefault(tuple(names), []).append(env_id)
    table = Table(title=f"reference candidates of {library}")
    table.add_column("envs", overflow="fold")
    table.add_column(f"top {top_n} that fit (rank)", overflow="fold")
    for group, envs in groups.items():
        picked = ", ".join(f"{n} (#{rank_of[n]})" for n in group) or "none fits: no run"
        table.add_row(", ".join(envs), picked)
    return table
