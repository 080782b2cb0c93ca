"""The `ldm-autorl` command line: candidates, rank, train, filter, dataset, run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from ldm_autorl import layout, pipeline
from ldm_envs.errors import LdmEnvsError
from ldm_envs.plugins import get_library

app = typer.Typer(
    help="AutoRL reference policies: rank SB3 candidates, train the best on every env while "
    "recording, relabel, filter; everything tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

RootOpt = Annotated[
    Path | None, typer.Option("--root", help="data root (default <data home>/autorl)")
]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="local | ray")]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: a local Ray)")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="parallel runs (local executor; default: cores)")
]
SeedOpt = Annotated[list[int] | None, typer.Option("--seed", help="seed(s), repeatable")]
BackendOpt = Annotated[str, typer.Option("--backend", help="isolation backend: venv | docker")]


def _fail(exc: BaseException) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(1)


def _root(root: Path | None) -> Path:
    return root or layout.default_root()


def _executor(name: str, address: str | None, workers: int | None):
    from ldm_autorl.executors import LocalExecutor, make_executor

    if name == "local" and address is None:
        # tasks fork from a server that imported torch/SB3/MLflow once
        return LocalExecutor(max_workers=workers, preload=["ldm_autorl.preload"])
    return make_executor(name, address=address, max_workers=workers)


#: The filter table's columns shown in a terminal (all of them are logged to MLflow).
_FILTER_COLUMNS = [
    "env_id",
    "candidate",
    "seed",
    "budget",
    "kept",
    "reason",
    "first10_mean",
    "last10_mean",
    "final_mean",
    "random_mean",
    "zoo_best",
    "pct_of_zoo",
    "final_pct_of_zoo",
]


def _print_decisions(df: pl.DataFrame, library: str) -> None:
    _print_frame(
        df.select([c for c in _FILTER_COLUMNS if c in df.columns]),
        f"filter decisions for {library} (pct_of_zoo: 0 = random policy, 1 = rl-zoo's best)",
    )


def _print_frame(df: pl.DataFrame, title: str) -> None:
    table = Table(title=title)
    for col in df.columns:
        table.add_column(col, overflow="fold")
    for row in df.iter_rows():
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command()
def candidates(library: str) -> None:
    """Per env: which candidates apply, and why the others do not."""
    from ldm_autorl.candidates import compatibility_table
    from ldm_envs.plugins import get_library

    try:
        df = compatibility_table(get_library(library))
    except LdmEnvsError as exc:
        _fail(exc)
    for env_id in df["env_id"].unique(maintain_order=True).to_list():
        sub = df.filter(pl.col("env_id") == env_id)
        ok = sub.filter(pl.col("compatible"))["candidate"].to_list()
        console.print(f"[bold]{env_id}[/]: {len(ok)} candidates: {', '.join(ok) or '-'}")
        for row in sub.filter(~pl.col("compatible")).iter_rows(named=True):
            console.print(f"    [dim]{row['candidate']}: {row['reason']}[/]", highlight=False)


@app.command()
def rank(
    library: str,
    budget: Annotated[int, typer.Option(help="transitions per run")] = (
        pipeline.DEFAULT_RANK_BUDGET
    ),
    seed: SeedOpt = None,
    candidate: Annotated[
        list[str] | None, typer.Option("--candidate", help="only these candidates")
    ] = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    backend: BackendOpt = "venv",
    root: RootOpt = None,
) -> None:
    """Train compatible candidates on the 5-env subset; rank them by one-tailed Welch points."""
    try:
        table, outcome = pipeline.rank(
            library,
            executor=_executor(executor, address, workers),
            root=_root(root),
            budget=budget,
            seeds=seed or [0],
            candidates=candidate,
            backend=backend,
        )
    except (LdmEnvsError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    _print_frame(table, f"ranking of {library} ({len(outcome.results)} runs)")
    if outcome.failures:
        raise typer.Exit(1)


@app.command()
def train(
    library: str,
    top_n: Annotated[int, typer.Option(help="best compatible candidates per env")] = 3,
    budget: Annotated[int, typer.Option(help="transitions per run")] = (
        pipeline.DEFAULT_TRAIN_BUDGET
    ),
    seed: SeedOpt = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="only these env ids")] = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    backend: BackendOpt = "venv",
    root: RootOpt = None,
) -> None:
    """Reference runs of the top-N candidates on every env, recorded and relabeled."""
    try:
        outcome = pipeline.train(
            library,
            executor=_executor(executor, address, workers),
            root=_root(root),
            top_n=top_n,
            budget=budget,
            seeds=seed or [0],
            env_ids=env,
            backend=backend,
        )
    except (LdmEnvsError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    console.print(
        f"{len(outcome.results)} reference runs finished ({outcome.skipped} earlier), "
        f"{len(outcome.failures)} failed"
    )
    if outcome.failures:
        raise typer.Exit(1)


RandomEpisodesOpt = Annotated[
    int,
    typer.Option(
        "--random-episodes",
        help="episodes of a random policy per env, the bar a reference must clear and the "
        "zero of %-of-zoo (measured once per data root; 0: skip)",
    ),
]


@app.command("filter")
def filter_(
    library: str,
    backend: BackendOpt = "venv",
    random_episodes: RandomEpisodesOpt = pipeline.DEFAULT_RANDOM_EPISODES,
    root: RootOpt = None,
) -> None:
    """Apply the improvement, performance and better-than-random filters; rebuild the index.

    The table shows each run's last-10% return beside a random policy's and the best score
    rl-baselines3-zoo publishes for the env (`pct_of_zoo`: 0 = random, 1 = zoo).
    """
    try:
        table = pipeline.filter_runs(
            library, root=_root(root), backend=backend, random_episodes=random_episodes
        )
    except (LdmEnvsError, FileNotFoundError) as exc:
        _fail(exc)
    if table.height:
        _print_decisions(table, library)
    else:
        console.print(f"no reference runs for {library}: run `ldm-autorl train {library}`")


@app.command()
def dataset(
    root: RootOpt = None,
    library: Annotated[str | None, typer.Option(help="only this library")] = None,
) -> None:
    """Summarize the index: envs, runs kept and dropped (and why), transitions."""
    from ldm_envs.dataset.index import read_index

    try:
        runs, _episodes = read_index(_root(root))
    except (LdmEnvsError, FileNotFoundError) as exc:
        _fail(exc)
    if library:
        runs = runs.filter(pl.col("library") == library)
    summary = (
        runs.group_by(["library", "env_id", "candidate", "seed", "kept", "reason"])
        .agg(pl.col("rows").sum().alias("transitions"), pl.col("episodes").sum())
        .sort(["library", "env_id", "candidate"])
    )
    _print_frame(summary, "dataset")
    kept = runs.filter(pl.col("kept").fill_null(False))
    console.print(
        f"{runs['env_id'].n_unique()} envs, {summary.height} runs "
        f"({summary.filter(pl.col('kept').fill_null(False)).height} kept), "
        f"{int(kept['rows'].sum() or 0):,} kept transitions of {int(runs['rows'].sum() or 0):,}"
    )


@app.command()
def run(
    library: str,
    rank_budget: Annotated[int, typer.Option(help="transitions per ranking run")] = (
        pipeline.DEFAULT_RANK_BUDGET
    ),
    train_budget: Annotated[int, typer.Option(help="transitions per reference run")] = (
        pipeline.DEFAULT_TRAIN_BUDGET
    ),
    top_n: Annotated[int, typer.Option(help="best compatible candidates per env")] = 3,
    candidate: Annotated[
        list[str] | None, typer.Option("--candidate", help="only these candidates")
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="reference runs on these env ids only (default: all)"),
    ] = None,
    seed: SeedOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    backend: BackendOpt = "venv",
    random_episodes: RandomEpisodesOpt = pipeline.DEFAULT_RANDOM_EPISODES,
    root: RootOpt = None,
) -> None:
    """Run rank -> train -> filter, resumable: finished runs are never redone or duplicated.

    Ranking always uses the library's 5-env ranking subset; `--env` narrows the reference runs
    (a library of 57 Atari games at a smoke-test budget, say).
    """
    ex = _executor(executor, address, workers)
    data_root = _root(root)
    try:
        spec = get_library(library)
        for env_id in env or []:  # a typo in --env fails now, not after the whole ranking
            spec.env(env_id)
        pipeline.rank(
            library,
            executor=ex,
            root=data_root,
            budget=rank_budget,
            seeds=seed or [0],
            candidates=candidate,
            backend=backend,
        )
        pipeline.train(
            library,
            executor=ex,
            root=data_root,
            top_n=top_n,
            budget=train_budget,
            seeds=seed or [0],
            env_ids=env,
            backend=backend,
        )
        table = pipeline.filter_runs(
            library, root=data_root, backend=backend, random_episodes=random_episodes
        )
    except (LdmEnvsError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    if table.height:
        _print_decisions(table, library)


if __name__ == "__main__":  # pragma: no cover - `python -m ldm_autorl.cli`
    app()
