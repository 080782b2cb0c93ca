"""Discovery of env-library plugins through the `ldm.env_libraries` entry-point group.

A broken plugin is recorded with a message naming it and its faulty field, and never hides the
others: `LibraryRegistry.get` raises that message only when the broken library is asked for
(and `ldm-envs list` shows every broken one); discovery itself only logs at debug level, so a
broken plugin does not speak up in every command that never asked for it.

Importing a plugin is third-party code running inside every CLI. `load_entry_point` contains
it: an import that raises anything, `SystemExit` included (a stray `sys.exit()`), makes that
plugin broken instead of ending the process, and an import that hangs is abandoned after
`LDM_PLUGIN_IMPORT_TIMEOUT` seconds (default 60) with a message naming the plugin. Only
`KeyboardInterrupt` goes through: the user asked to stop.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points, version
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from ldm_envs.errors import LDMEnvsError, ManifestError, PluginError, UnknownLibraryError
from ldm_envs.manifest import EnvLibrarySpec, parse_manifest, read_manifest

ENTRY_POINT_GROUP = "ldm.env_libraries"
DISTRIBUTION_PREFIX = "ldm-envlib-"
#: Seconds a plugin's import may take before it counts as hung (`LDM_PLUGIN_IMPORT_TIMEOUT`).
#: Plugins import nothing heavy by design; the margin is for a loaded machine.
DEFAULT_IMPORT_TIMEOUT = 60.0
logger = logging.getLogger(__name__)


def import_timeout() -> float:
    """The plugin import time limit: `LDM_PLUGIN_IMPORT_TIMEOUT` seconds, else the default.

    Raises:
        PluginError: when the variable is not a positive number (naming it).
    """
    raw = os.environ.get("LDM_PLUGIN_IMPORT_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_IMPORT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise PluginError(f"LDM_PLUGIN_IMPORT_TIMEOUT must be a positive number, got {raw!r}")
    return value


def load_entry_point(
    ep: EntryPoint,
    *,
    finish: Callable[[Any], Any] | None = None,
    timeout: float | None = None,
) -> Any:
    """`ep.load()`, contained: whatever the plugin's import does, the caller gets on.

    The import runs in a daemon thread joined with `timeout` (default `import_timeout()`), so
    a plugin that hangs on import is abandoned (its thread finishes or dies with the process)
    and one that calls `sys.exit()` or raises any other `BaseException` is reported. The
    entry-point registries of ldm-autorl and ldm-model load their plugins through this too.

    Args:
        ep: the entry point.
        finish: applied to the loaded object in the same thread, under the same limit and
            containment (calling a factory the entry point names, say).
        timeout: seconds; None reads `LDM_PLUGIN_IMPORT_TIMEOUT`.

    Raises:
        PluginError: naming the plugin and what its import did (exception, exit, or timeout).
        KeyboardInterrupt: passed through, from the import or while waiting for it.
    """
    limit = import_timeout() if timeout is None else timeout
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            loaded = ep.load()
            outcome.append(finish(loaded) if finish is not None else loaded)
        except BaseException as exc:  # SystemExit too: a plugin never ends the process
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"ldm-plugin-import:{ep.name}", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise PluginError(
            f"plugin {ep.name!r}: importing {ep.value!r} took more than {limit:g} s, so it was "
            "skipped (a hang on import?); raise LDM_PLUGIN_IMPORT_TIMEOUT if it is just slow"
        )
    if failure:
        exc = failure[0]
        if isinstance(exc, KeyboardInterrupt | LDMEnvsError):
            raise exc
        if isinstance(exc, SystemExit):
            what = f"it called sys.exit({exc.code!r}) while being imported"
        else:
            what = f"{type(exc).__name__}: {exc}"
        raise PluginError(f"plugin {ep.name!r}: loading {ep.value!r} failed: {what}") from None
    return outcome[0]


@dataclass(frozen=True)
class LoadedLibrary:
    """A validated manifest and where it came from."""

    spec: EnvLibrarySpec
    plugin: str
    distribution: str | None = None
    source: Path | None = None


@dataclass
class LibraryRegistry:
    """The known env libraries, plus the broken plugins and why they are broken."""

    libraries: dict[str, LoadedLibrary] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Sorted names of the libraries that loaded."""
        return sorted(self.libraries)

    def get(self, name: str) -> EnvLibrarySpec:
        """The spec of library `name`.

        Raises:
            PluginError: when that plugin is installed but broken (with the reason).
            UnknownLibraryError: listing the known libraries.
        """
        return self.entry(name).spec

    def entry(self, name: str) -> LoadedLibrary:
        """Like `get`, with the plugin's origin."""
        if name in self.libraries:
            return self.libraries[name]
        if name in self.broken:
            raise PluginError(self.broken[name])
        known = ", ".join(self.names()) or "(none installed)"
        raise UnknownLibraryError(f"unknown env library {name!r}; known libraries: {known}")

    def add(self, spec: EnvLibrarySpec, *, source: Path | None = None) -> None:
        """Register a spec directly (tests, notebooks), without an entry point."""
        self.libraries[spec.name] = LoadedLibrary(spec=spec, plugin=spec.name, source=source)

    @classmethod
    def from_entry_points(cls, eps: Iterable[EntryPoint] | None = None) -> LibraryRegistry:
        """Load every plugin of the entry-point group, isolating failures per plugin."""
        registry = cls()
        for ep in eps if eps is not None else entry_points(group=ENTRY_POINT_GROUP):
            try:
                registry.libraries[ep.name] = _load_entry_point(ep)
            except LDMEnvsError as exc:
                registry.broken[ep.name] = str(exc)
                logger.debug("skipping env-library plugin %r: %s", ep.name, exc)
            except Exception as exc:
                msg = (
                    f"plugin {ep.name!r}: loading {ep.value!r} failed: {type(exc).__name__}: {exc}"
                )
                registry.broken[ep.name] = msg
                logger.debug("skipping env-library plugin %r: %s", ep.name, msg)
        return registry


def _load_entry_point(ep: EntryPoint) -> LoadedLibrary:
    dist = ep.dist.name if ep.dist is not None else None
    target: Any = load_entry_point(ep, finish=_call_factory)
    source: Path | None = None
    if isinstance(target, str | Path):
        source = Path(target)
        if not source.exists():
            raise ManifestError(f"plugin {ep.name!r}: manifest file {source} does not exist")
        spec = read_manifest(source, ep.name)
    else:
        spec = parse_manifest(target, ep.name)
    if spec.name != ep.name:
        raise ManifestError(
            f"plugin {ep.name!r}: field name: manifest says {spec.name!r} but the entry point "
            f"is named {ep.name!r}"
        )
    if dist is not None and dist != DISTRIBUTION_PREFIX + spec.name:
        raise ManifestError(
            f"plugin {ep.name!r}: field name: distribution {dist!r} should be named "
            f"{DISTRIBUTION_PREFIX + spec.name!r}"
        )
    _check_core_range(ep.name, spec.requires_core)
    return LoadedLibrary(spec=spec, plugin=ep.name, distribution=dist, source=source)


def _call_factory(target: Any) -> Any:
    """A callable entry point returns the manifest (a spec or a path is the manifest itself)."""
    if callable(target) and not isinstance(target, EnvLibrarySpec | Path):
        return target()
    return target


def _check_core_range(plugin: str, requirement: str) -> None:
    if not requirement:
        return
    try:
        spec = SpecifierSet(requirement)
    except InvalidSpecifier as exc:
        raise ManifestError(f"plugin {plugin!r}: field requires_core: {exc}") from None
    core = version("ldm-envs")
    if not spec.contains(core, prereleases=True):
        raise PluginError(f"plugin {plugin!r} requires ldm-envs {requirement}, installed {core}")


@lru_cache(maxsize=1)
def _cached_registry() -> LibraryRegistry:
    return LibraryRegistry.from_entry_points()


def registry(refresh: bool = False) -> LibraryRegistry:
    """The process-wide registry of installed plugins (discovered once, on first use)."""
    if refresh:
        _cached_registry.cache_clear()
    return _cached_registry()


def get_library(name: str) -> EnvLibrarySpec:
    """Shortcut for `registry().get(name)`."""
    return registry().get(name)


LibraryLike = str | EnvLibrarySpec
SpecResolver = Callable[[LibraryLike], EnvLibrarySpec]


def resolve_library(library: LibraryLike) -> EnvLibrarySpec:
    """Accept a library name or an already-loaded spec."""
    return library if isinstance(library, EnvLibrarySpec) else get_library(library)
