"""The `ldm-eval` command line: evaluate a checkpoint, rebuild a report."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ldm_envs.cli_app import make_app
from ldm_envs.cli_options import config_options, field_default, field_help, field_option
from ldm_envs.console import make_console
from ldm_envs.inputs import require_positive
from ldm_eval.plan import EvaluateConfig
from ldm_eval.suite import STAGES
from ldm_model.training.config import TrainConfig

app = make_app(
    "Evaluate the LDM with the paper's protocol: reference-normalized scores, threshold "
    "curves, IQM with bootstrap CIs, plots, an HTML report; tracked in MLflow.",
    renamed_options={"--root": "--dataset", "--output": "--out"},
)
# wide enough off a terminal (`> log`): see ldm_envs.console
console = make_console()
err = make_console(stderr=True)


def _warn(message: str) -> None:
    """One `warning: ...` line on stderr (a skipped corrupt checkpoint, say)."""
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _check_evaluate(values: Mapping[str, Any]) -> None:
    """The checks that name the option, before the venv build and the first rollouts."""
    from ldm_model.devices import check_device

    # torch would refuse it only at the first rollout
    check_device(values["device"], field="--device", available=values["checkpoint"] is not None)
    require_positive("--context", values["context"])
    require_positive("--resamples", values["resamples"])


@app.command()
@config_options(
    EvaluateConfig,
    field_option("backend", "--backend", "-b"),
    "random_baseline",
    "episodes",
    "rollouts",
    "seed",
    field_option("num_workers", "--workers"),
    "batch_size",
    "retries",
    "device",
    "context",
    "resamples",
    check=_check_evaluate,
)
def evaluate(
    checkpoint: Annotated[
        str | None,
        typer.Argument(
            help="LDM checkpoint: a run or step folder, or a store URL (s3://.../run-1); leave "
            "out to evaluate the random baseline only"
        ),
    ] = None,
    library: Annotated[
        list[str] | None,
        typer.Option(
            "--library", "-l", help="library to evaluate, repeatable (default: trained ones)"
        ),
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="only these env ids, repeatable")
    ] = None,
    *,
    config: EvaluateConfig,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset", "-d", help="dataset root with the index (default: the checkpoint's)"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="run folder (default <data home>/eval/...)")
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="log to MLflow")] = True,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="start over instead of resuming the same evaluation")
    ] = False,
) -> None:
    """Run the protocol on a checkpoint (and a random baseline); write tables, plots, report.

    Per env: ROLLOUTS fresh rollouts of EPISODES episodes, empty context at the start of each,
    argmax actions; scores normalized against the env's reference run in the dataset index.
    The same command again resumes an interrupted evaluation.
    """
    from ldm_eval.checkpoint import read_checkpoint
    from ldm_eval.plan import plan_evaluate
    from ldm_model.training.checkpoint.store import is_store_url

    if checkpoint is None and not config.random_baseline:
        raise ValueError("nothing to evaluate: give a CHECKPOINT or keep --random-baseline")
    if checkpoint is not None and not is_store_url(checkpoint) and not Path(checkpoint).exists():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    info = None
    if checkpoint is not None:  # a run folder: its newest valid checkpoint, said so
        info = read_checkpoint(checkpoint, report=_warn)
    plan = plan_evaluate(info, config, libraries=library, env_ids=env)
    outcome = plan.run(
        out_dir=out,
        dataset_root=dataset,
        track=track,
        resume=not fresh,
        n_resamples=config.resamples,
        console=err,
    )
    console.print(f"results: {outcome.run_dir.path}", highlight=False)
    if outcome.mlflow_run_id:
        console.print(f"MLflow run: {outcome.mlflow_run_id}", highlight=False)


@app.command()
def report(
    source: Annotated[str, typer.Argument(help="an evaluation's run folder, or its MLflow run id")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")] = Path(
        "report.html"
    ),
    resamples: Annotated[
        int, typer.Option(help=field_help(EvaluateConfig, "resamples"))
    ] = field_default(EvaluateConfig, "resamples"),
) -> None:
    """Write the self-contained HTML report of an evaluation (complete or partial)."""
    from ldm_eval.report import write_report
    from ldm_eval.results import EvalRunDir
    from ldm_eval.tables import compute_tables

    require_positive("--resamples", resamples)
    path = Path(source)
    if path.is_dir():
        tables = compute_tables(EvalRunDir(path), n_resamples=resamples)
        write_report(tables, out)
    else:
        with tempfile.TemporaryDirectory(prefix="ldm-eval-") as tmp:
            folder = _download(source, Path(tmp))
            tables = compute_tables(EvalRunDir(folder), n_resamples=resamples)
            write_report(tables, out)
    if not tables.complete:
        err.print("[yellow]partial evaluation:[/] the report marks what is missing")
    console.print(f"report: {out.resolve()}", highlight=False)


@app.command()
def suite(
    path: Annotated[Path, typer.Argument(help="suite file (YAML), e.g. suites/quickstart.yaml")],
    from_stage: Annotated[
        str | None,
        typer.Option(
            "--from-stage", help=f"run this stage and the later ones again ({', '.join(STAGES)})"
        ),
    ] = None,
    only: Annotated[
        str | None, typer.Option("--only", help="run only this stage, even if finished")
    ] = None,
) -> None:
    """Run the whole pipeline of a suite file: probe, autorl, train, eval, report.

    Re-running the same command skips the stages that finished with the same inputs; a failed
    or interrupted stage resumes. Stage record: <data home>/suites/<name>/stages.json.
    """
    from ldm_eval.suite import StageError, load_suite, run_suite

    try:  # a SuiteError (the file or an option, refused before any stage ran) exits 2
        spec = load_suite(path)
        run_suite(spec, from_stage=from_stage, only=only, console=console)
    except StageError as exc:  # told as the stage, its command and the cause
        err.print(f"[bold red]error:[/] stage [bold]{exc.stage}[/] failed", highlight=False)
        err.print(f"  command: {escape(exc.command)}", highlight=False, soft_wrap=True)
        err.print(f"  cause: {escape(exc.cause)}", highlight=False, soft_wrap=True)
        if exc.__cause__ is not None:  # not a failure the stage explained: show where it arose
            err.print_exception()
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted:[/] the stage is recorded as interrupted; run the same command "
            "again to resume it",
            highlight=False,
        )
        raise typer.Exit(130) from None


@app.command()
def sizes(
    dataset: Annotated[
        Path, typer.Option("--dataset", "-d", help="dataset root (an ldm-autorl data root)")
    ],
    config: Annotated[
        list[str],
        typer.Option("--config", "-c", help="named model config, repeatable, small to large"),
    ],
    steps: Annotated[int, typer.Option(help="training steps of every size")] = 300,
    batch_size: Annotated[int, typer.Option(help="windows per step of every size")] = 32,
    context: Annotated[
        int | None, typer.Option(help="window length (default: the smallest config context)")
    ] = None,
    library: Annotated[
        list[str] | None,
        typer.Option("--library", "-l", help="train on this library only, repeatable"),
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="train on these env ids only, repeatable")
    ] = None,
    lr: Annotated[float, typer.Option(help=field_help(TrainConfig, "lr"))] = field_default(
        TrainConfig, "lr"
    ),
    seed: Annotated[int, typer.Option(help="training seed and env seed of rollout 0")] = 0,
    device: Annotated[str, typer.Option(help="training device: auto, cpu, cuda")] = field_default(
        TrainConfig, "device"
    ),
    episodes: Annotated[
        int, typer.Option(help=field_help(EvaluateConfig, "episodes"))
    ] = field_default(EvaluateConfig, "episodes"),
    rollouts: Annotated[
        int, typer.Option(help=field_help(EvaluateConfig, "rollouts"))
    ] = field_default(EvaluateConfig, "rollouts"),
    backend: Annotated[
        str, typer.Option("--backend", "-b", help=field_help(EvaluateConfig, "backend"))
    ] = field_default(EvaluateConfig, "backend"),
    workers: Annotated[int | None, typer.Option(help="env worker processes per library")] = None,
    eval_device: Annotated[
        str, typer.Option(help="where the model acts when evaluated")
    ] = field_default(EvaluateConfig, "device"),
    torch_threads: Annotated[
        int | None, typer.Option(help=field_help(EvaluateConfig, "torch_threads"))
    ] = None,
    resamples: Annotated[
        int, typer.Option(help=field_help(EvaluateConfig, "resamples"))
    ] = field_default(EvaluateConfig, "resamples"),
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="output folder (default <data home>/model-sizes/...)"),
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="log to MLflow")] = True,
) -> None:
    """Compare model sizes: same data, same steps x batch, the paper's protocol on each.

    Per size: share of envs at >= 80% and >= 100% of reference, IQM with its bootstrap CI.
    Writes model_sizes.csv and model_sizes.png; finished sizes are not trained again.
    """
    from rich.table import Table

    from ldm_eval.model_sizes import SizesConfig, compare_sizes
    from ldm_eval.protocol import EvalConfig
    from ldm_model.devices import check_device

    check_device(device, field="--device", allow_auto=True)
    check_device(eval_device, field="--eval-device")
    settings = SizesConfig(
        data_root=dataset,
        configs=tuple(config),
        steps=steps,
        batch_size=batch_size,
        context=context,
        libraries=library,
        env_ids=env,
        lr=lr,
        seed=seed,
        device=device,
        protocol=EvalConfig(
            episodes=episodes,
            rollouts=rollouts,
            seed=seed,
            backend=backend,
            num_workers=workers,
        ),
        eval_device=eval_device,
        torch_threads=torch_threads,
        resamples=resamples,
        out=out,
        track=track,
    )
    outcome = compare_sizes(settings, console=err)

    def pct(value: float | None) -> str:
        return "" if value is None or value != value else f"{100 * value:.0f}"

    table = Table(title=f"model sizes: {steps} steps x {batch_size} windows each")
    for col in ("config", "params", "transitions", "train s", "scored", ">=80%", ">=100%"):
        table.add_column(col, justify="right")
    table.add_column("IQM % [95% CI]", justify="right")
    for r in outcome.table.iter_rows(named=True):
        table.add_row(
            r["config"],
            f"{r['parameters'] / 1e6:.2f}M",
            f"{r['transitions']:,}",
            "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
            f"{r['envs_scored']}/{r['envs']}",
            pct(r["share_ge_80"]),
            pct(r["share_ge_100"]),
            f"{pct(r['iqm'])} [{pct(r['iqm_ci_low'])}, {pct(r['iqm_ci_high'])}]",
        )
    console.print(table)
    console.print(f"table: {outcome.csv}", highlight=False, soft_wrap=True)
    console.print(f"per env: {outcome.per_env_csv}", highlight=False, soft_wrap=True)
    console.print(f"plot: {outcome.png}", highlight=False, soft_wrap=True)
    if outcome.mlflow_run_id:
        console.print(f"MLflow run: {outcome.mlflow_run_id}", highlight=False)


def _download(run_id: str, into: Path) -> Path:
    """Fetch an evaluation run's `eval/` artifacts (its run folder) from MLflow.

    Raises:
        FileNotFoundError: no such run, or a run without an evaluation folder.
    """
    from ldm_envs import tracking

    tracking.setup()
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="eval", dst_path=str(into)
        )
    except (MlflowException, OSError) as exc:
        raise FileNotFoundError(
            f"{run_id!r} is neither an evaluation folder nor an MLflow run with an `eval/` "
            f"artifact folder ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    return Path(local)


if __name__ == "__main__":  # pragma: no cover
    app()
