"""The `autorl` stage: per library, `ldm-autorl rank`, `train`, `filter` and `dataset`.

As subprocesses of the `ldm-autorl` CLI (a declared dependency of this package), in the
suite's interpreter: ranking and reference runs take hours, start SB3 with its own torch
threads and worker pools, and load third-party algorithm plugins; a crash or a leak there must
leave the suite able to record the stage as failed and resume it, and Ctrl-C reaches them as
SIGINT so they stop their task processes. Then one MLflow run per library in
`ldm-dataset/<library>` describes what the suite's index holds.
"""

from __future__ import annotations

from pathlib import Path

from ldm_autorl.config import AutoRLConfig
from ldm_envs import tracking
from ldm_eval.suite.commands import quote, run_cli
from ldm_eval.suite.config import AUTORL_CLI, LibraryConfig, digest
from ldm_eval.suite.context import StageContext, StageFailure
from ldm_eval.suite.dataset import dataset_summary
from ldm_eval.suite.tracker import TAG_SUITE

__all__ = ["run"]

MAX_WORKER_RESTARTS = AutoRLConfig.model_fields["max_restarts"].default


def _autorl_cmd(
    sub: str,
    lib: LibraryConfig,
    root: Path,
    budget: int | None = None,
    envs: list[str] | None = None,
) -> list[str]:
    """One `ldm-autorl` call; `train` runs once per budget group (`budget`, `envs`)."""
    args = [sub, lib.name, "--dataset", str(root)]
    if sub in ("rank", "train"):
        if sub == "rank":
            budget = lib.rank_budget
        args += ["--budget", str(budget if budget is not None else lib.train_budget)]
        args += [a for s in lib.seeds for a in ("--seed", str(s))]
        args += ["--backend", lib.backend]
        if lib.parallel is not None:
            args += ["--parallel", str(lib.parallel)]
        if lib.executor != "local" or lib.address is not None:
            args += ["--executor", lib.executor]
            args += ["--address", lib.address] if lib.address is not None else []
        if lib.max_restarts != MAX_WORKER_RESTARTS:
            args += ["--max-restarts", str(lib.max_restarts)]
    if sub == "rank":
        args += [a for c in lib.candidates or [] for a in ("--candidate", c)]
    if sub == "train":
        args += ["--top-n", str(lib.top_n)]
        args += [a for e in (envs if envs is not None else lib.envs) or [] for a in ("--env", e)]
    if sub == "filter":
        args += ["--backend", lib.backend, "--random-episodes", str(lib.random_episodes)]
    if sub == "dataset":
        args = ["show", "--dataset", str(root), "--library", lib.name]
    return args


def _autorl_calls(lib: LibraryConfig, root: Path) -> list[tuple[str, list[str]]]:
    """The library's `ldm-autorl` calls in order: rank, train (per budget), filter, dataset."""
    calls = [("rank", _autorl_cmd("rank", lib, root))]
    for budget, envs in lib.budget_groups().items():
        calls.append(("train", _autorl_cmd("train", lib, root, budget, envs)))
    calls += [(sub, _autorl_cmd(sub, lib, root)) for sub in ("filter", "dataset")]
    return calls


def run(ctx: StageContext) -> None:
    """Per library: rank, train, filter, dataset summary, through the `ldm-autorl` CLI."""
    root = ctx.suite.dataset_root
    root.mkdir(parents=True, exist_ok=True)
    ctx.outputs["dataset_root"] = str(root)
    for lib in ctx.suite.libraries:
        for sub, args in _autorl_calls(lib, root):
            ctx.console.rule(f"autorl: {sub} {lib.name}")
            run_cli(ctx, quote(["ldm-autorl", *args]), [*AUTORL_CLI, *args])
    _log_datasets(ctx, root)


def _log_datasets(ctx: StageContext, root: Path) -> None:
    """One run per library in `ldm-dataset/<library>`: what the suite's index holds."""
    try:
        summary = dataset_summary(root, ctx.suite)
    except FileNotFoundError as exc:
        raise StageFailure(f"no dataset index after the autorl stage: {exc}") from None
    for row in summary.iter_rows(named=True):
        library = row["library"]
        key = f"dataset/{library}/{digest(str(root.resolve()))}"
        with tracking.tracked_run(
            "dataset",
            library,
            key,
            name=f"dataset {library} ({ctx.suite.name})",
            tags={TAG_SUITE: ctx.suite.name},
            params={"root": str(root)},
            reuse_finished=True,
        ) as run:
            # once: a rerun of the suite reopens this run (log_summary skips what it holds)
            run.log_summary({k: float(v) for k, v in row.items() if k != "library"})
            run.log_table(summary.filter(summary["library"] == library), "dataset_summary")
        if row["runs_kept"] == 0:
            ctx.console.print(
                f"[yellow]warning:[/] no run of {library} passed the filters: the model "
                "cannot learn its envs (raise the budgets)",
                highlight=False,
            )
