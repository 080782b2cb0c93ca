"""Discovery of env-library plugins through the `ldm.env_libraries` entry-point group.

A broken plugin is recorded with a message naming it and its faulty field, and never hides the
others: `LibraryRegistry.get` raises that message only when the broken library is asked for
(and `ldm-envs list` shows every broken one); discovery itself only logs at debug level, so a
broken plugin does not speak up in every command that never asked for it.

Importing a plugin is third-party code running inside every CLI. `load_entry_point` contains
it: an import that raises anything, `SystemExit` included (a stray `sys.exit()`), makes that
plugin broken instead of ending the process, and an import that hangs is abandoned after
`LDM_PLUGIN_IMPORT_TIMEOUT` seconds (default 60) with a message naming the plugin. Only
`KeyboardInterrupt` goes through: the user asked to stop. The loading and its checks
(distribution `ldm-envlib-<name>`, the manifest's `requires_core`) are `EntryPointRegistry`'s
(`ldm_envs.registry`), shared with ldm-autorl's `ldm.algorithms`; this module says what an
env-library plugin is.

Plugins that exist only to test ldm itself (`tests/plugins/ldm-envlib-toy`) are installed in
the workspace by its dev group, yet are no library a user trains on: they declare their entry
point in `ldm.env_libraries.test`, a group read only when `LDM_TEST_PLUGINS` is set (the
repository's conftest sets it), so `ldm-envs list`, `show` and the pipelines never offer them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from ldm_envs.errors import LDMError, ManifestError, PluginError, UnknownLibraryError
from ldm_envs.manifest import EnvLibrarySpec, parse_manifest, read_manifest
from ldm_envs.registry import (  # noqa: F401  (re-exported: their old home)
    DEFAULT_IMPORT_TIMEOUT,
    EntryPointRegistry,
    Installed,
    import_timeout,
    load_entry_point,
)

ENTRY_POINT_GROUP = "ldm.env_libraries"
#: The group of plugins that exist for ldm's own tests, read only under `TEST_PLUGINS_ENV`.
TEST_ENTRY_POINT_GROUP = "ldm.env_libraries.test"
TEST_PLUGINS_ENV = "LDM_TEST_PLUGINS"
DISTRIBUTION_PREFIX = "ldm-envlib-"


@dataclass(frozen=True)
class LoadedLibrary:
    """A validated manifest and where it came from."""

    spec: EnvLibrarySpec
    plugin: str
    distribution: str | None = None
    source: Path | None = None


@dataclass
class LibraryRegistry(
    EntryPointRegistry[LoadedLibrary],
    group=ENTRY_POINT_GROUP,
    kind="env-library",
    distribution_prefix=DISTRIBUTION_PREFIX,
    core_distribution="ldm-envs",
):
    """The known env libraries, plus the broken plugins and why they are broken."""

    libraries: dict[str, LoadedLibrary] = field(default_factory=dict)

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

    # -- EntryPointRegistry's hooks -----------------------------------------------------------

    @classmethod
    def _entry_points(cls) -> Iterable[EntryPoint]:
        eps = list(entry_points(group=ENTRY_POINT_GROUP))
        if test_plugins_enabled():
            eps += entry_points(group=TEST_ENTRY_POINT_GROUP)
        return eps

    @staticmethod
    def _finish(target: Any) -> Any:
        """A callable entry point returns the manifest (a spec or a path is the manifest)."""
        if callable(target) and not isinstance(target, EnvLibrarySpec | Path):
            return target()
        return target

    def _parse(self, ep: EntryPoint, target: Any) -> LoadedLibrary:
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
                f"plugin {ep.name!r}: field name: manifest says {spec.name!r} but the entry "
                f"point is named {ep.name!r}"
            )
        dist = ep.dist.name if ep.dist is not None else None
        return LoadedLibrary(spec=spec, plugin=ep.name, distribution=dist, source=source)

    def _accept(self, ep: EntryPoint, item: LoadedLibrary) -> None:
        self.libraries[ep.name] = item

    def _loaded(self) -> dict[str, LoadedLibrary]:
        return self.libraries

    def _core_requirement(self, ep: EntryPoint, item: LoadedLibrary) -> str:
        # the manifest's own field: a manifest is data a plugin may ship without a distribution
        return item.spec.requires_core

    def _misnamed(self, ep: EntryPoint, dist: str, expected: str) -> LDMError:
        return ManifestError(
            f"plugin {ep.name!r}: field name: distribution {dist!r} should be named {expected!r}"
        )

    def _bad_range(self, ep: EntryPoint, exc: Exception) -> LDMError:
        return ManifestError(f"plugin {ep.name!r}: field requires_core: {exc}")


def test_plugins_enabled() -> bool:
    """Whether `LDM_TEST_PLUGINS` asks for the test-only plugins (`1`, `true`, `yes`, `on`)."""
    return os.environ.get(TEST_PLUGINS_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


#: The process-wide registry of installed plugins: `registry()`, `registry(refresh=True)`.
registry = Installed(LibraryRegistry.from_entry_points)
_cached_registry = registry  # its old name


def get_library(name: str) -> EnvLibrarySpec:
    """Shortcut for `registry().get(name)`."""
    return registry().get(name)


LibraryLike = str | EnvLibrarySpec
SpecResolver = Callable[[LibraryLike], EnvLibrarySpec]


def resolve_library(library: LibraryLike) -> EnvLibrarySpec:
    """Accept a library name or an already-loaded spec."""
    return library if isinstance(library, EnvLibrarySpec) else get_library(library)
