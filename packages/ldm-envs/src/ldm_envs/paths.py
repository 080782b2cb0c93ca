"""Where ldm keeps what it builds and records (its data home)."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """`$LDM_HOME`, else `$XDG_DATA_HOME/ldm`, else `~/.local/share/ldm`."""
    if env := os.environ.get("LDM_HOME"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "ldm"


def venvs_dir() -> Path:
    """Per-library virtualenvs, one folder per requirements hash."""
    return data_home() / "venvs"


def docker_dir() -> Path:
    """Build contexts, base-image rootfs caches and container sockets."""
    return data_home() / "docker"


def checks_dir() -> Path:
    """Results of `ldm-envs check`, one JSON file per library and backend."""
    return data_home() / "checks"


def dataset_root() -> Path:
    """Where ldm-autorl writes reference runs, shards and the index, and ldm-model reads them."""
    return data_home() / "autorl"
