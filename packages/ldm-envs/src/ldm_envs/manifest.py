"""The env-library spec: what a plugin declares so the host never imports the library itself.

A manifest is plain data (usually `manifest.yaml` beside the plugin's `__init__.py`). The host
validates it, builds the isolated environment from it, and hands the env declarations to the
worker; `ldm-envs probe` rewrites the declared spaces from the real library.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ldm_envs.atomic import atomic_write_text
from ldm_envs.errors import ManifestError, SpaceError, UnknownEnvError, validation_lines
from ldm_envs.spaces import Space, check_limits

#: How many envs of a library the ranking stage trains on (paper section 4.2).
RANKING_SUBSET_SIZE = 5
_ENV_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*-v\d+$")
_LIB_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*$")


class Api(str, Enum):
    """Which step/reset semantics the library speaks; the worker adapts all to Gymnasium's."""

    GYMNASIUM = "gymnasium"
    GYM26 = "gym26"
    GYM21 = "gym21"


class IsolatedEnvironment(BaseModel):
    """Everything needed to build the library's own environment (venv or docker image)."""

    model_config = ConfigDict(extra="forbid")

    python: str = Field(default="3.11", pattern=r"^\d+\.\d+(\.\d+)?$")
    api: Api = Api.GYMNASIUM
    requirements: list[str] = Field(min_length=1)
    build_constraints: list[str] = []
    apt_packages: list[str] = []
    env_vars: dict[str, str] = {}
    base_image: str | None = None
    local_packages: list[str] = []

    @field_validator("requirements", "build_constraints")
    @classmethod
    def _pep508(cls, value: list[str]) -> list[str]:
        """Refuse a malformed requirement here, not minutes later in the resolver's log.

        A line starting with `-` (a pip option such as `--extra-index-url`) and a bare URL or
        path go to the installer unchanged; everything else must be a PEP 508 requirement.
        """
        from packaging.requirements import InvalidRequirement, Requirement

        for i, entry in enumerate(value):
            text = entry.strip()
            if not text:
                raise ValueError(f"entry {i} is empty")
            if text.startswith(("-", ".", "/")) or "://" in text.split("@")[0]:
                continue
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                first = str(exc).splitlines()[0]
                raise ValueError(
                    f"{entry!r} is not a PEP 508 requirement such as 'name>=1.0' ({first})"
                ) from None
        return value

    @field_validator("local_packages")
    @classmethod
    def _relative_inside_plugin(cls, value: list[str]) -> list[str]:
        for entry in value:
            parts = Path(entry).parts
            if Path(entry).is_absolute() or ".." in parts or not parts:
                raise ValueError(
                    f"local package {entry!r} must be a folder inside the plugin, given relative "
                    "to the manifest's folder"
                )
        return value

    def content_hash(self, *extra: str) -> str:
        """Short stable hash of what determines the built environment (the cache key)."""
        data = self.model_dump(mode="json")
        if not data["local_packages"]:
            # absent rather than empty, so environments built before the field existed stay cached
            del data["local_packages"]
        payload = json.dumps(data, sort_keys=True) + "|".join(extra)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class WrapperSpec(BaseModel):
    """A Gymnasium wrapper applied in the worker, with the keyword arguments it takes.

    The plain string form `"module:Class"` stays valid; this form exists for wrappers that need
    arguments, e.g. `{name: "gymnasium.wrappers:ClipObservation", kwargs: {low: -5, high: 5}}`.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    kwargs: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _target(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError(f"wrapper {value!r} must be a 'module:Class' string")
        return value


_Bound = float | list[float]


class ObservationBounds(BaseModel):
    """Bounds that replace the library's declared ones on the (flattened) Box observation.

    Libraries declare bounds their values leave (panda-gym: Box(-10, 10) with velocities of
    20-35), which fails `check` on a random subset of runs. Widening here, applied in the worker,
    keeps the library untouched and needs no glue package. A scalar applies to every dimension,
    a list gives one value per flattened dimension; `-.inf`/`.inf` mean unbounded. `ldm-envs add`
    writes it for the envs whose random rollouts it saw leave their bounds.
    """

    model_config = ConfigDict(extra="forbid")

    low: _Bound | None = None
    high: _Bound | None = None

    def worker_request(self) -> dict[str, Any]:
        """Plain JSON for the worker (None: keep the library's bound)."""
        return {"low": self.low, "high": self.high}


class EnvSpec(BaseModel):
    """One declared env: how to make it, and the spaces the host will see after the worker."""

    model_config = ConfigDict(extra="forbid")

    id: str
    gym_id: str | None = None
    kwargs: dict[str, Any] = {}
    max_episode_steps: int | None = Field(default=None, gt=0)
    wrappers: list[str | WrapperSpec] = []
    observation_bounds: ObservationBounds | None = None
    seed_kwarg: str | None = None
    remake_on_reset: bool = False
    observation_space: Space | None = None
    action_space: Space | None = None

    @field_validator("id")
    @classmethod
    def _versioned_id(cls, value: str) -> str:
        if not _ENV_ID.match(value):
            raise ValueError(f"env id {value!r} must look like Name-vN")
        return value

    @field_validator("wrappers")
    @classmethod
    def _wrapper_targets(cls, value: list[str | WrapperSpec]) -> list[str | WrapperSpec]:
        for target in value:
            if isinstance(target, str) and ":" not in target:
                raise ValueError(f"wrapper {target!r} must be a 'module:Class' string")
        return value

    def wrapper_calls(self) -> list[tuple[str, dict[str, Any]]]:
        """Each wrapper as `("module:Class", kwargs)`, whichever form the manifest used."""
        return [(w, {}) if isinstance(w, str) else (w.name, dict(w.kwargs)) for w in self.wrappers]

    def wrapper_labels(self) -> list[str]:
        """The wrappers as short text for tables: `module:Class(key=value, ...)`."""
        return [
            name + (f"({', '.join(f'{k}={v!r}' for k, v in kw.items())})" if kw else "")
            for name, kw in self.wrapper_calls()
        ]

    @property
    def make_id(self) -> str:
        """The id passed to the library's `make`."""
        return self.gym_id or self.id

    @property
    def probed(self) -> bool:
        """Whether both spaces are declared (a fresh scaffold has none until `probe`)."""
        return self.observation_space is not None and self.action_space is not None

    def worker_request(self) -> dict[str, Any]:
        """What the worker needs to make this env (plain JSON)."""
        return {
            "id": self.id,
            "gym_id": self.make_id,
            "kwargs": self.kwargs,
            "max_episode_steps": self.max_episode_steps,
            # plain strings where there are no kwargs: workers of older releases read those
            "wrappers": [
                name if not kw else {"name": name, "kwargs": kw}
                for name, kw in self.wrapper_calls()
            ],
            "observation_bounds": (
                self.observation_bounds.worker_request() if self.observation_bounds else None
            ),
            "seed_kwarg": self.seed_kwarg,
            "remake_on_reset": self.remake_on_reset,
        }


class EnvLibrarySpec(BaseModel):
    """A plugin's manifest: the library, its isolated environment and its declared envs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    description: str = ""
    requires_core: str = ""
    environment: IsolatedEnvironment
    imports: list[str] = []
    envs: list[EnvSpec] = Field(min_length=1)
    ranking_subset: list[str] = []
    #: Envs the library registers that are left out on purpose, each with its cause (over 128
    #: observation dims, an image inside a Dict, an exception on reset, too slow...). Written by
    #: `ldm-envs add`; documentation only: nothing makes or checks them.
    excluded: dict[str, str] = {}
    #: The manifest file's folder, which `environment.local_packages` are relative to.
    _source_dir: Path | None = PrivateAttr(default=None)

    def located_at(self, source_dir: Path | None) -> EnvLibrarySpec:
        """This spec, remembering the folder its manifest file was read from."""
        self._source_dir = source_dir
        return self

    @property
    def source_dir(self) -> Path | None:
        """The folder of the manifest file (None for a spec built in code)."""
        return self._source_dir

    def local_package_dirs(self) -> list[Path]:
        """The plugin's worker-side packages, resolved and checked.

        Raises:
            ManifestError: naming the plugin and the entry that is missing or not a project.
        """
        dirs = []
        for entry in self.environment.local_packages:
            where = f"plugin {self.name!r}: field environment.local_packages: {entry!r}"
            if self._source_dir is None:
                raise ManifestError(f"{where} needs a manifest read from a file to be relative to")
            path = (self._source_dir / entry).resolve()
            if not path.is_dir():
                raise ManifestError(f"{where}: folder {path} does not exist")
            if not any((path / name).is_file() for name in ("pyproject.toml", "setup.py")):
                raise ManifestError(f"{where}: {path} has no pyproject.toml or setup.py")
            dirs.append(path)
        return dirs

    def environment_hash(self, *extra: str) -> str:
        """The cache key of the built environment.

        It covers the environment block, `extra` and the contents of the local packages, so
        editing a local package rebuilds the venv or image.
        """
        digests = [_tree_digest(path) for path in self.local_package_dirs()]
        return self.environment.content_hash(*extra, *digests)

    @field_validator("name")
    @classmethod
    def _lower_kebab(cls, value: str) -> str:
        if not _LIB_NAME.match(value):
            raise ValueError(f"library name {value!r} must be lower-case kebab-case")
        return value

    @field_validator("envs")
    @classmethod
    def _unique_and_within_limits(cls, envs: list[EnvSpec]) -> list[EnvSpec]:
        seen: set[str] = set()
        for env in envs:
            if env.id in seen:
                raise ValueError(f"env id {env.id!r} is declared twice")
            seen.add(env.id)
            if env.observation_space is not None and env.action_space is not None:
                try:
                    check_limits(env.observation_space, env.action_space, where=env.id)
                except SpaceError as exc:
                    raise ValueError(str(exc)) from exc
        return envs

    @field_validator("ranking_subset")
    @classmethod
    def _subset_of_envs(cls, subset: list[str], info: ValidationInfo) -> list[str]:
        envs = info.data.get("envs")
        if envs is None:  # envs failed validation; that error is reported on its own
            return subset
        declared = {e.id for e in envs}
        unknown = [e for e in subset if e not in declared]
        if unknown:
            raise ValueError(f"names undeclared envs {unknown}")
        if len(set(subset)) != len(subset):
            raise ValueError("repeats an env")
        wanted = min(RANKING_SUBSET_SIZE, len(envs))
        if subset and len(subset) != wanted:
            raise ValueError(f"has {len(subset)} envs; it needs {wanted}")
        return subset

    @field_validator("excluded")
    @classmethod
    def _excluded_not_declared(
        cls, excluded: dict[str, str], info: ValidationInfo
    ) -> dict[str, str]:
        both = sorted(set(excluded) & {e.id for e in info.data.get("envs") or []})
        if both:
            raise ValueError(f"lists envs that are also declared: {both}")
        empty = sorted(k for k, v in excluded.items() if not str(v).strip())
        if empty:
            raise ValueError(f"gives no cause for {empty}")
        return excluded

    @property
    def env_ids(self) -> list[str]:
        """Declared env ids in manifest order."""
        return [e.id for e in self.envs]

    @property
    def ranking_envs(self) -> list[str]:
        """The ranking subset, defaulting to the first five declared envs."""
        return self.ranking_subset or self.env_ids[:RANKING_SUBSET_SIZE]

    def env(self, env_id: str) -> EnvSpec:
        """The declared env with this id.

        Raises:
            UnknownEnvError: listing the declared ids.
        """
        for env in self.envs:
            if env.id == env_id:
                return env
        raise UnknownEnvError(
            f"library {self.name!r} declares no env {env_id!r}; declared: {', '.join(self.env_ids)}"
        )


#: Build leftovers of a local package: neither hashed nor copied into an environment.
LOCAL_PACKAGE_IGNORES = (
    "__pycache__",
    "*.pyc",
    "build",
    "dist",
    "*.egg-info",
    ".venv",
    ".pytest_cache",
    ".ruff_cache",
)


def _ignored(rel: Path) -> bool:
    return any(
        fnmatch.fnmatch(part, pattern) for part in rel.parts for pattern in LOCAL_PACKAGE_IGNORES
    )


def _tree_digest(root: Path) -> str:
    """Hash of the relative paths and bytes of a source tree, build leftovers aside."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not _ignored(rel):
            digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def format_validation_error(plugin: str, exc: ValidationError) -> str:
    """One line per problem, each naming the plugin and the field path."""
    return "\n".join(f"plugin {plugin!r}: {line}" for line in validation_lines(exc))


def parse_manifest(data: Any, plugin: str) -> EnvLibrarySpec:
    """Validate manifest data, turning pydantic's error into one that names plugin and field.

    Raises:
        ManifestError: when the data does not validate.
    """
    if isinstance(data, EnvLibrarySpec):
        return data
    if not isinstance(data, dict):
        raise ManifestError(
            f"plugin {plugin!r}: manifest must be a mapping, got {type(data).__name__}"
        )
    try:
        return EnvLibrarySpec.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(format_validation_error(plugin, exc)) from None


def read_manifest(path: Path, plugin: str | None = None) -> EnvLibrarySpec:
    """Read and validate a manifest file (YAML or JSON).

    Raises:
        ManifestError: naming the file when it is unreadable or malformed.
    """
    plugin = plugin or path.parent.name
    try:
        # libyaml's loader where PyYAML has it: 8x faster on the large generated manifests,
        # which every command reads at start (`ldm-envs list` must stay under 2 s)
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"plugin {plugin!r}: cannot read manifest {path}: {exc}") from None
    return parse_manifest(data, plugin).located_at(path.parent)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


def write_manifest(spec: EnvLibrarySpec, path: Path) -> None:
    """Write a manifest atomically (temporary file, then rename) so a crash never truncates it."""
    data = _plain(spec.model_dump(mode="python"))
    # fields newer than most manifests are written only when set, so a probe's rewrite of an
    # older manifest shows only what changed
    if not data["excluded"]:
        del data["excluded"]
    for env in data["envs"]:
        if env["observation_bounds"] is None:
            del env["observation_bounds"]
    text = yaml.safe_dump(data, sort_keys=False, width=100, default_flow_style=None)
    atomic_write_text(path, text)
