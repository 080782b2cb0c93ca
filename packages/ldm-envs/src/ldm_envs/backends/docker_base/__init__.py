"""Build a local Python base image for the docker backend without any registry.

Docker Hub may be unreachable (only package mirrors are), so the base image is made from parts
that are already here:

1. a Debian root filesystem made once with ``debootstrap --variant=minbase`` and cached as a
   tarball under ``cache_dir`` (keyed by suite, architecture and package list), with the runtime
   libraries a CPython built from source needs, a few GUI-less rendering libraries, and a user
   ``ldm`` (uid/gid 1000, home ``/home/ldm``);
2. that tarball imported once as ``ldm-rootfs:<suite>-<key>`` (``docker import`` through the SDK);
3. a thin image built on top (``FROM ldm-rootfs:...``) that adds a copy of the requested host
   interpreter at ``/opt/python`` and the host's ``uv`` binary, then smoke-tests the interpreter.

Step 3 is a layer over the shared rootfs image, so ``ldm-base:py3.10`` and ``ldm-base:py3.11``
share the Debian layer on disk. Everything runs as root on the host (debootstrap needs it).

A user with a registry can skip all this by setting ``base_image`` in the manifest (for
instance ``python:3.10-slim``).

One module per step: `rootfs` (1 and 2), `python_layer` (3: the interpreter, found by
`ldm_envs.interpreters` as for the venv backend, and uv) and `engine` (docker build and import,
`BaseImageError`). `build_base_image` below runs them in order.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ldm_envs.backends.docker_base.engine import (
    BaseImageError,
    _import_rootfs,
    base_image_exists,
    build_image,
)
from ldm_envs.backends.docker_base.python_layer import (
    PythonInstall,
    _dotted,
    _find_uv_binary,
    _python_dockerfile,
    _stage_python,
    _uv_version,
    find_python,
)
from ldm_envs.backends.docker_base.rootfs import (
    _ROOTFS_REPO,
    GUI_PACKAGES,
    PYTHON_RUNTIME_PACKAGES,
    _dpkg_arch,
    _ensure_rootfs_tarball,
    _rootfs_key,
)

if TYPE_CHECKING:
    import docker


__all__ = [
    "GUI_PACKAGES",
    "PYTHON_RUNTIME_PACKAGES",
    "BaseImageError",
    "PythonInstall",
    "base_image_exists",
    "build_base_image",
    "build_image",
    "find_python",
]


def build_base_image(
    client: docker.DockerClient,
    python: str,
    *,
    tag: str | None = None,
    suite: str = "bookworm",
    mirror: str = "http://deb.debian.org/debian",
    extra_apt: Sequence[str] = (),
    cache_dir: Path,
    log: Callable[[str], None] | None = None,
) -> str:
    """Build (or rebuild) a base image holding a host CPython at ``/opt/python``.

    The Debian rootfs is made once per (suite, packages) and cached under ``cache_dir``; the
    rootfs image is imported once; the Python layer is rebuilt on each call but the Docker build
    cache makes an unchanged rebuild take seconds. Callers that only need the image to exist
    should check :func:`base_image_exists` first.

    The image runs as root by default (so ``RUN uv pip install`` works in derived images); run
    containers with ``user="1000:1000"`` (the ``ldm`` user). ``UV_PYTHON`` points at the copied
    interpreter and ``UV_PYTHON_DOWNLOADS=never``.

    Args:
        client: A connected Docker client.
        python: Version to copy, ``"3.11"`` or ``"3.11.7"``.
        tag: Image tag; defaults to ``ldm-base:py{major}.{minor}``.
        suite: Debian suite for debootstrap. It should match the system the interpreter was
            built on (library sonames differ between releases).
        mirror: Debian mirror URL.
        extra_apt: More Debian packages for the rootfs (part of the cache key).
        cache_dir: Where the rootfs tarball and lock files live.
        log: Receives progress lines (debootstrap, import and build output).

    Returns:
        The image tag.

    Raises:
        BaseImageError: A step failed; the message names the step and ends with its log tail.
    """
    emit = log or (lambda _line: None)
    install = find_python(python)
    image_tag = tag or f"ldm-base:py{install.short_version}"
    emit(
        f"base image {image_tag}: Python {_dotted(install.version)} from {install.prefix} "
        f"(found by {install.found_by})"
    )
    uv_bin = _find_uv_binary()

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arch = _dpkg_arch()
    required = sorted({*PYTHON_RUNTIME_PACKAGES, *extra_apt})
    key = _rootfs_key(suite, arch, required, GUI_PACKAGES)
    rootfs_tag = f"{_ROOTFS_REPO}:{suite}-{key}"

    if not base_image_exists(client, rootfs_tag):
        tarball = _ensure_rootfs_tarball(
            cache_dir,
            suite=suite,
            mirror=mirror,
            arch=arch,
            key=key,
            required=required,
            optional=GUI_PACKAGES,
            emit=emit,
        )
        _import_rootfs(client, tarball, rootfs_tag, emit)

    with tempfile.TemporaryDirectory(prefix=".ldm-base-ctx-", dir=cache_dir) as ctx:
        context = Path(ctx)
        _stage_python(install, context / "python")
        shutil.copy2(uv_bin, context / "uv")
        (context / "Dockerfile").write_text(
            _python_dockerfile(rootfs_tag, install, uv_version=_uv_version(uv_bin))
        )
        started = time.monotonic()
        emit(f"building {image_tag} from {rootfs_tag}")
        build_image(client, context, image_tag, step="build", emit=emit, network_mode="none")
        emit(f"built {image_tag} in {time.monotonic() - started:.1f}s")
    return image_tag
