"""The whole pipeline from one suite file: probe -> autorl -> train -> eval -> report.

A suite file (YAML) names the env libraries with their AutoRL budgets, the model config and the
evaluation protocol. `run_suite` runs its stages in order:

- `probe`: build each library's isolated environment, ask the real library for its spaces and
  compare them with the manifest (a mismatch stops here, not hours later), then a short
  random-rollout check of the suite's envs.
- `autorl`: per library, `ldm-autorl rank`, `train`, `filter` and `dataset`, run as
  subprocesses of the `ldm-autorl` CLI (this package must not import `ldm_autorl`: envs <-
  autorl and envs <- model <- eval are separate branches), then one MLflow run per library in
  `ldm-dataset/<library>` describing what the index holds.
- `train`: the LDM on the suite's envs (`ldm_model.training.train`, in this process), with
  `model.eval_every` the paper's protocol every K steps (`training_curve.TrainingEvaluator`, a
  callback of the trainer: in this process, so no plugin lookup is needed).
- `eval`: the paper's protocol on the checkpoint (`ldm_eval.pipeline.evaluate`, in this
  process), the random baseline beside it.
- `report`: one HTML file: the stages with their wall times, the dataset, then the evaluation
  report.

Why a stage record: every stage is resumable on its own (finished runs, checkpoints and rollouts
are never redone), but even a no-op resume costs minutes (processes, envs, MLflow). The record
`<suite folder>/stages.json` (written atomically) holds each stage's status, start, end and wall
time, and a fingerprint of the suite fields the stage depends on; a re-run skips a stage that
finished with the same fingerprint. A stage whose inputs changed runs again, resuming whatever
of it is still valid. `--from-stage S` runs S and every later stage again; `--only S` runs S
alone.

MLflow: besides the runs every stage logs in its own experiments, the suite has a run in
`ldm-suite/<name>` with one nested run per stage (wall time, commands, status) and the report,
`stages.json` and the suite file as artifacts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import html
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from rich.console import Console
from rich.table import Table

from ldm_envs import tracking
from ldm_envs.backends import BACKENDS
from ldm_envs.manifest import atomic_write_text
from ldm_envs.paths import data_home
from ldm_eval.errors import StageError, SuiteError
from ldm_eval.threads import torch_threads

__all__ = [
    "STAGES",
    "EvalSection",
    "LibraryConfig",
    "ModelSection",
    "ProbeSection",
    "StageError",
    "StageRecord",
    "Suite",
    "SuiteError",
    "SuiteOutcome",
    "SuiteRecord",
    "load_suite",
    "run_suite",
]

#: The stages, in the order they run.
STAGES: tuple[str, ...] = ("probe", "autorl", "train", "eval", "report")

StageName = Literal["probe", "autorl", "train", "eval", "report"]

RECORD_FILE = "stages.json"
REPORT_FILE = "report.html"
SUITE_EXPERIMENT = "ldm-suite/{name}"
TAG_SUITE = "ldm.suite"
TAG_SUITE_STAGE = "ldm.suite.stage"
TAG_SUITE_STATUS = "ldm.suite.status"
TAG_SUITE_COMMANDS = "ldm.suite.commands"


class _Failure(Exception):
    """Raised inside a stage to stop it with a message (turned into a StageError)."""


# ------------------------------------------------------------------------------------------------
# The suite file


class LibraryConfig(BaseModel):
    """One env library of the suite and its AutoRL settings (`ldm-autorl` options)."""

    model_config = ConfigDict(extra="forbid")

    #: An installed env library (`ldm-envs list`).
    name: str
    #: Env ids to train reference runs on, train the model on and evaluate (None: every env the
    #: library declares, up to the 250 cap). Ranking always uses the library's ranking subset.
    envs: list[str] | None = Field(default=None, min_length=1)
    #: Candidates to rank (None: every registered candidate; `ldm-autorl candidates LIB`).
    candidates: list[str] | None = Field(default=None, min_length=1)
    top_n: int = Field(default=3, gt=0)
    rank_budget: int = Field(default=10_000, gt=0)
    train_budget: int = Field(default=20_000, gt=0)
    #: Reference-run budgets of single envs, where one library's envs differ a lot (LunarLander
    #: needs ~50x CartPole's transitions); the others get `train_budget`.
    env_budgets: dict[str, int] = {}
    #: Episodes of a random policy per env, measured before the filter: the bar a reference
    #: must clear and the zero of `% of zoo` (0: not measured).
    random_episodes: int = Field(default=20, ge=0)
    seeds: list[int] = Field(default=[0], min_length=1)
    backend: str = "venv"
    #: Runs in parallel (local executor; None: the cores).
    workers: int | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _installed(cls, name: str) -> str:
        from ldm_envs.plugins import registry

        reg = registry()
        if name in reg.broken:
            raise ValueError(f"env library {name!r} is installed but broken: {reg.broken[name]}")
        if name not in reg.names():
            installed = ", ".join(reg.names()) or "(none)"
            raise ValueError(f"unknown env library {name!r}; installed libraries: {installed}")
        return name

    @field_validator("envs")
    @classmethod
    def _declared(cls, envs: list[str] | None, info: ValidationInfo) -> list[str] | None:
        name = info.data.get("name")
        if envs is None or name is None:
            return envs
        from ldm_envs.plugins import get_library

        declared = get_library(name).env_ids
        unknown = [e for e in envs if e not in declared]
        if unknown:
            raise ValueError(
                f"env id(s) {', '.join(unknown)} not declared by library {name!r}; declared: "
                f"{', '.join(declared)}"
            )
        if len(set(envs)) != len(envs):
            raise ValueError("env ids listed twice")
        return envs

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; known: {', '.join(BACKENDS)}")
        return value

    @model_validator(mode="after")
    def _budgeted_envs(self) -> LibraryConfig:
        unused = [e for e in self.env_budgets if e not in self.env_ids()]
        if unused:
            raise ValueError(
                f"env_budgets names env id(s) {', '.join(unused)} that library {self.name!r} "
                f"does not train in this suite; its envs: {', '.join(self.env_ids())}"
            )
        bad = {e: b for e, b in self.env_budgets.items() if b <= 0}
        if bad:
            raise ValueError(f"env_budgets must be positive: {bad}")
        return self

    def budget_groups(self) -> dict[int, list[str] | None]:
        """Reference-run budget -> the envs trained at it (None: all of the suite's envs)."""
        if not self.env_budgets:
            return {self.train_budget: list(self.envs) if self.envs else None}
        groups: dict[int, list[str]] = {}
        for env_id in self.env_ids():
            groups.setdefault(self.env_budgets.get(env_id, self.train_budget), []).append(env_id)
        return dict(groups)

    def env_ids(self) -> list[str]:
        """The envs this suite uses from the library (declared order when not listed)."""
        from ldm_envs.plugins import get_library

        return list(self.envs or get_library(self.name).env_ids)


class ProbeSection(BaseModel):
    """The `probe` stage: spaces against the manifest, then random rollouts."""

    model_config = ConfigDict(extra="forbid")

    #: Rewrite a manifest whose spaces differ from the library (as `ldm-envs probe LIB` does);
    #: by default a mismatch stops the suite, since it changes an installed plugin's file.
    write: bool = False
    #: Batched random steps per env in the check (0: no check).
    check_steps: int = Field(default=100, ge=0)


class ModelSection(BaseModel):
    """The `train` stage (`ldm-model train` options)."""

    model_config = ConfigDict(extra="forbid")

    #: Named config (`ldm-model configs`).
    config: str = "tiny"
    steps: int = Field(default=2000, gt=0)
    #: Global batch in windows (None: the config's default).
    batch_size: int | None = Field(default=None, gt=0)
    #: Window length in transitions (None: the model's context).
    context: int | None = Field(default=None, gt=0)
    weighting: Literal["env", "transitions", "library"] = "env"
    lr: float = Field(default=2.5e-4, gt=0)
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = Field(default=500, gt=0)
    num_workers: int = Field(default=0, ge=0)
    #: Evaluate every K steps during training (and at the last step): the share of envs at
    #: >= 80% / 100% of reference against transitions seen (the paper's Fig. 3). The eval
    #: section's protocol, with `eval_episodes` episodes per rollout. None: no curve.
    eval_every: int | None = Field(default=None, gt=0)
    #: Episodes per rollout of those evaluations (None: the eval section's `episodes`).
    eval_episodes: int | None = Field(default=None, gt=0)

    @field_validator("config")
    @classmethod
    def _named(cls, value: str) -> str:
        from ldm_model.config import NAMED_CONFIGS

        if value not in NAMED_CONFIGS:
            raise ValueError(
                f"unknown model config {value!r}; named configs: {', '.join(NAMED_CONFIGS)}"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from ldm_model.devices import validate_device

        # checked at load: a mistyped device must not wait for the train stage to fail
        return validate_device(value, allow_auto=True)

    @model_validator(mode="after")
    def _context(self) -> ModelSection:
        from ldm_model.config import get_config

        limit = get_config(self.config).context
        if self.context is not None and self.context > limit:
            raise ValueError(f"context {self.context} exceeds config {self.config!r}'s {limit}")
        return self


class EvalSection(BaseModel):
    """The `eval` stage (`ldm-eval evaluate` options); defaults are the paper's protocol."""

    model_config = ConfigDict(extra="forbid")

    episodes: int = Field(default=10, gt=0)
    rollouts: int = Field(default=2, gt=0)
    seed: int = 0
    random_baseline: bool = True
    backend: str = "venv"
    device: str = "cpu"
    #: Workers per library (None: the cores shared among the libraries).
    workers: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    retries: int = Field(default=1, ge=0)
    resamples: int = Field(default=2000, gt=0)
    #: Torch threads while the model acts (None: torch's default). On a small machine shared
    #: with env workers, 1 is often the fastest.
    torch_threads: int | None = Field(default=None, gt=0)

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; known: {', '.join(BACKENDS)}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from ldm_model.devices import validate_device

        # checked at load: a `device: cdua` suite once ran 96 s of stages before failing
        return validate_device(value)


class Suite(BaseModel):
    """A suite file: what to run, end to end. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    #: Names the suite's folder (`<data home>/suites/<name>`) and its MLflow experiment.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)
    description: str = ""
    libraries: list[LibraryConfig] = Field(min_length=1)
    probe: ProbeSection = ProbeSection()
    model: ModelSection = ModelSection()
    eval: EvalSection = EvalSection()
    #: Dataset root (default `<suite folder>/autorl`: a suite's dataset is its own, so runs
    #: at another suite's budgets never enter its filter or its model).
    data_root: Path | None = None
    #: The suite folder (default `<data home>/suites/<name>`).
    out: Path | None = None
    #: The file it was read from (not a field of the file).
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("libraries")
    @classmethod
    def _unique(cls, libraries: list[LibraryConfig]) -> list[LibraryConfig]:
        names = [lib.name for lib in libraries]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"library listed twice: {', '.join(twice)}")
        return libraries

    # -- where things go ------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        """The suite folder: stage record, dataset (by default), model, evaluation, report."""
        return (self.out or data_home() / "suites" / self.name).expanduser()

    @property
    def dataset_root(self) -> Path:
        """Where the autorl stage writes runs, shards and the index."""
        return (self.data_root or self.folder / "autorl").expanduser()

    @property
    def record_path(self) -> Path:
        """The stage record."""
        return self.folder / RECORD_FILE

    @property
    def report_path(self) -> Path:
        """The suite's HTML report."""
        return self.folder / REPORT_FILE

    def env_ids(self) -> dict[str, list[str]]:
        """Library -> the envs the suite uses."""
        return {lib.name: lib.env_ids() for lib in self.libraries}

    def restricts_envs(self) -> bool:
        """Whether some library lists its envs (so model and eval need an env filter)."""
        return any(lib.envs is not None for lib in self.libraries)

    # -- fingerprints: what each stage depends on -----------------------------------------------

    def fingerprints(self) -> dict[str, str]:
        """Stage -> hash of the suite fields it depends on (and of its upstream stages)."""
        # execution details (parallel workers, devices, cadence) do not change what a stage makes
        libs = [lib.model_dump(mode="json", exclude={"workers"}) for lib in self.libraries]
        root = str(self.dataset_root.resolve())
        fps: dict[str, str] = {}
        fps["probe"] = _digest(
            {
                "libraries": [[lib.name, lib.envs, lib.backend] for lib in self.libraries],
                "probe": self.probe.model_dump(mode="json"),
            }
        )
        fps["autorl"] = _digest({"libraries": libs, "root": root})
        fps["train"] = _digest(
            {
                "model": self.model.model_dump(
                    mode="json",
                    exclude={
                        "device",
                        "num_workers",
                        "checkpoint_every",
                        "eval_every",
                        "eval_episodes",
                    },
                ),
                "envs": self.env_ids(),
                "upstream": fps["autorl"],
            }
        )
        fps["eval"] = _digest({"eval": self.eval.model_dump(mode="json"), "upstream": fps["train"]})
        fps["report"] = _digest({"upstream": [fps[s] for s in STAGES[:-1]], "name": self.name})
        return fps


def _digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


@functools.cache
def _unknown_candidates(library: str, names: tuple[str, ...]) -> str | None:
    """Why `ldm-autorl` refuses these candidate names for `library`, or None when it knows them.

    This package never imports ldm-autorl (separate branches of the dependency graph), so it
    asks the CLI the autorl stage will run anyway: `ldm-autorl candidates LIB --candidate ...`
    exits 2 with an `error:` line for an unknown name. A few seconds at load instead of a
    ranking stage that fails after the probe stage. Without ldm-autorl installed nothing is
    checked here: the autorl stage itself says what to install.
    """
    if importlib.util.find_spec("ldm_autorl") is None:
        return None
    args = [sys.executable, "-m", "ldm_autorl.cli", "candidates", library]
    args += [a for name in names for a in ("--candidate", name)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not ask `ldm-autorl candidates` about them: {exc}"
    if proc.returncode == 0:
        return None
    for line in proc.stderr.splitlines():
        if line.startswith("error:"):
            return line.removeprefix("error:").strip().removeprefix("--candidate: ")
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])
    return f"`ldm-autorl candidates {library}` failed (exit {proc.returncode}): {tail}"


def _candidate_problems(suite: Suite) -> list[str]:
    """`field libraries.i.candidates: <why>` for each library naming a candidate autorl lacks.

    Candidate names are global, so one call checks every library's at once (one process
    start, a few seconds); only when it fails is each library asked, to name the field.
    """
    named = [(i, lib) for i, lib in enumerate(suite.libraries) if lib.candidates]
    if not named:
        return []
    every = tuple(dict.fromkeys(c for _, lib in named for c in lib.candidates or []))
    if _unknown_candidates(named[0][1].name, every) is None:
        return []
    return [
        f"field libraries.{i}.candidates: {why}"
        for i, lib in named
        if (why := _unknown_candidates(lib.name, tuple(lib.candidates or [])))
    ]


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; relative `data_root`/`out` are taken from its folder.

    Raises:
        SuiteError: a missing or unreadable file, invalid YAML, or invalid fields (a device
            name, a candidate `ldm-autorl` does not know included); every problem is listed
            as `<file>: field <a.0.b>: <message>`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read the suite file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite file is a mapping (name, libraries, model, eval, ...)")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{path}: field {_loc(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise SuiteError("\n".join(lines)) from None
    problems = _candidate_problems(suite)
    if problems:
        raise SuiteError("\n".join(f"{path}: {p}" for p in problems))
    base = path.resolve().parent
    update: dict[str, Any] = {"source": path.resolve()}
    for key in ("data_root", "out"):
        value = getattr(suite, key)
        if value is not None and not value.expanduser().is_absolute():
            update[key] = base / value
    return suite.model_copy(update=update)


# ------------------------------------------------------------------------------------------------
# The stage record


class StageRecord(BaseModel):
    """One stage's last attempt (and the total over attempts)."""

    stage: str
    status: Literal["running", "finished", "failed", "interrupted"]
    fingerprint: str
    started: float
    ended: float | None = None
    #: Wall time of the last attempt, seconds.
    wall_s: float | None = None
    attempts: int = 1
    #: Wall time over all attempts, seconds.
    total_wall_s: float = 0.0
    #: The commands the stage ran (or, for in-process stages, their CLI equivalents).
    commands: list[str] = []
    #: Paths and ids later stages and the report need (checkpoint, eval folder, MLflow runs).
    outputs: dict[str, str] = {}
    error: str | None = None


class SuiteRecord(BaseModel):
    """`stages.json`: the suite's stages as they last ran."""

    suite: str
    source: str | None = None
    updated: float = 0.0
    stages: dict[str, StageRecord] = {}

    @classmethod
    def load(cls, path: Path, suite: str) -> SuiteRecord:
        """The record at `path`, or an empty one.

        Raises:
            SuiteError: an unreadable record (named; delete it to start the bookkeeping over).
        """
        if not path.exists():
            return cls(suite=suite)
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError, OSError) as exc:
            raise SuiteError(
                f"{path}: unreadable stage record ({type(exc).__name__}); remove it to run "
                "every stage again (each resumes its own finished work)"
            ) from None

    def save(self, path: Path) -> None:
        """Write atomically (temporary sibling, then rename)."""
        self.updated = time.time()
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# MLflow: the suite's own run, one nested run per stage


class _SuiteTracker:
    """The suite's MLflow run in `ldm-suite/<name>`, nested stage runs, reopened on re-runs.

    `ldm_envs.tracking` keeps to its pipeline stages, so this talks to the MLflow client
    directly (after `tracking.setup()`: same store). Suite bookkeeping failing must not stop a
    long pipeline whose stages log on their own: problems are printed, never hidden.
    """

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
                f"{str(exc).splitlines()[0] if str(exc) else ''}",
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
            for k, v in all_tags.items():
                self.client.set_tag(run_id, k, v)
            return run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags)
        return run.info.run_id

    def stage_started(self, stage: str) -> None:
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
        run_id = self.stage_runs.get(record.stage)

        def end() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            if run_id is not None:
                self.client.set_tag(run_id, TAG_SUITE_STATUS, record.status)
                self.client.set_tag(run_id, TAG_SUITE_COMMANDS, "\n".join(record.commands)[:7900])
                for key, value in record.outputs.items():
                    self.client.set_tag(run_id, f"ldm.suite.output.{key}", value[:7900])
                if record.error:
                    self.client.set_tag(run_id, tracking.TAG_ERROR, record.error[:7900])
                metrics = [Metric("attempts", record.attempts, now, record.attempts)]
                if record.wall_s is not None:
                    metrics.append(Metric("wall_s", record.wall_s, now, record.attempts))
                metrics.append(Metric("total_wall_s", record.total_wall_s, now, record.attempts))
                self.client.log_batch(run_id, metrics=metrics)
                status = {"finished": "FINISHED", "failed": "FAILED"}.get(record.status, "KILLED")
                self.client.set_terminated(run_id, status=status)
            if record.wall_s is not None:
                self.client.log_metric(
                    str(self.run_id), f"wall_s/{record.stage}", record.wall_s, now
                )

        self._guard(f"record the {record.stage} stage", end)

    def finish(self, status: str, files: Sequence[Path]) -> None:
        def end() -> None:
            for path in files:
                if path.is_file():
                    self.client.log_artifact(str(self.run_id), str(path))
            self.client.set_terminated(str(self.run_id), status=status)

        self._guard("close the suite's run", end)


# ------------------------------------------------------------------------------------------------
# Running


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


class _Context:
    """What the stages share while they run: the suite, the record, where to print."""

    def __init__(self, suite: Suite, record: SuiteRecord, console: Console) -> None:
        self.suite = suite
        self.record = record
        self.console = console
        self.commands: list[str] = []
        self.outputs: dict[str, str] = {}
        #: The evaluation report's body, kept so the report can be redrawn with its own time.
        self.eval_html: str | None = None
        #: the suite's envs and their references (the report stage's `_suite_references`)
        self.references: Any = None

    def command(self, text: str) -> str:
        """Note (and show) a command the stage runs, or the CLI equivalent of what it does."""
        self.commands.append(text)
        self.console.print(f"[dim]$ {text}[/]", highlight=False, soft_wrap=True)
        return text


def _q(args: Sequence[object]) -> str:
    return shlex.join(str(a) for a in args)


def _run_cli(ctx: _Context, shown: str, argv: list[str]) -> None:
    """Run a CLI as a subprocess, its output straight to the terminal; fail naming it.

    On an interrupt the child gets SIGINT and time to stop its own workers (the ldm-autorl
    CLI stops its task processes) before it is killed.
    """
    ctx.command(shown)
    env = dict(os.environ)
    # Parallel SB3 runs and their env workers share the cores: torch's OpenMP threads in each
    # run only fight over them (measured: the quickstart's ranking ran ~20x slower per step).
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.Popen(argv, env=env)
    except OSError as exc:
        raise _Failure(f"could not start `{shown}`: {exc}") from None
    try:
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    if code != 0:
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        raise _Failure(f"`{shown}` ended with {how} (its output is above)\n  argv: {_q(argv)}")


# -- probe -----------------------------------------------------------------------------------------


def _stage_probe(ctx: _Context) -> None:
    """Spaces from the real library against the manifest, then random rollouts of the envs."""
    from ldm_envs.backends import get_backend
    from ldm_envs.checker import EnvCheck, check_library
    from ldm_envs.errors import LDMError
    from ldm_envs.manifest import write_manifest
    from ldm_envs.plugins import registry
    from ldm_envs.probe import probe_library

    cfg = ctx.suite.probe
    for lib in ctx.suite.libraries:
        ctx.console.rule(f"probe {lib.name} ({lib.backend})")
        env_opts = [a for e in lib.envs or [] for a in ("--env", e)]
        shown = _q(["ldm-envs", "probe", lib.name, "--backend", lib.backend, *env_opts])
        ctx.command(shown + ("" if cfg.write else " --dry-run"))
        try:
            entry = registry().entry(lib.name)
            backend = get_backend(lib.backend, console=ctx.console)
            spec, changes = probe_library(entry.spec, backend, lib.envs)
        except LDMError as exc:
            raise _Failure(f"probing {lib.name}: {exc}") from None
        if changes:
            for line in changes:
                ctx.console.print(f"  [yellow]differs:[/] {line}", highlight=False)
            if not cfg.write or entry.source is None:
                raise _Failure(
                    f"the manifest of {lib.name!r} declares other spaces than the library "
                    f"reports ({len(changes)} env(s) above); review and run `{shown}` to "
                    "rewrite it, or set `probe: {write: true}` in the suite"
                )
            write_manifest(spec, entry.source)
            registry(refresh=True)
            ctx.console.print(f"[green]wrote[/] {entry.source}", highlight=False)
        else:
            ctx.console.print(f"  declared spaces match the library ({lib.name})")
        if cfg.check_steps == 0:
            continue
        ctx.command(
            _q(["ldm-envs", "check", lib.name, "--backend", lib.backend])
            + f" --steps {cfg.check_steps} "
            + _q(env_opts)
        )

        def show(res: EnvCheck) -> None:
            mark = "[green]ok[/]" if res.ok else "[red]FAIL[/]"
            ctx.console.print(
                f"  {mark} {res.env_id:<32} {res.observation:<24} {res.action:<22} "
                f"{res.steps_per_second:>8.0f} steps/s",
                highlight=False,
            )
            for problem in res.problems:
                ctx.console.print(f"      [red]{problem}[/]", highlight=False)

        try:
            report = check_library(
                registry().get(lib.name),
                backend,
                env_ids=lib.envs,
                steps=cfg.check_steps,
                on_env=show,
            )
        except LDMError as exc:
            raise _Failure(f"checking {lib.name}: {exc}") from None
        if not report.ok:
            bad = [e.env_id for e in report.envs if not e.ok]
            raise _Failure(f"random rollouts failed in {lib.name}: {', '.join(bad)}")


# -- autorl ----------------------------------------------------------------------------------------


def _autorl_cmd(
    sub: str,
    lib: LibraryConfig,
    root: Path,
    budget: int | None = None,
    envs: list[str] | None = None,
) -> list[str]:
    """One `ldm-autorl` call; `train` runs once per budget group (`budget`, `envs`)."""
    args = [sub, lib.name, "--root", str(root)]
    if sub in ("rank", "train"):
        if sub == "rank":
            budget = lib.rank_budget
        args += ["--budget", str(budget if budget is not None else lib.train_budget)]
        args += [a for s in lib.seeds for a in ("--seed", str(s))]
        args += ["--backend", lib.backend]
        if lib.workers is not None:
            args += ["--workers", str(lib.workers)]
    if sub == "rank":
        args += [a for c in lib.candidates or [] for a in ("--candidate", c)]
    if sub == "train":
        args += ["--top-n", str(lib.top_n)]
        args += [a for e in (envs if envs is not None else lib.envs) or [] for a in ("--env", e)]
    if sub == "filter":
        args += ["--backend", lib.backend, "--random-episodes", str(lib.random_episodes)]
    if sub == "dataset":
        args = ["dataset", "--root", str(root), "--library", lib.name]
    return args


def _autorl_calls(lib: LibraryConfig, root: Path) -> list[tuple[str, list[str]]]:
    """The library's `ldm-autorl` calls in order: rank, train (per budget), filter, dataset."""
    calls = [("rank", _autorl_cmd("rank", lib, root))]
    for budget, envs in lib.budget_groups().items():
        calls.append(("train", _autorl_cmd("train", lib, root, budget, envs)))
    calls += [(sub, _autorl_cmd(sub, lib, root)) for sub in ("filter", "dataset")]
    return calls


def _stage_autorl(ctx: _Context) -> None:
    """Per library: rank, train, filter, dataset summary, through the `ldm-autorl` CLI."""
    if importlib.util.find_spec("ldm_autorl") is None:
        raise _Failure(
            "the autorl stage runs the `ldm-autorl` CLI, but the package ldm-autorl is not "
            f"installed in {sys.executable}: install it (`uv sync` in the workspace, or "
            "`pip install ldm-autorl`), or run the suite with `--from-stage train` on an "
            "existing dataset"
        )
    root = ctx.suite.dataset_root
    root.mkdir(parents=True, exist_ok=True)
    ctx.outputs["dataset_root"] = str(root)
    for lib in ctx.suite.libraries:
        for sub, args in _autorl_calls(lib, root):
            ctx.console.rule(f"autorl: {sub} {lib.name}")
            _run_cli(
                ctx, _q(["ldm-autorl", *args]), [sys.executable, "-m", "ldm_autorl.cli", *args]
            )
    _log_datasets(ctx, root)


def _dataset_summary(root: Path, suite: Suite) -> Any:
    """Per library: envs, runs, kept runs, transitions (kept / all) of the suite's envs."""
    import polars as pl

    from ldm_envs.dataset.index import read_index

    runs, _ = read_index(root)
    wanted = suite.env_ids()
    rows = []
    for library, envs in wanted.items():
        part = runs.filter((pl.col("library") == library) & pl.col("env_id").is_in(envs))
        kept = part.filter(pl.col("kept").fill_null(False))
        rows.append(
            {
                "library": library,
                "envs": len(envs),
                "envs_with_runs": part["env_id"].n_unique(),
                "envs_kept": kept["env_id"].n_unique(),
                "runs": part.select(pl.col("run_key").n_unique()).item(),
                "runs_kept": kept.select(pl.col("run_key").n_unique()).item(),
                "transitions": int(part["rows"].sum() or 0),
                "transitions_kept": int(kept["rows"].sum() or 0),
            }
        )
    return pl.DataFrame(rows)


def _log_datasets(ctx: _Context, root: Path) -> None:
    """One run per library in `ldm-dataset/<library>`: what the suite's index holds."""
    try:
        summary = _dataset_summary(root, ctx.suite)
    except FileNotFoundError as exc:
        raise _Failure(f"no dataset index after the autorl stage: {exc}") from None
    for row in summary.iter_rows(named=True):
        library = row["library"]
        key = f"dataset/{library}/{_digest(str(root.resolve()))}"
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


# -- train -----------------------------------------------------------------------------------------


def _train_config(suite: Suite) -> Any:
    from ldm_model.training import TrainConfig

    m = suite.model
    env_ids = None
    if suite.restricts_envs():
        env_ids = [e for envs in suite.env_ids().values() for e in envs]
    return TrainConfig(
        model=m.config,
        data_root=suite.dataset_root,
        libraries=[lib.name for lib in suite.libraries],
        env_ids=env_ids,
        weighting=m.weighting,
        batch_size=m.batch_size,
        context=m.context,
        steps=m.steps,
        lr=m.lr,
        seed=m.seed,
        device=m.device,
        checkpoint_every=m.checkpoint_every,
        num_workers=m.num_workers,
        out=suite.folder / "models" / f"{m.config}-{_model_key(suite)}",
        eval_every=m.eval_every,
        eval_episodes=m.eval_episodes,
    )


def _model_key(suite: Suite) -> str:
    """The model folder's key: what decides the weights, the step count apart.

    More steps extend the same run; another dataset or config trains a fresh one.
    """
    fields = suite.model.model_dump(
        mode="json", exclude={"steps", "device", "num_workers", "eval_every", "eval_episodes"}
    )
    fields["checkpoint_every"] = None
    return _digest(
        {"model": fields, "envs": suite.env_ids(), "dataset": suite.fingerprints()["autorl"]}
    )


def _stage_train(ctx: _Context) -> None:
    """The LDM, trained (or resumed, or extended) on the suite's envs, in this process."""
    from ldm_model.training import TrainingError
    from ldm_model.training import train as run_training
    from ldm_model.training.checkpoint import CheckpointError

    config = _train_config(ctx.suite)
    args = ["ldm-model", "train", "--model", ctx.suite.model.config, "--root", config.data_root]
    args += [a for lib in config.libraries or () for a in ("--library", lib)]
    args += [a for e in config.env_ids or () for a in ("--env-id", e)]
    args += ["--weighting", config.weighting, "--batch-size", config.batch_size]
    if config.context is not None:
        args += ["--context", config.context]
    args += ["--steps", config.steps, "--lr", config.lr, "--seed", config.seed]
    args += ["--checkpoint-every", config.checkpoint_every, "--device", config.device]
    if config.eval_every is not None:
        args += ["--eval-every", config.eval_every]
        if config.eval_episodes is not None:
            args += ["--eval-episodes", config.eval_episodes]
    args += ["--out", config.out]
    ctx.console.rule(f"train {ctx.suite.model.config} ({config.steps} steps)")
    ctx.command(_q(args))
    callbacks = [_training_evaluator(ctx)] if config.eval_every is not None else []
    try:
        result = run_training(
            config, console=ctx.console, progress=ctx.console.is_terminal, callbacks=callbacks
        )
    except (TrainingError, CheckpointError, ValueError) as exc:
        raise _Failure(str(exc)) from None
    if callbacks and result.wall_seconds:
        ctx.outputs["eval_during_training"] = (
            f"{result.eval_seconds:.1f} s of {result.wall_seconds:.1f} s "
            f"({100 * result.eval_seconds / result.wall_seconds:.1f}%)"
        )
    if result.checkpoint is None:
        raise _Failure(f"training ended without a checkpoint in {result.out}")
    ctx.outputs["model_dir"] = str(result.out)
    ctx.outputs["checkpoint"] = str(result.checkpoint)
    ctx.outputs["step"] = str(result.step)
    if result.mlflow_run_id:
        ctx.outputs["mlflow_run_id"] = result.mlflow_run_id


def _eval_config(section: EvalSection, episodes: int | None = None) -> Any:
    """The protocol's settings from the suite's eval section (`episodes` overriding its own)."""
    from ldm_eval.protocol import EvalConfig

    return EvalConfig(
        episodes=episodes or section.episodes,
        rollouts=section.rollouts,
        seed=section.seed,
        backend=section.backend,
        num_workers=section.workers,
        batch_size=section.batch_size,
        retries=section.retries,
    )


def _training_evaluator(ctx: _Context) -> Any:
    """The paper's protocol every `model.eval_every` steps: the eval section's, fewer episodes."""
    from ldm_eval.training_curve import TrainingEvaluator

    e, m = ctx.suite.eval, ctx.suite.model
    config = _eval_config(e, episodes=m.eval_episodes)
    return TrainingEvaluator(
        config, copy_to=ctx.suite.folder, torch_threads=e.torch_threads, console=ctx.console
    )


# -- eval ------------------------------------------------------------------------------------------


def _eval_targets(
    suite: Suite, trained: Sequence[Any] | None
) -> tuple[list[str], list[str] | None, list[str]]:
    """(libraries, env ids or None for all trained, notes): the suite's envs the model saw.

    An env none of whose reference runs passed the filters is not in the model's data and has
    no reference to normalize against: evaluating it would cost rollouts and score nothing, so
    it is named in a note instead.
    """
    libraries = [lib.name for lib in suite.libraries]
    wanted = suite.env_ids()
    if trained is None:  # an old checkpoint without its envs: evaluate what the suite names
        flat = [e for envs in wanted.values() for e in envs]
        return libraries, flat if suite.restricts_envs() else None, []
    seen = {(t.library, t.env_id) for t in trained}
    missing = [f"{lib}/{e}" for lib, envs in wanted.items() for e in envs if (lib, e) not in seen]
    notes = []
    if missing:
        notes.append(
            "not evaluated (no reference run passed the filters, so the model never trained "
            f"on them): {', '.join(missing)}"
        )
    libraries = [lib for lib in libraries if any(t[0] == lib for t in seen)]
    if not suite.restricts_envs():
        return libraries, None, notes
    return libraries, [e for lib in libraries for e in wanted[lib] if (lib, e) in seen], notes


def _stage_eval(ctx: _Context) -> None:
    """The paper's protocol on the trained checkpoint, the random baseline beside it."""
    from ldm_envs.errors import LDMError
    from ldm_eval.checkpoint import read_checkpoint
    from ldm_eval.pipeline import eval_key, evaluate, plan_envs
    from ldm_eval.policies import LDMPolicyFactory, PolicyFactory, RandomPolicyFactory
    from ldm_model.training.checkpoint import CheckpointError

    suite, e = ctx.suite, ctx.suite.eval
    model_dir = _train_config(suite).out
    config = _eval_config(e)
    try:
        info = read_checkpoint(model_dir)
    except CheckpointError as exc:
        raise _Failure(f"{exc} (did the train stage finish? its folder: {model_dir})") from None
    libraries, env_ids, notes = _eval_targets(suite, info.envs)
    try:
        envs, warnings = plan_envs(info, libraries, env_ids)
    except (LDMError, ValueError) as exc:
        raise _Failure(str(exc)) from None
    warnings = notes + warnings
    policies: dict[str, PolicyFactory] = {"ldm": LDMPolicyFactory(info.path, device=e.device)}
    if e.random_baseline:
        policies["random"] = RandomPolicyFactory(e.seed)
    out = suite.folder / "eval" / eval_key(info, envs, list(policies), config)[:12]
    args = ["ldm-eval", "evaluate", info.path]
    args += [a for lib in libraries for a in ("-l", lib)]
    args += [a for x in env_ids or () for a in ("--env", x)]
    args += ["--episodes", e.episodes, "--rollouts", e.rollouts, "--seed", e.seed]
    args += ["--backend", e.backend, "--device", e.device, "--retries", e.retries]
    if not e.random_baseline:
        args.append("--no-random-baseline")
    args += ["--dataset", suite.dataset_root, "--resamples", e.resamples, "-o", out]
    ctx.console.rule(f"eval: {len(envs)} env(s), {e.rollouts} x {e.episodes} episodes")
    ctx.command(_q(args))
    try:
        with torch_threads(e.torch_threads):
            outcome = evaluate(
                envs,
                policies,
                config,
                out_dir=out,
                checkpoint=info,
                dataset_root=suite.dataset_root,
                warnings=warnings,
                track=True,
                resume=True,
                n_resamples=e.resamples,
                console=ctx.console,
            )
    except (LDMError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise _Failure(str(exc)) from None
    ctx.outputs["eval_dir"] = str(outcome.run_dir.path)
    ctx.outputs["eval_report"] = str(outcome.report)
    if outcome.mlflow_run_id:
        ctx.outputs["mlflow_run_id"] = outcome.mlflow_run_id


# -- report ----------------------------------------------------------------------------------------


def _fmt_wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes else f"{seconds:.1f} s"


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _suite_html(ctx: _Context) -> str:
    """The suite's section of the report: stages with wall times, dataset, where things are."""
    suite, record = ctx.suite, ctx.record
    esc = html.escape
    rows = []
    total = all_attempts = 0.0
    for stage in STAGES:
        rec = record.stages.get(stage)
        if rec is None:
            rows.append(
                f"<tr><td class='l'>{stage}</td><td class='l'>not run</td>"
                + "<td></td>" * 5
                + "</tr>"
            )
            continue
        total += rec.wall_s or 0.0
        all_attempts += rec.total_wall_s or rec.wall_s or 0.0
        rows.append(
            "<tr>"
            f"<td class='l'>{stage}</td><td class='l'>{esc(rec.status)}</td>"
            f"<td>{_fmt_wall(rec.wall_s)}</td><td>{_fmt_wall(rec.total_wall_s)}</td>"
            f"<td>{rec.attempts}</td>"
            f"<td class='l'>{_when(rec.started)}</td><td class='l'>{_when(rec.ended)}</td>"
            "</tr>"
        )
    rows.append(
        f"<tr><th class='l'>total</th><th></th><th>{_fmt_wall(total)}</th>"
        f"<th>{_fmt_wall(all_attempts)}</th>" + "<th></th>" * 3 + "</tr>"
    )
    stage_table = (
        "<table><thead><tr><th class='l'>stage</th><th class='l'>status</th>"
        "<th>wall time (last attempt)</th><th>wall time (all attempts since the stage last "
        "finished)</th><th>attempts</th><th class='l'>started</th>"
        f"<th class='l'>ended</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    commands = "".join(
        f"<li><b>{s}</b>: <code>{esc(c)}</code></li>"
        for s in STAGES
        for c in (record.stages[s].commands if s in record.stages else [])
    )
    try:
        summary = _dataset_summary(suite.dataset_root, suite)
        head = "".join(f"<th>{esc(c)}</th>" for c in summary.columns)
        body = "".join(
            "<tr>"
            + "".join(f"<td>{esc(f'{v:,}' if isinstance(v, int) else str(v))}</td>" for v in r)
            + "</tr>"
            for r in summary.iter_rows()
        )
        dataset = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    except (FileNotFoundError, OSError, ValueError) as exc:
        dataset = f"<p>no dataset index: {esc(str(exc))}</p>"
    uri = tracking.tracking_uri()
    config = yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
    curve = _training_curve_html(suite)
    return (
        f"<h2>Pipeline: suite {esc(suite.name)}</h2>"
        + (f"<p>{esc(suite.description)}</p>" if suite.description else "")
        + stage_table
        + "<h3>Dataset (suite envs)</h3>"
        + dataset
        + curve
        + "<h3>Where things are</h3><table class='meta'>"
        + f"<tr><th class='l'>suite file</th><td>{esc(str(suite.source or '-'))}</td></tr>"
        + f"<tr><th class='l'>suite folder</th><td>{esc(str(suite.folder))}</td></tr>"
        + f"<tr><th class='l'>dataset root</th><td>{esc(str(suite.dataset_root))}</td></tr>"
        + f"<tr><th class='l'>MLflow store</th><td>{esc(uri)}</td></tr>"
        + f"<tr><th class='l'>browse</th><td><code>{esc(_mlflow_ui_command(uri))}</code></td></tr>"
        + "</table>"
        + f"<details><summary>commands</summary><ul>{commands}</ul></details>"
        + f"<details><summary>suite</summary><pre>{esc(config)}</pre></details>"
    )


def _training_curve_html(suite: Suite) -> str:
    """The curve of the model's evaluations during training, copied beside the report."""
    from ldm_eval.training_curve import CURVE_FILE, CURVE_PNG, curve_html

    model_dir = _train_config(suite).out
    assert model_dir is not None
    if not (model_dir / CURVE_FILE).is_file():
        return ""
    atomic_write_text(suite.folder / CURVE_FILE, (model_dir / CURVE_FILE).read_text())
    png = (model_dir / CURVE_PNG).read_bytes() if (model_dir / CURVE_PNG).is_file() else None
    if png is not None:
        tmp = suite.folder / f".{CURVE_PNG}.tmp"
        tmp.write_bytes(png)
        tmp.replace(suite.folder / CURVE_PNG)
    return curve_html(suite.folder / CURVE_FILE, png)


def _unreferenced_html(references: Any) -> str:
    """Suite envs the model was never trained on, each with the filter's reasons.

    The evaluation only plans envs with a kept reference, so without this list an env whose
    runs were all dropped would vanish from the headline's denominator without a word.
    """
    if references is None:
        return ""
    rows = [r for r in references.iter_rows(named=True) if r.get("reference_status") != "ok"]
    if not rows:
        return "<p>Every env of the suite kept a reference run.</p>"
    items = "".join(
        f"<li>{html.escape(r['library'])}/{html.escape(r['env_id'])}: "
        f"{html.escape(str(r.get('reference_status')))}"
        f"{' (' + html.escape(r['dropped']) + ')' if r.get('dropped') else ''}</li>"
        for r in rows
    )
    return (
        f"<p>{len(rows)} of the suite's {references.height} envs kept no reference run, so the "
        f"model was not trained or scored on them:</p><ul>{items}</ul>"
    )


def _render_report(ctx: _Context) -> None:
    """Write the suite report: the headline, its own section, then the evaluation report's."""
    from ldm_eval.report import HEADLINE_END

    page = ctx.eval_html or ""
    section = _suite_html(ctx)
    if HEADLINE_END in page:  # the headline stays first; unscored suite envs named right below
        page = page.replace(HEADLINE_END, _unreferenced_html(ctx.references) + HEADLINE_END, 1)
        head, tail = page.split(HEADLINE_END, 1)
        page, section = head + HEADLINE_END + section + tail, ""
    title = f"LDM suite {html.escape(ctx.suite.name)}"
    page = re.sub(r"<title>.*?</title>", f"<title>{title}</title>", page, count=1)
    start, end = page.find("<h1>"), page.find("</h1>")
    if 0 <= start < end:
        evaluation = page[start + 4 : end].removeprefix("LDM evaluation: ")
        heading = f"<h1>{title}: evaluation {evaluation}</h1>"
        page = page[:start] + heading + section + page[end + 5 :]
    else:
        head = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        page = f"{head}<body><h1>{title}</h1>{section}{page}</body></html>"
    atomic_write_text(ctx.suite.report_path, page)


def _stage_report(ctx: _Context) -> None:
    """The suite report: stages and wall times, dataset, then the evaluation report."""
    from ldm_eval.report import render_report
    from ldm_eval.results import EvalRunDir
    from ldm_eval.tables import compute_tables

    rec = ctx.record.stages.get("eval")
    folder = rec.outputs.get("eval_dir") if rec is not None and rec.status == "finished" else None
    if folder is None or not Path(folder).is_dir():
        raise _Failure("no finished evaluation to report on: run the eval stage first")
    run_dir = EvalRunDir(Path(folder))
    ctx.command(_q(["ldm-eval", "report", folder, "-o", ctx.suite.report_path]))
    tables = compute_tables(run_dir, n_resamples=ctx.suite.eval.resamples)
    images = {p.name: p.read_bytes() for p in sorted(run_dir.plots.glob("*.png"))} or None
    ctx.eval_html = render_report(tables, images)
    ctx.references = references = _suite_references(ctx.suite)
    _render_report(ctx)
    ctx.outputs["report"] = str(ctx.suite.report_path)
    written = _write_csv_tables(tables, references, ctx.suite.folder)
    ctx.outputs["tables"] = ", ".join(p.name for p in written)


def _suite_references(suite: Suite) -> Any:
    """Every env of the suite with its reference run, or why it has none.

    Read from the dataset index (not the evaluation, which only plans the envs the model was
    trained on), so an env whose runs were all dropped is listed with the filter's reasons.
    """
    import polars as pl

    from ldm_envs.dataset.index import read_index
    from ldm_eval.normalize import reference_runs

    pairs = [(lib, env) for lib, envs in suite.env_ids().items() for env in envs]
    runs, episodes = read_index(suite.dataset_root)
    refs = reference_runs(runs, episodes, pairs)
    reasons = (
        runs.filter(~pl.col("kept").fill_null(False))
        .group_by("library", "env_id")
        .agg(pl.col("reason").drop_nulls().unique().sort().str.join("; ").alias("dropped"))
    )
    return refs.join(reasons, on=["library", "env_id"], how="left")


def _write_csv_tables(tables: Any, references: Any, folder: Path) -> list[Path]:
    """The report's tables as CSV beside `report.html`, for a reader with a spreadsheet.

    `references.csv` (every env of the suite: its reference run against random and rl-zoo, or
    the filter's reasons for having none), `per_env.csv`, `summary.csv`,
    `threshold_curve.csv`; nested columns (lists) are written as JSON text.
    """
    import polars as pl

    frames = {
        "references": references,
        "per_env": tables.per_env,
        "summary": tables.summary,
        "threshold_curve": tables.threshold,
    }
    paths = []
    for name, df in frames.items():
        flat = df.with_columns(
            pl.col(c).map_elements(
                lambda v: json.dumps(v.to_list() if isinstance(v, pl.Series) else v),
                return_dtype=pl.String,
            )
            for c, dtype in df.schema.items()
            if dtype.is_nested()
        )
        path = folder / f"{name}.csv"
        atomic_write_text(path, flat.write_csv())
        paths.append(path)
    return paths


_RUNNERS: dict[str, Callable[[_Context], None]] = {
    "probe": _stage_probe,
    "autorl": _stage_autorl,
    "train": _stage_train,
    "eval": _stage_eval,
    "report": _stage_report,
}


# ------------------------------------------------------------------------------------------------
# The runner


def _mlflow_ui_command(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return (
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false uv run mlflow ui --workers 1 "
            f"--backend-store-uri {uri}"
        )
    return f"open {uri} in a browser"


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
    tracker = _SuiteTracker(suite, console)
    outcome.mlflow_run_id = tracker.run_id
    ctx = _Context(suite, record, console)
    try:
        with _sigterm_as_interrupt():
            for stage in stages:
                rec = record.stages.get(stage)
                if rec is not None and rec.status == "finished":
                    if stage not in forced and rec.fingerprint == fps[stage]:
                        console.print(
                            f"[dim]stage {stage}: finished {_when(rec.ended)} in "
                            f"{_fmt_wall(rec.wall_s)}, skipped[/]",
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


def _run_stage(ctx: _Context, stage: str, fingerprint: str, tracker: _SuiteTracker) -> None:
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
        _RUNNERS[stage](ctx)
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
            str(error) if isinstance(error, _Failure) else f"{type(error).__name__}: {error}"
        )
    record.save(path)
    if stage == "report" and error is None:
        _render_report(ctx)  # again, now that the report stage has its own wall time
    tracker.stage_ended(rec)
    if error is None:
        return
    if not isinstance(error, Exception):
        raise error
    command = (
        ctx.commands[-1] if ctx.commands else f"ldm-eval suite {ctx.suite.source} --only {stage}"
    )
    raise StageError(stage, command, rec.error or "") from (
        None if isinstance(error, _Failure) else error
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
            _fmt_wall(rec.wall_s),
            str(rec.attempts),
            _when(rec.ended),
        )
    table.add_section()
    table.add_row("total", "", "", _fmt_wall(total), "", "")
    console.print(table)
    if outcome.failed:
        rec = record.stages[outcome.failed]
        console.print(f"[red]stage {outcome.failed} failed:[/] {rec.error}", highlight=False)
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
    console.print(f"browse it: {_mlflow_ui_command(uri)}", highlight=False, soft_wrap=True)
    if uri.startswith("sqlite:"):
        console.print("then open http://127.0.0.1:5000", highlight=False)
