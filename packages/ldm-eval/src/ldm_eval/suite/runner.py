"""Running a suite: its stages in order, each recorded before and after it runs.

A stage that finished with the same fingerprint is skipped; `--from-stage S` runs S and every
later stage again, `--only S` runs S alone. A failure stops the suite with a `StageError`
(stage, command, cause) after recording it, so the same command resumes from it; Ctrl-C or
SIGTERM records the stage as interrupted. The run ends with a table of the stages and where
the report, the record and the MLflow store are.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ldm_envs import tracking
from ldm_envs.manifest import atomic_write_text
from ldm_eval.errors import StageError, SuiteError
from ldm_eval.suite.config import STAGES, Suite
from ldm_eval.suite.context import StageContext, StageFailure
from ldm_eval.suite.html import fmt_wall, mlflow_ui_command, when, write_suite_report
from ldm_eval.suite.record import StageRecord, SuiteRecord
from ldm_eval.suite.stages import autorl as autorl_stage
from ldm_eval.suite.stages import eval as eval_stage
from ldm_eval.suite.stages import probe as probe_stage
from ldm_eval.suite.stages import report as report_stage
from ldm_eval.suite.stages import train as train_stage
from ldm_eval.suite.tracker import SUITE_EXPERIMENT, SuiteTracker

__all__ = ["RUNNERS", "SuiteOutcome", "run_suite"]

#: Stage -> the function that runs it.
RUNNERS: dict[str, Callable[[StageContext], None]] = {
    "probe": probe_stage.run,
    "autorl": autorl_stage.run,
    "train": train_stage.run,
    "eval": eval_stage.run,
    "report": report_stage.run,
}


@dataclass
class SuiteOutcome:
    """What a call to `run_suite` did."""

    suite: Suite
    record: SuiteRecord
    #: Stages run in this call, in order.
    ran: list[str] = field(default_factory=list)
    #: Stages skipped because they had finished with the same inputs.
    skipped: list[str] = field(default_factory=list)
    #: The stage that failed (None: none did).
    failed: str | None = None
    mlflow_run_id: str | None = None

    @property
    def report(self) -> Path:
        """The suite's HTML report (it exists once the report stage has run)."""
        return self.suite.report_path


def _stages_to_run(from_stage: str | None, only: str | None) -> tuple[list[str], set[str]]:
    """(stages considered, stages forced to run again)."""
    for value, opt in ((from_stage, "--from-stage"), (only, "--only")):
        if value is not None and value not in STAGES:
            raise SuiteError(f"{opt}: unknown stage {value!r}; the stages are: {', '.join(STAGES)}")
    if from_stage is not None and only is not None:
        raise SuiteError("give either --from-stage or --only, not both")
    if only is not None:
        return [only], {only}
    if from_stage is not None:
        later = list(STAGES[STAGES.index(from_stage) :])
        return later, set(later)
    return list(STAGES), set()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM stop the suite as Ctrl-C does.

    The stage is then recorded as interrupted and a running CLI stage gets SIGINT, rather than
    the process vanishing with its stage still marked running.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def run_suite(
    suite: Suite,
    *,
    from_stage: str | None = None,
    only: str | None = None,
    console: Console | None = None,
) -> SuiteOutcome:
    """Run the suite's stages in order, skipping those that finished with the same inputs.

    Args:
        suite: from `load_suite`.
        from_stage: run this stage and every later one again, even if finished (earlier
            stages are left as they are).
        only: run this stage alone, even if finished.
        console: where stage output and the summary go.

    Returns:
        What ran, what was skipped, and the record (also in `<suite folder>/stages.json`).

    Raises:
        SuiteError: an unknown stage name, or an unreadable stage record.
        StageError: a stage failed (stage, command, cause); the stages before it stay finished,
            so running again resumes from it.
    """
    console = console or Console()
    stages, forced = _stages_to_run(from_stage, only)
    folder = suite.folder
    folder.mkdir(parents=True, exist_ok=True)
    record = SuiteRecord.load(suite.record_path, suite.name)
    record.source = str(suite.source) if suite.source else record.source
    atomic_write_text(
        folder / "suite.yaml", yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
    )
    fps = suite.fingerprints()
    outcome = SuiteOutcome(suite=suite, record=record)
    if from_stage is not None:
        for stage in STAGES[: STAGES.index(from_stage)]:
            rec = record.stages.get(stage)
            if rec is None or rec.status != "finished":
                console.print(
                    f"[yellow]warning:[/] stage {stage!r} has not finished; --from-stage "
                    f"{from_stage} runs the later stages anyway",
                    highlight=False,
                )
    console.rule(f"suite {suite.name}")
    console.print(f"suite folder: {folder}", highlight=False)
    tracker = SuiteTracker(suite, console)
    outcome.mlflow_run_id = tracker.run_id
    ctx = StageContext(suite, record, console)
    try:
        with _sigterm_as_interrupt():
            for stage in stages:
                rec = record.stages.get(stage)
                if rec is not None and rec.status == "finished":
                    if stage not in forced and rec.fingerprint == fps[stage]:
                        console.print(
                            f"[dim]stage {stage}: finished {when(rec.ended)} in "
                            f"{fmt_wall(rec.wall_s)}, skipped[/]",
                            highlight=False,
                        )
                        outcome.skipped.append(stage)
                        continue
                    if rec.fingerprint != fps[stage]:
                        console.print(
                            f"[yellow]stage {stage}: the suite changed since it finished; "
                            "running it again (it resumes whatever is still valid)[/]",
                            highlight=False,
                        )
                _run_stage(ctx, stage, fps[stage], tracker)
                outcome.ran.append(stage)
    except StageError as exc:
        outcome.failed = exc.stage
        tracker.finish("FAILED", [suite.record_path])
        _print_summary(outcome, console)
        raise
    except KeyboardInterrupt:
        tracker.finish("KILLED", [suite.record_path])
        raise
    files = [suite.record_path, folder / "suite.yaml"]
    if suite.report_path.is_file():
        files.append(suite.report_path)
    tracker.finish("FINISHED", files)
    _print_summary(outcome, console)
    return outcome


def _run_stage(ctx: StageContext, stage: str, fingerprint: str, tracker: SuiteTracker) -> None:
    """Run one stage, recording it before (running) and after (finished / failed)."""
    record, path = ctx.record, ctx.suite.record_path
    old = record.stages.get(stage)
    ctx.commands, ctx.outputs = [], {}
    start = time.time()
    rec = StageRecord(
        stage=stage,
        status="running",
        fingerprint=fingerprint,
        started=start,
        attempts=(old.attempts + 1) if old is not None and old.status != "finished" else 1,
        total_wall_s=old.total_wall_s if old is not None and old.status != "finished" else 0.0,
    )
    record.stages[stage] = rec
    record.save(path)
    tracker.stage_started(stage)
    ctx.console.rule(f"[bold]stage {stage}[/]")
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        RUNNERS[stage](ctx)
    except BaseException as exc:
        error = exc
    wall = time.perf_counter() - t0
    rec.ended, rec.wall_s = time.time(), round(wall, 2)
    rec.total_wall_s = round(rec.total_wall_s + wall, 2)
    rec.commands, rec.outputs = list(ctx.commands), dict(ctx.outputs)
    if error is None:
        rec.status = "finished"
    elif not isinstance(error, Exception):  # Ctrl-C, SIGTERM, SystemExit
        rec.status, rec.error = "interrupted", f"interrupted ({type(error).__name__})"
    else:
        rec.status = "failed"
        rec.error = (
            str(error) if isinstance(error, StageFailure) else f"{type(error).__name__}: {error}"
        )
    record.save(path)
    if stage == "report" and error is None:
        write_suite_report(ctx)  # again, now that the report stage has its own wall time
    tracker.stage_ended(rec)
    if error is None:
        return
    if not isinstance(error, Exception):
        raise error
    command = (
        ctx.commands[-1] if ctx.commands else f"ldm-eval suite {ctx.suite.source} --only {stage}"
    )
    raise StageError(stage, command, rec.error or "") from (
        None if isinstance(error, StageFailure) else error
    )


def _print_summary(outcome: SuiteOutcome, console: Console) -> None:
    """The stages (status, wall time), the report and the MLflow store with the UI command."""
    suite, record = outcome.suite, outcome.record
    table = Table(title=f"suite {suite.name}", title_justify="left")
    for col in ("stage", "status", "this call", "wall time", "attempts", "ended"):
        table.add_column(col, justify="right" if col in ("wall time", "attempts") else "left")
    total = 0.0
    for stage in STAGES:
        rec = record.stages.get(stage)
        if stage in outcome.ran:
            call = "ran"
        elif stage in outcome.skipped:
            call = "skipped (done)"
        else:
            call = "-"
        if rec is None:
            table.add_row(stage, "[dim]not run[/]", call, "-", "-", "-")
            continue
        total += rec.wall_s or 0.0
        colour = {"finished": "green", "failed": "red"}.get(rec.status, "yellow")
        table.add_row(
            stage,
            f"[{colour}]{rec.status}[/]",
            call,
            fmt_wall(rec.wall_s),
            str(rec.attempts),
            when(rec.ended),
        )
    table.add_section()
    table.add_row("total", "", "", fmt_wall(total), "", "")
    console.print(table)
    if outcome.failed:
        rec = record.stages[outcome.failed]
        why = escape(str(rec.error))
        console.print(f"[red]stage {outcome.failed} failed:[/] {why}", highlight=False)
        console.print(
            f"fix it and run the same command again: finished stages are skipped, stage "
            f"{outcome.failed} resumes",
            highlight=False,
        )
    if suite.report_path.is_file():
        console.print(f"report: {suite.report_path}", highlight=False)
    uri = tracking.tracking_uri()
    console.print(f"stage record: {suite.record_path}", highlight=False)
    console.print(f"MLflow store: {uri}", highlight=False)
    if outcome.mlflow_run_id:
        console.print(
            f"MLflow: experiment {SUITE_EXPERIMENT.format(name=suite.name)}, run "
            f"{outcome.mlflow_run_id} (and the ldm-<stage>/<library> experiments)",
            highlight=False,
        )
    console.print(f"browse it: {mlflow_ui_command(uri)}", highlight=False, soft_wrap=True)
    if uri.startswith("sqlite:"):
        console.print("then open http://127.0.0.1:5000", highlight=False)
