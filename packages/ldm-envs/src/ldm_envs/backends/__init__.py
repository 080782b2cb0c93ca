"""Isolation backends, one module each; all speak the worker protocol of `ldm_envs.worker`."""

from __future__ import annotations

from typing import Any

from ldm_envs.backends.base import Backend
from ldm_envs.inputs import require_choice

DEFAULT_BACKEND = "venv"
BACKENDS = ("inprocess", "venv", "docker")


def check_backend(name: str, *, field: str = "backend") -> str:
    """Refuse an unknown backend name before anything is built, tracked or run.

    Raises:
        BadInputError: naming `field` and the known backends.
    """
    return require_choice(field, name, BACKENDS, what="backend")


def get_backend(name: str, **options: Any) -> Backend:
    """Instantiate a backend by name (imports docker's SDK only when asked for).

    Raises:
        BadInputError: for an unknown name, listing the known ones.
    """
    check_backend(name)
    if name == "inprocess":
        from ldm_envs.backends.inprocess import InProcessBackend

        return InProcessBackend(**options)
    if name == "venv":
        from ldm_envs.backends.venv import VenvBackend

        return VenvBackend(**options)
    if name == "docker":
        from ldm_envs.backends.docker import DockerBackend

        return DockerBackend(**options)
    raise AssertionError(f"backend {name!r} is listed in BACKENDS but not built here")


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "check_backend", "get_backend"]
