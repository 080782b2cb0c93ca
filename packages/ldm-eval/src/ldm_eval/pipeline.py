"""An evaluation end to end: plan the envs, run the protocol, score, plot, report, track.

`plan_envs` picks the envs (by default those the checkpoint was trained on) and flags the ones
of libraries it never saw; `evaluate` runs the protocol for the LDM and the random baseline
side by side, saves every finished rollout in the run folder as it comes, then writes the
tables, plots and HTML report and logs them all to one MLflow run in `ldm-eval/<library>`
(`all` when several libraries are evaluated), tagged with the checkpoint's training run
(`ldm.checkpoint_run_id`).

Running the same evaluation again (same checkpoint, envs, policies and protocol) finds its
folder and its MLflow run by a key derived from those, and resumes: finished rollouts are not
run again, nor duplicated in MLflow. An interrupted evaluation still leaves its partial tables
and report (marked partial) behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ldm_envs import tracking
from ldm_envs.backends import Backend
from ldm_envs.dataset.index import RUNS_SCHEMA, read_index
from ldm_envs.paths import data_home
from ldm_envs.paths import dataset_root as default_dataset_root
from ldm_envs.plugins import get_library
from ldm_eval.checkpoint import CheckpointProvenance
from ldm_eval.normalize import REFERENCE_RULE, REFERENCE_SCHEMA, reference_runs
from ldm_eval.plots import figure_png, figures
from ldm_eval.policies import PolicyFactory
from ldm_eval.protocol import EnvTarget, EvalConfig, RolloutKey, RolloutResult, run_protocol
from ldm_eval.report import write_report
from ldm_eval.results import EvalManifest, EvalRunDir, PlannedEnv, ResultWriter
from ldm_eval.scores import ROLLOUT_SCHEMA, score_envs
from ldm_eval.tables import EvalTables, compute_tables

__all__ = [
    "TAG_CHECKPOINT_PATH",
    "TAG_CHECKPOINT_RUN",
    "EvalOutcome",
    "eval_key",
    "evaluate",
    "log_to_mlflow",
    "plan_envs",
    "score_policies",
]

TAG_CHECKPOINT_RUN = "ldm.checkpoint_run_id"
TAG_CHECKPOINT_PATH = "ldm.checkpoint_path"
TAG_LIBRARIES = "ldm.eval.libraries"
TAG_POLICIES = "ldm.eval.policies"
TAG_PARTIAL = "ldm.eval.partial"


def plan_envs(
    checkpoint: CheckpointProvenance | None,
    libraries: Sequence[str] | None = None,
    env_ids: Sequence[str] | None = None,
) -> tuple[list[PlannedEnv], list[str]]:
    """The envs to evaluate, with trained flags, and the warnings a reader must see.

    Args:
        checkpoint: what the model was trained on (None: baselines only, flags unknown).
        libraries: libraries to evaluate (default: those the checkpoint was trained on). For a
            library the checkpoint was trained on, its trained envs; for another one, every
            env its manifest declares (flagged `trained_library=False`, with a warning).
        env_ids: keep only these env ids.

    Raises:
        ValueError: no library given and none known from the checkpoint, or an env id that no
            selected library declares (the message lists the declared ones).
        UnknownLibraryError: a library that is not installed (listing the known ones).
    """
    warnings: list[str] = []
    trained = None if checkpoint is None else checkpoint.envs
    trained_pairs = None if trained is None else {(e.library, e.env_id) for e in trained}
    trained_libs = None if trained is None else sorted({e.library for e in trained})
    if checkpoint is not None and trained is None:
        warnings.append(
            f"checkpoint {checkpoint.path} does not record the envs it was trained on: "
            "trained flags are unknown"
        )
    libs = list(libraries or trained_libs or [])
    if not libs:
        raise ValueError("name the libraries to evaluate (--library): none known from a checkpoint")
    planned: list[PlannedEnv] = []
    for library in libs:
        spec = get_library(library)
        knows_lib = None if trained_libs is None else library in trained_libs
        if knows_lib is False:
            warnings.append(
                f"the checkpoint was not trained on library {library!r} (trained on: "
                f"{', '.join(trained_libs or [])}): its envs are evaluated and flagged "
                "trained_library = no"
            )
        if knows_lib and trained is not None:
            ids = [e.env_id for e in trained if e.library == library]
            gone = [e for e in ids if e not in spec.env_ids]
            if gone:
                warnings.append(
                    f"library {library!r} no longer declares trained env(s) {', '.join(gone)}: "
                    "skipped"
                )
            ids = [e for e in ids if e in spec.env_ids]
        else:
            ids = list(spec.env_ids)
        if env_ids:
            ids = [e for e in ids if e in env_ids]
        for env_id in ids:
            env = spec.env(env_id)
            planned.append(
                PlannedEnv(
                    library=library,
                    env_id=env_id,
                    observation_space=env.observation_space.describe()
                    if env.observation_space
                    else None,
                    action_space=env.action_space.describe() if env.action_space else None,
                    trained_library=knows_lib,
                    trained_env=None
                    if trained_pairs is None
                    else (library, env_id) in trained_pairs,
                )
            )
    if env_ids:
        found = {p.env_id for p in planned}
        unknown = [e for e in env_ids if e not in found]
        if unknown:
            declared = sorted({e for lib in libs for e in get_library(lib).env_ids})
            raise ValueError(
                f"env id(s) {', '.join(unknown)} not among the selected envs of "
                f"{', '.join(libs)}; declared: {', '.join(declared)}"
            )
    if not planned:
        raise ValueError(f"no env to evaluate in {', '.join(libs)}")
    return planned, warnings


def eval_key(
    checkpoint: CheckpointProvenance | None,
    envs: Sequence[PlannedEnv],
    policies: Sequence[str],
    config: EvalConfig,
    *,
    context: int | None = None,
) -> str:
    """What identifies an evaluation (its folder and its MLflow run): a 16-hex-digit hash.

    `context` (the LDM's context at evaluation) changes results, so a non-default one is part
    of the key; the default (None: the trained context) is left out, so keys made before it
    counted stay the same and finished evaluations are not rerun.
    """
    ckpt = None
    if checkpoint is not None:
        ckpt = checkpoint.run_id or str(checkpoint.path.expanduser().resolve())
    fields: dict[str, Any] = {
        "checkpoint": ckpt,
        "envs": [[e.library, e.env_id] for e in envs],
        "policies": list(policies),
        "config": config.model_dump(mode="json"),
    }
    if context is not None:
        fields["context"] = context
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def policy_context(policies: Mapping[str, PolicyFactory]) -> int | None:
    """The context an LDM policy factory was given (None: trained context, or no LDM)."""
    return getattr(policies.get("ldm"), "context", None)


def _library_label(envs: Sequence[PlannedEnv]) -> str:
    libs = sorted({e.library for e in envs})
    return libs[0] if len(libs) == 1 else "all"


def _references(
    dataset_root: Path, envs: Sequence[PlannedEnv], warnings: list[str]
) -> pl.DataFrame:
    pairs = [(e.library, e.env_id) for e in envs]
    try:
        runs, episodes = read_index(dataset_root)
    except FileNotFoundError as exc:
        warnings.append(f"{exc}: no reference runs, nothing can be normalized")
        return reference_runs(pl.DataFrame(schema=RUNS_SCHEMA), pl.DataFrame(), pairs)
    return reference_runs(runs, episodes, pairs)


@dataclass
class EvalOutcome:
    """Where an evaluation's results went."""

    run_dir: EvalRunDir
    tables: EvalTables
    report: Path
    mlflow_run_id: str | None


def _done_keys(rollouts: pl.DataFrame) -> tuple[set[RolloutKey], dict[RolloutKey, int]]:
    """Rollouts whose last attempt is `ok` or `timeout` (final), and attempts per rollout."""
    done: set[RolloutKey] = set()
    attempts: dict[RolloutKey, int] = {}
    for row in rollouts.sort("attempt").iter_rows(named=True):
        key = (row["policy"], row["library"], row["env_id"], row["rollout"])
        attempts[key] = max(attempts.get(key, 0), row["attempt"])
        if row["status"] in ("ok", "timeout"):
            done.add(key)
        else:
            done.discard(key)
    return done, attempts


@contextlib.contextmanager
def _maybe_tracked(
    track: bool,
    manifest: EvalManifest,
    checkpoint: CheckpointProvenance | None,
    resume: bool,
    context: int | None = None,
) -> Iterator[tracking.RunHandle | None]:
    if not track:
        yield None
        return
    tags = {
        TAG_LIBRARIES: ",".join(sorted({e.library for e in manifest.envs})),
        TAG_POLICIES: ",".join(manifest.policies),
    }
    if checkpoint is not None:
        tags[TAG_CHECKPOINT_PATH] = str(checkpoint.path)
        if checkpoint.run_id:
            tags[TAG_CHECKPOINT_RUN] = checkpoint.run_id
    params = {
        **manifest.config.model_dump(mode="json"),
        "policies": manifest.policies,
        "envs": len(manifest.envs),
        "reference_rule": manifest.reference_rule,
        "dataset_root": manifest.dataset_root,
    }
    if context is not None:  # in the key too (`eval_key`); absent: the trained context
        params["context"] = context
    with tracking.tracked_run(
        "eval",
        _library_label(manifest.envs),
        f"eval/{manifest.run_key}",
        name=f"eval {manifest.name}",
        tags=tags,
        params=params,
        # a resumed evaluation adds to its run; a fresh one starts a new run
        reuse_finished=resume,
    ) as run:
        yield run


def evaluate(
    envs: Sequence[PlannedEnv],
    policies: Mapping[str, PolicyFactory],
    config: EvalConfig,
    *,
    out_dir: Path | None = None,
    checkpoint: CheckpointProvenance | None = None,
    dataset_root: Path | None = None,
    warnings: Sequence[str] = (),
    track: bool = True,
    resume: bool = True,
    n_resamples: int = 2000,
    backend: Backend | None = None,
    console: Console | None = None,
) -> EvalOutcome:
    """Evaluate `policies` on `envs` with the protocol; save, report and track everything.

    Args:
        envs: from `plan_envs`.
        policies: name -> factory (`{"ldm": LDMPolicyFactory(ckpt), "random": ...}`).
        config: the protocol.
        out_dir: the run folder (default `<data home>/eval/<name>`, name from the key).
        checkpoint: the checkpoint's provenance (links the MLflow run, names the folder).
        dataset_root: the dataset whose index gives the reference runs (default: the
            checkpoint's, else `ldm_envs.paths.dataset_root()`).
        warnings: shown in the report and logged (from `plan_envs`).
        track: log to MLflow.
        resume: continue an existing folder of the same evaluation (otherwise start over).
        n_resamples: bootstrap resamples for the CIs.
        backend: a backend instance overriding `config.backend` (tests).
        console: where progress goes.

    Raises:
        FileExistsError: `out_dir` holds a different evaluation.
    """
    console = console or Console(stderr=True)
    names = list(policies)
    key = eval_key(checkpoint, envs, names, config, context=policy_context(policies))
    stem = checkpoint.path.stem if checkpoint is not None else "baseline"
    name = f"{stem}-{key[:8]}"
    run_dir = EvalRunDir(out_dir or data_home() / "eval" / name)
    dataset_root = (
        dataset_root or (checkpoint.dataset_root if checkpoint else None) or default_dataset_root()
    )
    old = run_dir.read_manifest() if run_dir.exists() else None
    if old is not None:
        if old.run_key != key:
            raise FileExistsError(
                f"{run_dir.path} holds another evaluation ({old.name}); choose another --out"
            )
        if not resume:
            (run_dir.path / EvalRunDir.ROLLOUTS).unlink(missing_ok=True)
    notes = list(warnings)
    references = _references(dataset_root, envs, notes)
    run_dir.write_references(references)
    manifest = EvalManifest(
        run_key=key,
        name=name,
        config=config,
        policies=names,
        envs=list(envs),
        checkpoint=checkpoint,
        dataset_root=str(dataset_root) if dataset_root else None,
        reference_rule=REFERENCE_RULE,
        warnings=notes,
    )
    if old is not None and resume:
        manifest.created = old.created
    run_dir.write_manifest(manifest)
    for note in notes:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    writer = ResultWriter(run_dir, every_s=5.0)
    skip, attempts = _done_keys(writer.frame)
    targets = [EnvTarget(library=e.library, env_id=e.env_id) for e in envs]
    todo = len(names) * len(targets) * config.rollouts - len(skip)
    console.print(
        f"evaluating {', '.join(names)} on {len(targets)} env(s): {config.rollouts} rollouts x "
        f"{config.episodes} episodes each, {todo} rollout(s) to run -> {run_dir.path}",
        highlight=False,
    )
    if todo == 0 and old is not None and old.status == "complete" and resume:
        # nothing left to run: rebuild the local files, leave the MLflow run as it is
        manifest.status, manifest.mlflow_run_id = "complete", old.mlflow_run_id
        run_dir.write_manifest(manifest)
        outcome = _finish(run_dir, None, n_resamples, console)
        outcome.mlflow_run_id = old.mlflow_run_id
        return outcome
    with _maybe_tracked(
        track, manifest, checkpoint, resume, context=policy_context(policies)
    ) as run:
        if run is not None:
            manifest.mlflow_run_id = run.run_id
            run_dir.write_manifest(manifest)
        try:
            with _progress(console, todo) as advance:

                def on_result(res: RolloutResult) -> None:
                    writer.add(res)
                    advance(res)

                run_protocol(
                    targets,
                    policies,
                    config,
                    skip=skip,
                    previous_attempts=attempts,
                    on_result=on_result,
                    backend=backend,
                    console=console,
                )
        except BaseException as exc:
            # keep what finished and leave a partial report behind, then let the error through
            writer.flush()
            manifest.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run_dir.write_manifest(manifest)
            try:
                _finish(run_dir, run, n_resamples, console)
            except Exception as report_exc:  # the original error matters more
                console.print(
                    f"[red]could not write the partial report:[/] {escape(str(report_exc))}"
                )
            raise
        writer.flush()
        manifest.status = "complete"
        run_dir.write_manifest(manifest)
        return _finish(run_dir, run, n_resamples, console)


@contextlib.contextmanager
def _progress(console: Console, total: int) -> Iterator:
    """A progress bar of finished rollouts (quiet when the console is not a terminal)."""
    progress = Progress(
        TextColumn("rollouts"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("rollouts", total=max(total, 0), last="")

        def advance(res: RolloutResult) -> None:
            mark = "" if res.status == "ok" else f" [{res.status}]"
            progress.update(
                task, advance=1, last=f"{res.library}/{res.env_id} r{res.rollout}{mark}"
            )

        yield advance


def _finish(
    run_dir: EvalRunDir, run: tracking.RunHandle | None, n_resamples: int, console: Console
) -> EvalOutcome:
    """Tables, plots, report and MLflow logging of whatever the folder holds now."""
    tables = compute_tables(run_dir, n_resamples=n_resamples)
    tables.write(run_dir)
    figs = figures(tables.threshold, tables.summary, tables.scores)
    images = {name: figure_png(fig) for name, fig in figs.items()}
    run_dir.plots.mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        (run_dir.plots / name).write_bytes(png)
    report = write_report(tables, run_dir.report, images)
    if run is not None:
        log_to_mlflow(run, tables, run_dir, figs)
    _print_summary(tables, console)
    console.print(f"report: {report}", highlight=False)
    return EvalOutcome(run_dir, tables, report, run.run_id if run is not None else None)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def log_to_mlflow(
    run: tracking.RunHandle,
    tables: EvalTables,
    run_dir: EvalRunDir,
    figs: Mapping[str, object] | None = None,
) -> None:
    """Log an evaluation's metrics, tables, plots, raw files and report to its MLflow run.

    Metrics: `<policy>/<stat>` pooled and `<policy>/<stat>/<library>` per library (IQM,
    median, mean with `_low`/`_high` CI ends, shares at >= 80% and 100%, env counts), and the
    pooled threshold curve as the series `<policy>/frac_at_least` (step = threshold in %,
    every 5%; the full curve is in the `threshold_curve` table).
    The run folder's files go under `eval/` so `ldm-eval report RUN_ID` can rebuild the report.
    """
    metrics: dict[str, float] = {}
    stats = [c for c in tables.summary.columns if c not in ("policy", "library")]
    for row in tables.summary.iter_rows(named=True):
        suffix = "" if row["library"] == "all" else f"/{row['library']}"
        for stat in stats:
            if _finite(row[stat]):
                metrics[f"{row['policy']}/{stat}{suffix}"] = float(row[stat])
    run.log_summary(metrics)  # a resumed evaluation reopens its run: no second point
    # the pooled curve as a metric series, every 5% (one MLflow call per step: 31, not 151)
    pooled = tables.threshold.filter(
        (pl.col("library") == "all") & (pl.col("threshold_pct").cast(pl.Int64) % 5 == 0)
    )
    for step, part in pooled.group_by("threshold_pct", maintain_order=True):
        points = {
            f"{row['policy']}/frac_at_least": row["fraction"]
            for row in part.iter_rows(named=True)
            if _finite(row["fraction"])
        }
        if points:
            run.log_metrics(points, step=int(step[0]))
    run.set_tags({TAG_PARTIAL: str(not tables.complete).lower()})
    run.log_table(tables.per_env, "per_env")
    run.log_table(tables.summary, "summary")
    run.log_table(tables.threshold, "threshold_curve")
    for name, fig in (figs or figures(tables.threshold, tables.summary, tables.scores)).items():
        run.log_figure(fig, name)  # type: ignore[arg-type]
    for path in (
        run_dir.path / EvalRunDir.MANIFEST,
        run_dir.path / EvalRunDir.REFERENCES,
        run_dir.path / EvalRunDir.ROLLOUTS,
    ):
        if path.is_file():
            run.log_artifact(path, "eval")
    if run_dir.tables.is_dir():
        run.log_artifact(run_dir.tables, "eval/tables")
    if run_dir.report.is_file():
        run.log_artifact(run_dir.report)


def _print_summary(tables: EvalTables, console: Console) -> None:
    from rich.table import Table

    table = Table(title="normalized scores (% of reference)")
    for col in (
        "policy",
        "library",
        "scored",
        "failed",
        "missing",
        "IQM [95% CI]",
        "median",
        ">=80%",
    ):
        table.add_column(col)

    def pct(v: float | None) -> str:
        return "" if not _finite(v) else f"{100 * v:.1f}"  # type: ignore[operator]

    for r in tables.summary.iter_rows(named=True):
        table.add_row(
            r["policy"],
            r["library"],
            str(r["scored_envs"]),
            str(r["failed_envs"]),
            str(r["missing_envs"]),
            f"{pct(r['iqm'])} [{pct(r['iqm_low'])}, {pct(r['iqm_high'])}]",
            pct(r["median"]),
            pct(r["frac_at_least_80"]),
        )
    console.print(table)
    for note in tables.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def score_policies(
    envs: Sequence[EnvTarget],
    policies: Mapping[str, PolicyFactory],
    references: pl.DataFrame,
    config: EvalConfig | None = None,
    *,
    backend: Backend | None = None,
    console: Console | None = None,
) -> pl.DataFrame:
    """Run the protocol and score it in memory: no folder, no MLflow, no report.

    For the trainer's periodic evaluation: `aggregate.fraction_at_least(df["score"], 0.8)` over
    the scored rows is the paper's scaling metric (share of envs at >= 80% of reference).

    Args:
        envs: envs to evaluate.
        policies: name -> factory.
        references: `normalize.reference_runs` of (at least) these envs.
        config: the protocol (default: the paper's).
        backend: a backend instance overriding `config.backend`.
        console: where retries are reported.

    Returns:
        `scores.score_envs`'s frame.
    """
    config = config or EvalConfig()
    results = run_protocol(envs, policies, config, backend=backend, console=console)
    frame = pl.DataFrame([r.model_dump() for r in results], schema=ROLLOUT_SCHEMA)
    refs = references if not references.is_empty() else pl.DataFrame(schema=REFERENCE_SCHEMA)
    return score_envs(
        frame, refs, [(e.library, e.env_id) for e in envs], list(policies), config.rollouts
    )
