"""The registry of candidates, discovered through the `ldm.algorithms` entry-point group.

Plugins ship lists of candidates (usually a `candidates.yaml` beside their `__init__.py`).
Loading a plugin is `ldm_envs.registry.EntryPointRegistry`'s, with the checks env-library
plugins get (contained import with `LDM_PLUGIN_IMPORT_TIMEOUT`, distribution
`ldm-algos-<name>`, the installed ldm-autorl within the distribution's range); then each
candidate is validated on its own, so a broken one is reported naming its plugin and key and
never hides the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from pydantic import ValidationError

from ldm_autorl.candidates.compat import compatibility
from ldm_autorl.candidates.config import CandidateConfig
from ldm_autorl.candidates.kinds import SpaceLike, _as_model
from ldm_autorl.errors import CandidateError, UnknownCandidateError
from ldm_envs.errors import validation_lines
from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.registry import EntryPointRegistry, Installed

ENTRY_POINT_GROUP = "ldm.algorithms"
DISTRIBUTION_PREFIX = "ldm-algos-"
logger = logging.getLogger(__name__)


@dataclass
class CandidateRegistry(
    EntryPointRegistry[Sequence[Any]],
    group=ENTRY_POINT_GROUP,
    kind="algorithm",
    distribution_prefix=DISTRIBUTION_PREFIX,
    core_distribution="ldm-autorl",
):
    """The known candidates with their plugin, plus the broken ones and why they are broken.

    `broken` is keyed by "plugin:candidate" for a candidate that failed validation (the name is
    "#i" when the entry has none), and by the plugin name alone when the whole entry point
    failed (import error, unreadable YAML, wrong target type, misnamed distribution, an
    installed ldm-autorl outside the distribution's range).
    """

    candidates: dict[str, tuple[str, CandidateConfig]] = field(default_factory=dict)

    def get(self, name: str) -> CandidateConfig:
        """The candidate called `name`.

        Raises:
            CandidateError: when a plugin declares it but it is broken (with the reason).
            UnknownCandidateError: listing the known candidates.
        """
        if name in self.candidates:
            return self.candidates[name][1]
        for key, reason in self.broken.items():
            if key.partition(":")[2] == name:
                raise CandidateError(reason)
        known = ", ".join(self.names()) or "(none installed)"
        raise UnknownCandidateError(f"unknown candidate {name!r}; known candidates: {known}")

    def plugin_of(self, name: str) -> str:
        """The plugin that declares candidate `name`."""
        self.get(name)
        return self.candidates[name][0]

    def add(self, candidate: CandidateConfig, plugin: str = "local") -> None:
        """Register a candidate directly (tests, notebooks), without an entry point.

        Raises:
            CandidateError: when the name is taken.
        """
        if candidate.name in self.candidates:
            other = self.candidates[candidate.name][0]
            raise CandidateError(
                f"plugin {plugin!r}: candidate {candidate.name!r}: duplicate name "
                f"(already declared by plugin {other!r})"
            )
        self.candidates[candidate.name] = (plugin, candidate)

    def compatible_with(
        self, observation_space: SpaceLike, action_space: SpaceLike
    ) -> list[CandidateConfig]:
        """The candidates that can train on these spaces, sorted by name."""
        obs, act = _as_model(observation_space), _as_model(action_space)
        found = []
        for name in self.names():
            candidate = self.candidates[name][1]
            if compatibility(candidate, obs, act)[0]:
                found.append(candidate)
        return found

    # -- EntryPointRegistry's hooks -----------------------------------------------------------

    @classmethod
    def _entry_points(cls) -> Iterable[EntryPoint]:
        return entry_points(group=ENTRY_POINT_GROUP)

    @staticmethod
    def _finish(target: Any) -> Any:
        """A callable entry point (not a class) returns the candidates."""
        return target() if callable(target) and not isinstance(target, type) else target

    def _parse(self, ep: EntryPoint, target: Any) -> Sequence[Any]:
        if isinstance(target, str | Path):
            return read_candidates(Path(target), ep.name)
        if isinstance(target, CandidateConfig | dict):
            return [target]
        if isinstance(target, list | tuple):
            return list(target)
        raise CandidateError(
            f"plugin {ep.name!r}: entry point {ep.value!r} must be a list of candidates, a path "
            "to a YAML file or a callable returning one, got "
            f"{type(target).__name__}"
        )

    def _accept(self, ep: EntryPoint, item: Sequence[Any]) -> None:
        for i, entry in enumerate(item):
            self._add_item(ep.name, i, entry)

    def _loaded(self) -> dict[str, tuple[str, CandidateConfig]]:
        return self.candidates

    def _add_item(self, plugin: str, index: int, item: Any) -> None:
        label = _item_name(item, index)
        try:
            candidate = parse_candidate(item, plugin, index)
            self.add(candidate, plugin)
        except CandidateError as exc:
            self.broken[f"{plugin}:{label}"] = str(exc)
            logger.debug("skipping candidate %r of plugin %r: %s", label, plugin, exc)


def _item_name(item: Any, index: int) -> str:
    if isinstance(item, CandidateConfig):
        return item.name
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return item["name"]
    return f"#{index}"


def parse_candidate(data: Any, plugin: str, index: int = 0) -> CandidateConfig:
    """Validate one candidate, turning pydantic's error into lines naming plugin and key.

    Raises:
        CandidateError: when the data does not validate.
    """
    if isinstance(data, CandidateConfig):
        return data
    label = _item_name(data, index)
    prefix = f"plugin {plugin!r}: candidate {label!r}: "
    if not isinstance(data, dict):
        raise CandidateError(f"{prefix}must be a mapping, got {type(data).__name__}")
    try:
        return CandidateConfig.model_validate(data)
    except ValidationError as exc:
        lines = validation_lines(exc, root=None)
        raise CandidateError("\n".join(prefix + line for line in lines)) from None


def read_candidates(path: Path, plugin: str) -> list[Any]:
    """Read a candidates YAML file: a list of mappings, or a mapping with a `candidates` list.

    Raises:
        CandidateError: naming the plugin and the file when it is missing or malformed.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CandidateError(f"plugin {plugin!r}: cannot read candidates {path}: {exc}") from None
    if isinstance(data, dict) and set(data) == {"candidates"}:
        data = data["candidates"]
    if not isinstance(data, list):
        raise CandidateError(
            f"plugin {plugin!r}: {path} must hold a list of candidates "
            f"(or a mapping with a `candidates` list), got {type(data).__name__}"
        )
    return data


#: The process-wide registry of installed candidates: `registry()`, `registry(refresh=True)`.
registry = Installed(CandidateRegistry.from_entry_points)
_cached_registry = registry  # its old name: `compatibility_table`'s argument shadows `registry`


def compatibility_table(
    spec: EnvLibrarySpec, registry: CandidateRegistry | None = None
) -> pl.DataFrame:
    """Per env of `spec` and per candidate: compatible or not, and why.

    Columns: env_id, candidate, compatible, reason. Envs whose spaces are not declared yet are
    listed as incompatible, asking for `ldm-envs probe`.
    """
    reg = registry if registry is not None else _cached_registry()
    rows: dict[str, list[Any]] = {"env_id": [], "candidate": [], "compatible": [], "reason": []}
    for env in spec.envs:
        for name in reg.names():
            candidate = reg.candidates[name][1]
            if env.observation_space is None or env.action_space is None:
                ok, reason = False, f"spaces not declared; run `ldm-envs probe {spec.name}`"
            else:
                ok, reason = compatibility(candidate, env.observation_space, env.action_space)
            rows["env_id"].append(env.id)
            rows["candidate"].append(name)
            rows["compatible"].append(ok)
            rows["reason"].append(reason)
    return pl.DataFrame(
        rows,
        schema={
            "env_id": pl.String,
            "candidate": pl.String,
            "compatible": pl.Boolean,
            "reason": pl.String,
        },
    )
