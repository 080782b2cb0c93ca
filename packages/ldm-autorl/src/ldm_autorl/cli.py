"""The `ldm-autorl` command line: list, rank, train, filter, show, verify, export, run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.markup import escape
from rich.table import Table

from ldm_autorl import layout, pipeline
from ldm_autorl.config import AutoRLConfig
from ldm_envs.cli_app import make_app
from ldm_envs.cli_options import config_options, field_option
from ldm_envs.console import make_console
from ldm_envs.errors import BadInputError, LDMEnvsError
from ldm_envs.plugins import get_library

app = make_app(
    "AutoRL reference policies: rank SB3 candidates, train the best on every env while "
    "recording, relabel, filter; everything tracked in MLflow.",
    renamed_options={"--root": "--dataset", "--workers": "--parallel"},
    renamed_commands={"candidates": "list", "dataset": "show"},
)
# wide enough off a terminal (`> log`): see ldm_envs.console
console = make_console()
err = make_console(stderr=True)

DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        "-d",
        help="dataset root: a folder (default <data home>/autorl), or for rank, train and "
        "filter a store URL (s3://bucket/prefix, gs://..., file://...)",
    ),
]
BACKEND = field_option("backend", "--backend", "-b")
SEEDS = field_option("seeds", "--seed")
CANDIDATES = field_option("candidates", "--candidate")
ENVS = field_option("envs", "--env")
#: How the stage runs: the executor, its address, parallel runs.
EXECUTION = ("executor", "address", "parallel")


def _root(root: str | None) -> Path:
    """A local dataset root; the commands that read it in place refuse a store URL."""
    if root is None:
        return layout.default_root()
    if "://" in root and not root.startswith("file://"):
        raise BadInputError(
            "--dataset",
            f"{root}: this command needs a local folder (rank, train, filter take URLs)",
        )
    return Path(root.removeprefix("file://")).expanduser()


def _stage_root(root: str | None) -> Path | str:
    """A stage's root: a local folder or a store URL (`ldm_autorl.remote`)."""
    return root if root and "://" in root else _root(root)


def _check_options(
    *,
    counts: dict[str, int | None] | None = None,
    executor: str | None = None,
    parallel: int | None = None,
    backend: str | None = None,
    candidates: list[str] | None = None,
    random_episodes: int | None = None,
    max_restarts: int | None = None,
) -> None:
    """Refuse bad option values before any executor, MLflow run or training starts.

    A budget of 0 used to launch real runs that trained nothing (recorded as `b0`), a
    `--top-n 0` trained nothing and exited 0, and a mistyped backend failed only after the
    stage's MLflow run was opened; each now stops here with one line naming the option.

    Raises:
        BadInputError: naming the option (exit code 2 through `ldm_envs.cli_errors`).
    """
    from ldm_autorl.executors import EXECUTORS
    from ldm_envs.backends import check_backend
    from ldm_envs.inputs import require_at_least, require_choice, require_positive

    for option, value in (counts or {}).items():
        require_positive(option, value)
    if executor is not None:
        require_choice("--executor", executor, EXECUTORS, what="executor")
    require_positive("--parallel", parallel)
    if backend is not None:
        check_backend(backend, field="--backend")
    require_at_least("--random-episodes", random_episodes, 0, meaning="no random baseline")
    require_at_least("--max-restarts", max_restarts, 0, meaning="fail at the first restart")
    _check_candidates(candidates)


def _check(*counts: tuple[str, str]) -> Callable[[Mapping[str, Any]], None]:
    """A `config_options` check: `_check_options` on the fields the command has.

    `counts` pairs an option that must be positive with its field (`("--budget",
    "rank_budget")`).
    """

    def check(values: Mapping[str, Any]) -> None:
        _check_options(
            counts={option: values[name] for option, name in counts},
            executor=values.get("executor"),
            parallel=values.get("parallel"),
            backend=values.get("backend"),
            candidates=values.get("candidates"),
            random_episodes=values.get("random_episodes"),
            max_restarts=values.get("max_restarts"),
        )

    return check


def _check_candidates(names: list[str] | None) -> None:
    """Every `--candidate` must be registered (a broken one is refused with its reason).

    Raises:
        BadInputError: naming `--candidate`, the unknown names and the known ones.
    """
    if not names:
        return
    from ldm_autorl.candidates import UnknownCandidateError
    from ldm_autorl.candidates import registry as candidate_registry
    from ldm_envs.errors import BadInputError

    reg = candidate_registry()
    unknown = []
    for name in names:
        try:
            reg.get(name)
        except UnknownCandidateError:
            unknown.append(name)
    if unknown:
        raise BadInputError(
            "--candidate",
            f"unknown candidate(s) {', '.join(map(repr, unknown))}; known candidates: "
            f"{', '.join(reg.names()) or '(none installed)'}",
        )


def _executor(config: AutoRLConfig):
    from ldm_autorl.executors import LocalExecutor, make_executor

    name, address, parallel = config.executor, config.address, config.parallel
    if name == "local" and address is None:
        # tasks fork from a server that imported torch/SB3/MLflow once
        return LocalExecutor(max_workers=parallel, preload=["ldm_autorl.preload"])
    try:
        return make_executor(name, address=address, max_workers=parallel)
    except ImportError as exc:  # Ray is an extra: say which one, without a traceback
        raise LDMEnvsError(str(exc)) from None


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


def _print_ranking(table: pl.DataFrame, outcome: pipeline.StageOutcome, library: str) -> None:
    _print_frame(table, f"ranking of {library} ({len(outcome.results)} runs)")


def _print_frame(df: pl.DataFrame, title: str) -> None:
    table = Table(title=title)
    for col in df.columns:
        table.add_column(col, overflow="fold")
    for row in df.iter_rows():
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command("list")
def list_candidates(
    library: str,
    candidate: Annotated[
        list[str] | None,
        typer.Option("--candidate", help="only these candidates (exit 2 if one is unknown)"),
    ] = None,
) -> None:
    """List the candidates per env: which apply, and why the others do not; then broken plugins."""
    from ldm_autorl.candidates import compatibility_table
    from ldm_envs.plugins import get_library

    spec = get_library(library)
    _check_candidates(candidate)
    df = compatibility_table(spec)
    if candidate:
        df = df.filter(pl.col("candidate").is_in(candidate))
    for env_id in df["env_id"].unique(maintain_order=True).to_list():
        sub = df.filter(pl.col("env_id") == env_id)
        ok = sub.filter(pl.col("compatible"))["candidate"].to_list()
        console.print(f"[bold]{env_id}[/]: {len(ok)} candidates: {', '.join(ok) or '-'}")
        for row in sub.filter(~pl.col("compatible")).iter_rows(named=True):
            reason = escape(row["reason"])
            console.print(f"    [dim]{row['candidate']}: {reason}[/]", highlight=False)
    if not candidate:  # the one place broken plugins speak up unasked (as `ldm-envs list`)
        from ldm_autorl.candidates import registry as candidate_registry

        for name, why in sorted(candidate_registry().broken.items()):
            kind = "candidate" if ":" in name else "plugin"
            console.print(f"[yellow]broken {kind} {name}:[/] {escape(why)}", highlight=False)


@app.command()
@config_options(
    AutoRLConfig,
    field_option("rank_budget", "--budget"),
    SEEDS,
    CANDIDATES,
    *EXECUTION,
    BACKEND,
    "max_restarts",
    check=_check(("--budget", "rank_budget")),
)
def rank(library: str, *, config: AutoRLConfig, dataset: DatasetOpt = None) -> None:
    """Train compatible candidates on the 5-env subset; rank them by one-tailed Welch points.

    Another `--seed` or `--backend` at the same budget adds runs to that budget's ranking.
    """
    table, outcome = pipeline.rank(
        library,
        executor=_executor(config),
        root=_stage_root(dataset),
        budget=config.rank_budget,
        seeds=config.seeds,
        candidates=config.candidates,
        backend=config.backend,
        max_restarts=config.max_restarts,
    )
    _print_ranking(table, outcome, library)
    if outcome.failures:
        raise typer.Exit(1)


@app.command()
@config_options(
    AutoRLConfig,
    "top_n",
    field_option("train_budget", "--budget"),
    SEEDS,
    ENVS,
    *EXECUTION,
    BACKEND,
    "max_restarts",
    check=_check(("--top-n", "top_n"), ("--budget", "train_budget")),
)
def train(library: str, *, config: AutoRLConfig, dataset: DatasetOpt = None) -> None:
    """Reference runs of the top-N candidates on every env, recorded and relabeled."""
    outcome = pipeline.train(
        library,
        executor=_executor(config),
        root=_stage_root(dataset),
        top_n=config.top_n,
        budget=config.train_budget,
        seeds=config.seeds,
        env_ids=config.envs,
        backend=config.backend,
        max_restarts=config.max_restarts,
    )
    console.print(
        f"{len(outcome.results)} reference runs finished ({outcome.skipped} earlier), "
        f"{len(outcome.failures)} failed"
    )
    if outcome.failures:
        raise typer.Exit(1)


@app.command("filter")
@config_options(AutoRLConfig, BACKEND, "random_episodes", check=_check())
def filter_(library: str, *, config: AutoRLConfig, dataset: DatasetOpt = None) -> None:
    """Apply the improvement, performance and better-than-random filters; rebuild the index.

    The table shows each run's last-10% return beside a random policy's and the best score
    rl-baselines3-zoo publishes for the env (`pct_of_zoo`: 0 = random, 1 = zoo).
    """
    table = pipeline.filter_runs(
        library,
        root=_stage_root(dataset),
        backend=config.backend,
        random_episodes=config.random_episodes,
    )
    if table.height:
        _print_decisions(table, library)
    else:
        console.print(f"no reference runs for {library}: run `ldm-autorl train {library}`")


@app.command("show")
def show_dataset(
    dataset: DatasetOpt = None,
    library: Annotated[
        str | None, typer.Option("--library", "-l", help="only this library")
    ] = None,
) -> None:
    """Show the dataset's index: envs, runs kept and dropped (and why), transitions.

    Shards gone since the index was built are found first (their runs go back to to-do, the
    index is rebuilt without them), each named in a warning line.
    """
    from ldm_autorl.verify import refresh_index
    from ldm_envs.dataset.index import read_index

    refresh_index(_root(dataset), say=_warning)
    runs, _episodes = read_index(_root(dataset))
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


def _warning(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@app.command("verify")
def verify_(
    dataset: DatasetOpt = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="quarantine corrupt shards, reset their runs, clean, rebuild the index"
        ),
    ] = False,
) -> None:
    """Check a whole data root: every shard's CRC, the index against the files, orphans, runs.

    Exits 1 when problems are found without --repair.
    """
    from ldm_autorl.verify import verify_root

    data_root = _root(dataset)
    if not data_root.is_dir():
        raise FileNotFoundError(f"no data root at {data_root}")
    with console.status(f"reading every shard under {data_root}"):
        report = verify_root(data_root, repair=repair, say=_warning)
    summary = (
        f"{report.shards} shard(s), {report.bytes / 2**20:,.1f} MiB read in {report.seconds:.1f} s"
    )
    if report.ok:
        console.print(f"[green]ok[/]: {summary}, no problem found under {data_root}")
        return
    table = Table(title=f"problems {'repaired ' if repair else ''}under {data_root}")
    for col in ("kind", "path", "run", "detail", "repaired" if repair else "--repair would"):
        table.add_column(col, overflow="fold")
    for p in report.problems:
        table.add_row(p.kind, p.path, p.run_key or "-", p.detail, p.repair)
    console.print(table)
    console.print(f"{len(report.problems)} problem(s); {summary}")
    if not repair:
        console.print(f"run `ldm-autorl verify --dataset {data_root} --repair` to fix them")
        raise typer.Exit(1)


@app.command("export")
def export_(
    format_: Annotated[
        str, typer.Option("--format", help="minari (a Minari dataset) | hf (datasets folder)")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="output folder, outside the data root (Minari: its datasets path)"
        ),
    ],
    actions: Annotated[
        str, typer.Option("--actions", help="relabeled (final policy's) | taken (in training)")
    ] = "relabeled",
    library: Annotated[
        list[str] | None, typer.Option("--library", "-l", help="only this library, repeatable")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="only this env id, repeatable")
    ] = None,
    env_spec: Annotated[
        str,
        typer.Option(
            "--env-spec",
            help="Minari env spec: auto (where the env can be made here) | require | none",
        ),
    ] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace datasets already exported")
    ] = False,
    dataset: DatasetOpt = None,
) -> None:
    """Write the kept runs as one Minari dataset or Hugging Face folder per (library, env).

    Minari ids are `ldm/<library>/<env>/<actions>-v0` under --out (load them with
    MINARI_DATASETS_PATH=<out>); hf folders are `<out>/<library>/<env>/<actions>`
    (`datasets.load_from_disk`). See `ldm_autorl.export` for what each holds.
    """
    from ldm_autorl.export import export
    from ldm_autorl.verify import refresh_index

    data_root = _root(dataset)
    refresh_index(data_root, say=_warning)
    written = export(
        data_root,
        out,
        format=format_,
        actions=actions,
        libraries=library,
        env_ids=env,
        env_spec=env_spec,
        overwrite=overwrite,
        say=_warning,
    )
    table = Table(title=f"exported ({format_}, {actions} actions) to {out}")
    for col in ("library", "env", "runs", "episodes", "steps", "env spec", "dataset"):
        table.add_column(col, overflow="fold")
    for d in written:
        spec = "-" if d.format == "hf" else ("yes" if d.env_spec else "no")
        cells = (d.library, d.env_id, str(d.runs), f"{d.episodes:,}", f"{d.steps:,}", spec)
        table.add_row(*cells, d.dataset_id or d.path)
    console.print(table)
    if format_ == "minari":
        console.print(f"load with MINARI_DATASETS_PATH={out} and minari.load_dataset(<dataset>)")


@app.command()
@config_options(
    AutoRLConfig,
    "rank_budget",
    "train_budget",
    "top_n",
    CANDIDATES,
    ENVS,
    SEEDS,
    *EXECUTION,
    BACKEND,
    "random_episodes",
    "max_restarts",
    check=_check(
        ("--rank-budget", "rank_budget"), ("--train-budget", "train_budget"), ("--top-n", "top_n")
    ),
)
def run(library: str, *, config: AutoRLConfig, dataset: DatasetOpt = None) -> None:
    """Run rank -> train -> filter, resumable: finished runs are never redone or duplicated.

    Ranking always uses the library's 5-env ranking subset; `--env` narrows the reference runs
    (a library of 57 Atari games at a smoke-test budget, say).
    """
    data_root = _stage_root(dataset)
    ex = _executor(config)
    spec = get_library(library)
    for env_id in config.envs or []:  # a typo in --env fails now, not after the whole ranking
        spec.env(env_id)
    ranking, ranked = pipeline.rank(
        library,
        executor=ex,
        root=data_root,
        budget=config.rank_budget,
        seeds=config.seeds,
        candidates=config.candidates,
        backend=config.backend,
        max_restarts=config.max_restarts,
    )
    _print_ranking(ranking, ranked, library)  # then `train` prints the top-N each env gets
    pipeline.train(
        library,
        executor=ex,
        root=data_root,
        top_n=config.top_n,
        budget=config.train_budget,
        seeds=config.seeds,
        env_ids=config.envs,
        backend=config.backend,
        max_restarts=config.max_restarts,
    )
    table = pipeline.filter_runs(
        library, root=data_root, backend=config.backend, random_episodes=config.random_episodes
    )
    if table.height:
        _print_decisions(table, library)


if __name__ == "__main__":  # pragma: no cover - `python -m ldm_autorl.cli`
    app()
