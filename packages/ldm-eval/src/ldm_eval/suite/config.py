"""The suite file: its sections (one per stage), what each stage depends on, and loading.

Everything a suite file can get wrong is refused here, at load, before any stage runs: counts
and budgets, backends, devices, env ids, model configs, and candidate names (which only
ldm-autorl knows: it is asked through its own CLI, as the autorl stage will run it). Each
stage's fingerprint covers the fields it depends on, so the runner can tell a finished stage
whose inputs changed from one it may skip.

Each stage section embeds that stage's own config model, the one its CLI's options are derived
from, so a default is written once: a library is `ldm_autorl.config.AutoRLConfig`, `probe` is
`ldm_envs.probe_config.ProbeConfig`, `model` is `ldm_model.training.TrainConfig` (less what
the suite sets itself) and `eval` is `ldm_eval.plan.EvaluateConfig`. Suite files keep their
field names (`workers`, `config`, `check_steps`) as aliases.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from ldm_autorl.config import EXECUTION_FIELDS as AUTORL_EXECUTION_FIELDS
from ldm_autorl.config import AutoRLConfig
from ldm_envs.cli_options import field_default
from ldm_envs.errors import validation_lines
from ldm_envs.paths import data_home
from ldm_envs.probe_config import ProbeConfig
from ldm_eval.errors import SuiteError
from ldm_eval.plan import EvaluateConfig
from ldm_model.training.config import EXECUTION_FIELDS as TRAIN_EXECUTION_FIELDS
from ldm_model.training.config import TrainConfig

__all__ = [
    "AUTORL_CLI",
    "RECORD_FILE",
    "REPORT_FILE",
    "STAGES",
    "SUITE_TRAIN_FIELDS",
    "EvalSection",
    "LibraryConfig",
    "ModelSection",
    "ProbeSection",
    "StageName",
    "Suite",
    "digest",
    "load_suite",
    "stable_dump",
]

#: The stages, in the order they run.
STAGES: tuple[str, ...] = ("probe", "autorl", "train", "eval", "report")

StageName = Literal["probe", "autorl", "train", "eval", "report"]

RECORD_FILE = "stages.json"
REPORT_FILE = "report.html"

#: How the suite starts the `ldm-autorl` CLI: this interpreter, so the same environment.
AUTORL_CLI = (sys.executable, "-m", "ldm_autorl.cli")


class _Named(BaseModel):
    """A suite library's name: a base of its own so that it is validated before its envs."""

    #: An installed env library (`ldm-envs list`).
    name: str


class LibraryConfig(AutoRLConfig, _Named):
    """One env library of the suite: the autorl stage's config (`AutoRLConfig`) for it.

    Suite-only: `env_budgets`. `envs` are also the envs the model trains on and is evaluated
    on (None: every env the library declares, up to the 250 cap); ranking always uses the
    library's ranking subset. `workers` is accepted for `parallel`, its name in suite files.
    """

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    parallel: Annotated[
        int | None,
        AutoRLConfig.model_fields["parallel"],
        Field(validation_alias=AliasChoices("workers", "parallel"), serialization_alias="workers"),
    ] = AutoRLConfig.model_fields["parallel"].default
    #: Reference-run budgets of single envs, where one library's envs differ a lot (LunarLander
    #: needs ~50x CartPole's transitions); the others get `train_budget`.
    env_budgets: dict[str, int] = {}

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

    def stable_dump(self) -> dict[str, Any]:
        """What the autorl stage makes depends on (`stable_dump` of the fields, see there)."""
        return stable_dump(self, _LIBRARY_KEYS, skip=AUTORL_EXECUTION_FIELDS)


class ProbeSection(ProbeConfig):
    """The `probe` stage: spaces against the manifest, then random rollouts (`ProbeConfig`).

    Fewer check steps than `ldm-envs check` by default: the suite probes every library first
    and the check only has to show that the envs step.
    """

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    #: Rewrite a manifest whose spaces differ from the library (as `ldm-envs probe LIB` does);
    #: by default a mismatch stops the suite, since it changes an installed plugin's file.
    write: bool = False
    steps: int = Field(
        default=100,
        ge=0,
        validation_alias=AliasChoices("check_steps", "steps"),
        serialization_alias="check_steps",
        description="batched random steps per env in the check (0: no check)",
    )

    def stable_dump(self) -> dict[str, Any]:
        """What the probe stage depends on (`stable_dump` of the fields, see there)."""
        return stable_dump(self, ("write", "check_steps"))


#: Fields of `TrainConfig` the suite sets itself (from its libraries and its folder).
SUITE_TRAIN_FIELDS: frozenset[str] = frozenset(
    {"data_root", "libraries", "env_ids", "out", "mlflow"}
)


class ModelSection(TrainConfig):
    """The `train` stage: `ldm-model train`'s config (`TrainConfig`) but what the suite sets.

    `config` names the model's named config (`model` is accepted too); the dataset, the env
    filters, the run folder and MLflow are the suite's (`SUITE_TRAIN_FIELDS`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    model: Annotated[
        str,
        TrainConfig.model_fields["model"],
        Field(
            validation_alias=AliasChoices("config", "model"),
            serialization_alias="config",
            description="named config (`ldm-model list`)",
        ),
    ] = TrainConfig.model_fields["model"].default

    @model_validator(mode="before")
    @classmethod
    def _suite_fields(cls, data: Any) -> Any:
        taken = sorted(SUITE_TRAIN_FIELDS & set(data)) if isinstance(data, dict) else []
        if taken:
            raise ValueError(
                f"{', '.join(taken)}: set by the suite (its libraries, envs, data_root and "
                "folder), not in its model section"
            )
        return data

    @field_validator("device")
    @classmethod
    def _device_here(cls, value: str) -> str:
        from ldm_model.devices import validate_device

        # checked at load: a mistyped device must not wait for the train stage to fail
        return validate_device(value, allow_auto=True)

    @property
    def config(self) -> str:
        """The named model config."""
        return str(self.model)

    def train_fields(self) -> dict[str, Any]:
        """The section's `TrainConfig` fields, to which the suite adds `SUITE_TRAIN_FIELDS`."""
        return {
            n: getattr(self, n) for n in TrainConfig.model_fields if n not in SUITE_TRAIN_FIELDS
        }

    def stable_dump(self) -> dict[str, Any]:
        """What the train stage depends on (`stable_dump` of the fields, see there)."""
        # the execution fields the section did not have are not part of what it makes
        skip = SUITE_TRAIN_FIELDS | (TRAIN_EXECUTION_FIELDS - set(_MODEL_KEYS))
        return stable_dump(self, _MODEL_KEYS, skip=skip)


class EvalSection(EvaluateConfig):
    """The `eval` stage: `ldm-eval evaluate`'s config (`EvaluateConfig`).

    `workers` names `num_workers` (workers per library; None: the cores shared among the
    libraries); `num_workers` is accepted too.
    """

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    num_workers: Annotated[
        int | None,
        EvaluateConfig.model_fields["num_workers"],
        Field(
            validation_alias=AliasChoices("workers", "num_workers"),
            serialization_alias="workers",
        ),
    ] = EvaluateConfig.model_fields["num_workers"].default

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from ldm_model.devices import validate_device

        # checked at load: a `device: cdua` suite once ran 96 s of stages before failing
        return validate_device(value)

    def stable_dump(self) -> dict[str, Any]:
        """What the eval stage depends on (`stable_dump` of the fields, see there)."""
        return stable_dump(self, _EVAL_KEYS)


#: The keys each section had before it embedded its stage's config: `stable_dump` keeps them
#: as they were, so the fingerprints of a suite that does not set a newer field are unchanged.
_LIBRARY_KEYS = (
    "name",
    "envs",
    "candidates",
    "top_n",
    "rank_budget",
    "train_budget",
    "env_budgets",
    "random_episodes",
    "seeds",
    "backend",
)
_MODEL_KEYS = (
    "config",
    "steps",
    "batch_size",
    "context",
    "weighting",
    "lr",
    "seed",
    "device",
    "checkpoint_every",
    "num_workers",
    "eval_every",
    "eval_episodes",
)
_EVAL_KEYS = (
    "episodes",
    "rollouts",
    "seed",
    "random_baseline",
    "backend",
    "device",
    "workers",
    "batch_size",
    "retries",
    "resamples",
    "torch_threads",
)


def stable_dump(
    section: BaseModel, keys: Sequence[str], *, skip: Collection[str] = ()
) -> dict[str, Any]:
    """A section as the fingerprints have always seen it, whatever fields its model gains.

    The keys it had before it embedded its stage's config, with the value given in the file
    (a default the model resolves, such as the batch size, stays as it was: unset); any newer
    field only where it differs from its default. So upgrading does not run a finished stage
    again, while a suite that sets a new field (a weight decay, say) gets new fingerprints.
    """
    data = section.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, info in type(section).model_fields.items():
        key = info.serialization_alias or name
        if name in skip or key in skip:
            continue
        if key in keys:
            given = name in section.model_fields_set
            out[key] = (
                data[key] if given else to_jsonable_python(field_default(type(section), name))
            )
        elif data[key] != to_jsonable_python(field_default(type(section), name)):
            out[key] = data[key]
    return out


class Suite(BaseModel):
    """A suite file: what to run, end to end. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

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
        libs = [lib.stable_dump() for lib in self.libraries]
        root = str(self.dataset_root.resolve())
        fps: dict[str, str] = {}
        fps["probe"] = digest(
            {
                "libraries": [[lib.name, lib.envs, lib.backend] for lib in self.libraries],
                "probe": self.probe.stable_dump(),
            }
        )
        fps["autorl"] = digest({"libraries": libs, "root": root})
        model = self.model.stable_dump()
        for key in ("device", "num_workers", "checkpoint_every", "eval_every", "eval_episodes"):
            model.pop(key, None)
        fps["train"] = digest({"model": model, "envs": self.env_ids(), "upstream": fps["autorl"]})
        fps["eval"] = digest({"eval": self.eval.stable_dump(), "upstream": fps["train"]})
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
