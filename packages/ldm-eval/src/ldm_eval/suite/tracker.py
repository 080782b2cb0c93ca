"""The suite's MLflow run in `ldm-suite/<name>`, one nested run per stage, reopened on re-runs.

Logging goes through `ldm_envs.tracking` (`setup`, `RunHandle` for tags, metrics and
artifacts, with its retries on a locked store). What it lacks is here: its experiments and
run keys are per pipeline stage and library (`ldm-<stage>/<library>`), while the suite's run is
per suite, so finding or creating the suite's experiment and runs, and closing them, talk to
the MLflow client directly (after `tracking.setup()`: the same store). Suite bookkeeping
failing must not stop a long pipeline whose stages log on their own: problems are printed,
never hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ldm_envs import tracking
from ldm_eval.suite.config import Suite
from ldm_eval.suite.record import StageRecord

__all__ = [
    "SUITE_EXPERIMENT",
    "TAG_SUITE",
    "TAG_SUITE_COMMANDS",
    "TAG_SUITE_STAGE",
    "TAG_SUITE_STATUS",
    "SuiteTracker",
]

SUITE_EXPERIMENT = "ldm-suite/{name}"
TAG_SUITE = "ldm.suite"
TAG_SUITE_STAGE = "ldm.suite.stage"
TAG_SUITE_STATUS = "ldm.suite.status"
TAG_SUITE_COMMANDS = "ldm.suite.commands"

#: Tag values are cut here (MLflow's limit is 8000).
_TAG_LIMIT = 7900


class SuiteTracker:
    """The suite's run and its stage runs; every call is guarded (a warning, never a raise)."""

    def __init__(self, suite: Suite, console: Console) -> None:
        self.suite = suite
        self.console = console
        self.client: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.stage_runs: dict[str, str] = {}
        self._guard("open the suite's MLflow run", self._open, opening=True)

    def _guard(self, what: str, fn: Callable[[], Any], *, opening: bool = False) -> Any:
        if not opening and self.run_id is None:
            return None  # the run could not be opened: said once already
        try:
            return fn()
        except Exception as exc:
            self.console.print(
                f"[yellow]warning: could not {what} in MLflow:[/] {type(exc).__name__}: "
                f"{escape(str(exc).splitlines()[0]) if str(exc) else ''}",
                highlight=False,
            )
            return None

    def _open(self) -> None:
        tracking.setup()
        import mlflow
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        self.client = mlflow.MlflowClient()
        name = SUITE_EXPERIMENT.format(name=self.suite.name)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            uri = tracking.tracking_uri()
            if uri.startswith("sqlite:"):
                location = (Path(tracking.artifact_root()) / "suite" / self.suite.name).as_uri()
            self.experiment_id = self.client.create_experiment(
                name,
                artifact_location=location,
                tags={
                    TAG_SUITE: self.suite.name,
                    tracking.TAG_EXPERIMENT_KIND: tracking.MODEL_TRAINING,
                },
            )
        else:
            if exp.lifecycle_stage != "active":
                raise RuntimeError(f"experiment {name!r} is deleted; restore or purge it")
            self.experiment_id = exp.experiment_id
        self.run_id = self._find_or_create(
            f"suite/{self.suite.name}", {MLFLOW_RUN_NAME: f"suite {self.suite.name}"}
        )

    def _find_or_create(self, key: str, tags: dict[str, str]) -> str:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tracking.TAG_RUN_KEY}` = '{key}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        all_tags = {TAG_SUITE: self.suite.name, tracking.TAG_RUN_KEY: key, **tags}
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            tracking.set_run_tags(run_id, all_tags)
            return run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags)
        return run.info.run_id

    def stage_started(self, stage: str) -> None:
        """Open (or reopen) the stage's nested run, marked running."""

        def start() -> None:
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

            self.stage_runs[stage] = self._find_or_create(
                f"suite/{self.suite.name}/{stage}",
                {
                    MLFLOW_RUN_NAME: stage,
                    MLFLOW_PARENT_RUN_ID: str(self.run_id),
                    TAG_SUITE_STAGE: stage,
                    TAG_SUITE_STATUS: "running",
                },
            )

        self._guard(f"start the {stage} stage's run", start)

    def stage_ended(self, record: StageRecord) -> None:
        """Close the stage's run with its record: status, commands, outputs, wall times."""
        run_id = self.stage_runs.get(record.stage)

        def end() -> None:
            if run_id is not None:
                stage_run = tracking.RunHandle(run_id, experiment_id=str(self.experiment_id))
                tags = {
                    TAG_SUITE_STATUS: record.status,
                    TAG_SUITE_COMMANDS: "\n".join(record.commands)[:_TAG_LIMIT],
                    **{f"ldm.suite.output.{k}": v[:_TAG_LIMIT] for k, v in record.outputs.items()},
                }
                if record.error:
                    tags[tracking.TAG_ERROR] = record.error[:_TAG_LIMIT]
                stage_run.set_tags(tags)
                metrics = {"attempts": float(record.attempts)}
                if record.wall_s is not None:
                    metrics["wall_s"] = record.wall_s
                metrics["total_wall_s"] = record.total_wall_s
                stage_run.log_metrics(metrics, step=record.attempts)
                status = {"finished": "FINISHED", "failed": "FAILED"}.get(record.status, "KILLED")
                self.client.set_terminated(run_id, status=status)
            if record.wall_s is not None:
                suite_run = tracking.RunHandle(str(self.run_id))
                suite_run.log_metrics({f"wall_s/{record.stage}": record.wall_s})

        self._guard(f"record the {record.stage} stage", end)

    def finish(self, status: str, files: Sequence[Path]) -> None:
        """Log `files` on the suite's run and close it with `status`."""

        def end() -> None:
            suite_run = tracking.RunHandle(str(self.run_id))
            for path in files:
                if path.is_file():
                    suite_run.log_artifact(path)
            self.client.set_terminated(str(self.run_id), status=status)

        self._guard("close the suite's run", end)
