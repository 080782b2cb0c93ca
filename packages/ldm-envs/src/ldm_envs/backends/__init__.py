"""Isolation backends, one module each; all speak the worker protocol of `ldm_envs.worker`."""

from __future__ import annotations

from typing import Any

from ldm_envs.backends.base import Backend
from ldm_envs.errors import LdmEnvsError

DEFAULT_BACKEND = "venv"
BACKENDS = ("inprocess", "venv", "docker")


def get_backend(name: str, **options: Any) -> Backend:
    """Instantiate a backend by name (imports docker's SDK only when asked for).

    Raises:
        LdmEnvsError: for an unknown name, listing the known ones.
    """
    if name == "inprocess":
        from ldm_envs.backends.inprocess import InProcessBackend

        return InProcessBackend(**options)
    if name == "venv":
        from ldm_envs.backends.venv import VenvBackend

        return VenvBackend(**options)
    if name == "docker":
        from ldm_envs.backends.docker import DockerBackend

        return DockerBackend(**options)
    raise LdmEnvsError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "get_backend"]
