"""The suite file: its sections (one per stage), what each stage depends on, and loading.

Everything a suite file can get wrong is refused here, at load, before any stage runs: counts
and budgets, backends, devices, env ids, model configs, and candidate names (which only
ldm-autorl knows: it is asked through its own CLI, as the autorl stage will run it). Each
stage's fingerprint covers the fields it depends on, so the runner can tell a finished stage
whose inputs changed from one it may skip.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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

from ldm_envs.backends import BACKENDS
from ldm_envs.errors import validation_lines
from ldm_envs.paths import data_home
from ldm_eval.errors import SuiteError

if TYPE_CHECKING:
    from ldm_eval.protocol import EvalConfig

__all__ = [
    "AUTORL_CLI",
    "RECORD_FILE",
    "REPORT_FILE",
    "STAGES",
    "EvalSection",
    "LibraryConfig",
    "ModelSection",
    "ProbeSection",
    "StageName",
    "Suite",
    "digest",
    "load_suite",
]

#: The stages, in the order they run.
STAGES: tuple[str, ...] = ("probe", "autorl", "train", "eval", "report")

StageName = Literal["probe", "autorl", "train", "eval", "report"]

RECORD_FILE = "stages.json"
REPORT_FILE = "report.html"

#: How the suite starts the `ldm-autorl` CLI: this interpreter, so the same environment.
AUTORL_CLI = (sys.executable, "-m", "ldm_autorl.cli")


class LibraryConfig(BaseModel):
    """One env library of the suite and its AutoRL settings (`ldm-autorl` options)."""

    model_config = ConfigDict(extra="forbid")

    #: An installed env library (`ldm-envs list`).
    name: str
    #: Env ids to train reference runs on, train the model on and evaluate (None: every env the
    #: library declares, up to the 250 cap). Ranking always uses the library's ranking subset.
    envs: list[str] | None = Field(default=None, min_length=1)
    #: Candidates to rank (None: every registered candidate; `ldm-autorl list LIB`).
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

    #: Named config (`ldm-model list`).
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

    def protocol(self, episodes: int | None = None) -> EvalConfig:
        """The protocol's settings from this section (`episodes` overriding its own)."""
        from ldm_eval.protocol import EvalConfig

        return EvalConfig(
            episodes=episodes or self.episodes,
            rollouts=self.rollouts,
            seed=self.seed,
            backend=self.backend,
            num_workers=self.workers,
            batch_size=self.batch_size,
            retries=self.retries,
        )


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
        fps["probe"] = digest(
            {
                "libraries": [[lib.name, lib.envs, lib.backend] for lib in self.libraries],
                "probe": self.probe.model_dump(mode="json"),
            }
        )
        fps["autorl"] = digest({"libraries": libs, "root": root})
        fps["train"] = digest(
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
        fps["eval"] = digest({"eval": self.eval.model_dump(mode="json"), "upstream": fps["train"]})
        fps["report"] = digest({"upstream": [fps[s] for s in STAGES[:-1]], "name": self.name})
        return fps


def digest(payload: Any) -> str:
    """A short, stable hash of a JSON-able payload: fingerprints and folder keys."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache
def _unknown_candidates(library: str, names: tuple[str, ...]) -> str | None:
    """Why `ldm-autorl` refuses these candidate names for `library`, or None when it knows them.

    It asks the CLI the autorl stage will run anyway, `ldm-autorl list LIB --candidate
    ...`, which exits 2 with an `error:` line for an unknown name: a few seconds at load
    instead of a ranking stage that fails after the probe stage. A subprocess rather than an
    import, so that the candidate plugins (SB3 and its torch) load in the process that trains
    with them, not in the suite's.
    """
    args = [*AUTORL_CLI, "list", library]
    args += [a for name in names for a in ("--candidate", name)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not ask `ldm-autorl list` about them: {exc}"
    if proc.returncode == 0:
        return None
    for line in proc.stderr.splitlines():
        if line.startswith("error:"):
            return line.removeprefix("error:").strip().removeprefix("--candidate: ")
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])
    return f"`ldm-autorl list {library}` failed (exit {proc.returncode}): {tail}"


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
        lines = validation_lines(exc, root="(top level)")
        raise SuiteError("\n".join(f"{path}: {line}" for line in lines)) from None
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
