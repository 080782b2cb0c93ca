"""What the base image asks of the docker engine (build, import); the error every step raises."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm_envs.errors import LDMEnvsError

if TYPE_CHECKING:
    import docker

_DEFAULT_PATH = "/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LOG_TAIL_LINES = 60
# The legacy builder wraps a RUN step's stderr in colour codes (ESC[91m ... ESC[0m).
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BaseImageError(LDMEnvsError, RuntimeError):
    """Building the base image failed.

    Attributes:
        step: The step that failed (``debootstrap``, ``import``, ``build``, ...).
        log: The tail of that step's log (may be empty).
    """

    def __init__(self, step: str, message: str, log: str = "") -> None:
        self.step = step
        self.log = log
        tail = "\n".join(log.strip().splitlines()[-_LOG_TAIL_LINES:])
        text = f"base image: {step} failed: {message}"
        if tail:
            text += f"\n--- last lines of the {step} log ---\n{tail}"
        super().__init__(text)


def base_image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Whether an image with this tag exists in the engine (no registry lookup).

    Args:
        client: A connected Docker client.
        tag: Image reference, e.g. ``ldm-base:py3.11``.

    Returns:
        True when the engine has the image locally.
    """
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def build_image(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    *,
    step: str = "build",
    emit: Callable[[str], None] | None = None,
    network_mode: str | None = None,
    buildargs: dict[str, str] | None = None,
) -> str:
    """Run ``docker build`` through the SDK, streaming the log and keeping it for errors.

    Uses the low-level ``client.api.build(decode=True)`` stream instead of
    ``client.images.build`` so every line can be shown while the build runs.

    Args:
        client: A connected Docker client.
        context: Build context directory holding a ``Dockerfile``.
        tag: Tag for the result.
        step: Step name used in errors.
        emit: Receives each log line.
        network_mode: Network for ``RUN`` steps (``"none"``, ``"bridge"``, ``"host"``).
        buildargs: Build arguments.

    Returns:
        The image id.

    Raises:
        BaseImageError: The engine reported an error; carries the build log tail.
    """
    import docker.errors

    emit = emit or (lambda _line: None)
    lines: list[str] = []
    image_id = ""
    try:
        stream: Iterator[dict[str, Any]] = client.api.build(
            path=str(context),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            network_mode=network_mode,
            buildargs=buildargs,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = _ANSI.sub("", str(detail.get("message") or chunk["error"])).strip()
                lines.append(message)
                raise BaseImageError(step, f"docker build of {tag}: {message}", "\n".join(lines))
            text = _ANSI.sub("", str(chunk.get("stream") or chunk.get("status") or ""))
            for line in text.splitlines():
                if line.strip():
                    lines.append(line)
                    emit(line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = str(aux["ID"])
    except docker.errors.APIError as exc:
        raise BaseImageError(step, f"docker build of {tag}: {exc}", "\n".join(lines)) from exc
    if not image_id:
        image_id = client.images.get(tag).id or ""
    return image_id


def _import_rootfs(
    client: docker.DockerClient, tarball: Path, tag: str, emit: Callable[[str], None]
) -> None:
    """``docker import`` the rootfs tarball (a path that does not exist is taken for a URL)."""
    import docker.errors

    repository, _, version = tag.partition(":")
    started = time.monotonic()
    emit(f"importing {tarball} as {tag}")
    try:
        result = client.api.import_image(
            src=str(tarball),
            repository=repository,
            tag=version,
            changes=[
                f"ENV PATH={_DEFAULT_PATH}",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/bash"]',
            ],
        )
    except docker.errors.APIError as exc:
        raise BaseImageError("import", f"docker import of {tarball}: {exc}") from exc
    # The engine answers 200 with a JSON stream; errors come as {"error": ...} lines.
    for raw in str(result).splitlines():
        with contextlib.suppress(ValueError):
            chunk = json.loads(raw)
            if isinstance(chunk, dict) and "error" in chunk:
                raise BaseImageError("import", f"docker import of {tarball}", str(result))
    if not base_image_exists(client, tag):
        raise BaseImageError("import", f"docker import of {tarball} left no {tag}", str(result))
    emit(f"imported {tag} in {time.monotonic() - started:.1f}s")
