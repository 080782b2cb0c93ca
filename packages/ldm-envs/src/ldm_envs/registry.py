"""One discovery path for every kind of ldm plugin (`ldm.env_libraries`, `ldm.algorithms`).

Both kinds get the same checks, in the same order, so a plugin author meets one set of rules:

1. the import runs contained, in a thread with a time limit (`load_entry_point`,
   `LDM_PLUGIN_IMPORT_TIMEOUT`): an exit, a hang or any exception makes the plugin broken;
2. the loaded target is turned into the kind's item (a manifest, a list of candidates) by the
   kind itself (`_parse`), which names the plugin and the faulty field when it cannot;
3. an installed distribution must be named `<distribution_prefix><entry point name>`;
4. the installed core (`core_distribution`) must satisfy the plugin's declared range.

A broken plugin is recorded in `broken` with one message naming it, never hides the others,
and is only logged at debug level: most commands never ask for it. Entry points built by hand
(tests, notebooks) have no distribution, so steps 3 and 4 only apply where one is installed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, version
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from ldm_envs.errors import LDMEnvsError, LDMError, PluginError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; ldm-envs runs on 3.10

T = TypeVar("T")
R = TypeVar("R", bound="EntryPointRegistry[Any]")
logger = logging.getLogger(__name__)
#: Seconds a plugin's import may take before it counts as hung (`LDM_PLUGIN_IMPORT_TIMEOUT`).
#: Plugins import nothing heavy by design; the margin is for a loaded machine.
DEFAULT_IMPORT_TIMEOUT = 60.0


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


@dataclass
class EntryPointRegistry(Generic[T]):
    """The plugins of one entry-point group that loaded, and the broken ones with why.

    A kind subclasses it, naming its group, kind, distribution prefix and core distribution
    as class keywords, and implements `_entry_points` (called through the kind's own module,
    so a test patching that module's `entry_points` is obeyed), `_parse`, `_accept` and
    `_loaded`. `_core_requirement` defaults to the distribution's own requirement on the
    core package, so a plugin installed against another core (`--no-deps`, an editable
    checkout) is refused with a message instead of failing somewhere inside a run.
    """

    broken: dict[str, str] = field(default_factory=dict)

    #: Entry-point group, e.g. "ldm.env_libraries".
    group: ClassVar[str]
    #: What the debug log calls one plugin: "env-library", "algorithm".
    kind: ClassVar[str]
    #: An installed plugin's distribution is `<prefix><entry point name>`.
    distribution_prefix: ClassVar[str]
    #: The package whose version plugins declare a range for.
    core_distribution: ClassVar[str]

    def __init_subclass__(
        cls,
        *,
        group: str,
        kind: str,
        distribution_prefix: str,
        core_distribution: str,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.group = group
        cls.kind = kind
        cls.distribution_prefix = distribution_prefix
        cls.core_distribution = core_distribution

    def names(self) -> list[str]:
        """Sorted names of what loaded."""
        return sorted(self._loaded())

    @classmethod
    def from_entry_points(cls, eps: Iterable[EntryPoint] | None = None) -> Self:
        """Load every plugin of the group (or `eps`), isolating failures per plugin."""
        registry = cls()
        for ep in eps if eps is not None else cls._entry_points():
            try:
                item = registry._load(ep)
            except LDMError as exc:
                registry._break(ep, str(exc))
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
                registry._break(ep, f"plugin {ep.name!r}: loading {ep.value!r} failed: {failure}")
            else:
                registry._accept(ep, item)
        return registry

    # -- the kind's hooks ---------------------------------------------------------------------

    @classmethod
    def _entry_points(cls) -> Iterable[EntryPoint]:
        raise NotImplementedError

    @staticmethod
    def _finish(target: Any) -> Any:
        """Applied to the loaded object inside the contained import (calling a factory)."""
        return target

    def _parse(self, ep: EntryPoint, target: Any) -> T:
        raise NotImplementedError

    def _accept(self, ep: EntryPoint, item: T) -> None:
        raise NotImplementedError

    def _loaded(self) -> Mapping[str, Any]:
        """What loaded, by name (`names` lists its keys)."""
        raise NotImplementedError

    def _core_requirement(self, ep: EntryPoint, item: T) -> str:
        """The plugin's range on the core: by default its distribution's `Requires-Dist`."""
        if ep.dist is None:
            return ""
        core = canonicalize_name(self.core_distribution)
        for line in ep.dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if canonicalize_name(req.name) == core and not req.marker:
                return str(req.specifier)
        return ""

    def _misnamed(self, ep: EntryPoint, dist: str, expected: str) -> LDMError:
        return PluginError(
            f"plugin {ep.name!r}: distribution {dist!r} should be named {expected!r}"
        )

    def _bad_range(self, ep: EntryPoint, exc: Exception) -> LDMError:
        return PluginError(f"plugin {ep.name!r}: range on {self.core_distribution}: {exc}")

    # -- the shared checks --------------------------------------------------------------------

    def _load(self, ep: EntryPoint) -> T:
        # imported and called contained: a plugin's sys.exit() or hang is reported, never fatal
        target = load_entry_point(ep, finish=self._finish)
        item = self._parse(ep, target)
        dist = ep.dist.name if ep.dist is not None else None
        expected = self.distribution_prefix + ep.name
        if dist is not None and dist != expected:
            raise self._misnamed(ep, dist, expected)
        self._check_core_range(ep, self._core_requirement(ep, item))
        return item

    def _check_core_range(self, ep: EntryPoint, requirement: str) -> None:
        if not requirement:
            return
        try:
            spec = SpecifierSet(requirement)
        except InvalidSpecifier as exc:
            raise self._bad_range(ep, exc) from None
        core = version(self.core_distribution)
        if not spec.contains(core, prereleases=True):
            raise PluginError(
                f"plugin {ep.name!r} requires {self.core_distribution} {requirement}, "
                f"installed {core}"
            )

    def _break(self, ep: EntryPoint, message: str) -> None:
        self.broken[ep.name] = message
        # debug only: every command builds the registry, most never ask for this plugin
        logger.debug("skipping %s plugin %r: %s", self.kind, ep.name, message)


class Installed(Generic[R]):
    """The process-wide registry of one plugin kind: discovered once, on first use.

    `installed()` returns the same registry until `installed(refresh=True)` (or
    `cache_clear()`) discovers the plugins again: installing one mid-process, or a test.
    """

    def __init__(self, discover: Callable[[], R]) -> None:
        self._discover = lru_cache(maxsize=1)(discover)

    def __call__(self, refresh: bool = False) -> R:
        if refresh:
            self.cache_clear()
        return self._discover()

    def cache_clear(self) -> None:
        """Forget the registry; the next call discovers the plugins again."""
        self._discover.cache_clear()
