"""Lazy package attributes (PEP 562), shared by the four ldm packages' `__init__.py`.

`import ldm_envs` (or `ldm_model`, ...) must stay cheap: a CLI's `--help`, a plugin's import
or a worker should not pay for torch, MLflow or SB3 because the package lists them in its
public API. So each `__init__.py` maps its public names to the modules that define them, and the
module is imported on first access (as SciPy's and scikit-image's `lazy_loader` do). The same
mechanism serves `__version__` (read from the installed distribution's metadata on first use)
and the old `Ldm*` spellings, kept for one release, that warn when used.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

#: What `__version__` says when the package runs from a source tree that is not installed.
UNKNOWN_VERSION = "0+unknown"


def distribution_version(distribution: str) -> str:
    """The installed version of `distribution`, or `UNKNOWN_VERSION` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


def lazy_module(
    package: str,
    exports: Mapping[str, str],
    *,
    distribution: str | None = None,
    deprecated: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`.

    Args:
        package: the module's `__name__`.
        exports: public name -> the module that defines it, imported on first access.
        distribution: the distribution whose version `__version__` reports.
        deprecated: old name -> new name; the old one resolves to the new one's value with a
            `DeprecationWarning` naming the new spelling.

    A resolved value is stored in the module, so later accesses skip `__getattr__`. A missing
    optional dependency surfaces as the defining module's own `ImportError`, unchanged.
    """
    aliases = dict(deprecated or {})

    def __getattr__(name: str) -> Any:
        module = sys.modules[package]
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name == "__version__" and distribution is not None:
            value = distribution_version(distribution)
        elif name in aliases:
            new = aliases[name]
            warnings.warn(
                f"{package}.{name} is deprecated and will be removed in the next release; "
                f"use {package}.{new}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(module, new)  # not stored: every use of the old name warns
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        names = set(vars(sys.modules[package])) | set(exports)
        if distribution is not None:
            names.add("__version__")
        return sorted(names)

    return __getattr__, __dir__


def deprecated_aliases(module: str, aliases: Mapping[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of a module whose only lazy names are old spellings that warn."""
    return lazy_module(module, {}, deprecated=aliases)[0]
