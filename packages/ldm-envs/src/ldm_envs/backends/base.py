"""What every isolation backend provides, and the socket handshake venv and docker share."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from rich.console import Console

from ldm_envs.errors import WorkerCrashedError, WorkerTimeoutError
from ldm_envs.manifest import LOCAL_PACKAGE_IGNORES, EnvLibrarySpec
from ldm_envs.protocol import SocketWorkerClient, WorkerClient, WorkerProcess, check_hello

SOCKET_NAME = "worker.sock"


def copy_local_packages(spec: EnvLibrarySpec, dest: Path) -> list[Path]:
    """Copy the plugin's local packages under `dest`, one folder each, build leftovers aside.

    Both backends install from such a copy (in the venv folder or the image's build context),
    never from the plugin's source tree, so an installed environment never points back into it.
    """
    copies = []
    for index, source in enumerate(spec.local_package_dirs()):
        target = dest / f"{index}-{source.name}"
        shutil.copytree(
            source,
            target,
            ignore=shutil.ignore_patterns(*LOCAL_PACKAGE_IGNORES),
            dirs_exist_ok=True,
        )
        copies.append(target)
    return copies


class Backend(ABC):
    """An isolation backend: builds a library's environment once, then starts workers in it."""

    name: ClassVar[str]

    def __init__(self, console: Console | None = None, start_timeout: float = 120.0) -> None:
        self.console = console or Console(stderr=True)
        self.start_timeout = start_timeout

    @abstractmethod
    def is_ready(self, spec: EnvLibrarySpec) -> bool:
        """Whether the environment for this manifest is already built (no work needed)."""

    @abstractmethod
    def prepare(self, spec: EnvLibrarySpec, *, rebuild: bool = False) -> str:
        """Build (or reuse) the library's environment; returns its reference (path or tag).

        Raises:
            BuildError: naming the failing step, with its log.
        """

    @abstractmethod
    def spawn(self, spec: EnvLibrarySpec) -> WorkerClient:
        """Start one worker for the library and complete the handshake."""

    def describe(self, spec: EnvLibrarySpec) -> str:
        """Where this backend keeps the library's environment (for `ldm-envs show`)."""
        return ""


def spawn_socket_worker(
    library: str,
    start: Callable[[Path], WorkerProcess],
    timeout: float,
) -> SocketWorkerClient:
    """Listen on a fresh Unix socket, start the worker, and wait for it to connect.

    The host listens and the worker connects, so the same code serves a subprocess and a
    container that sees the socket's folder through a bind mount. The folder is short-named
    under the temp dir because Unix socket paths are limited to ~107 bytes.
    """
    sock_dir = Path(tempfile.mkdtemp(prefix="ldm-"))
    sock_dir.chmod(0o777)
    path = sock_dir / SOCKET_NAME
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    process: WorkerProcess | None = None
    try:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen(1)
        server.settimeout(0.2)
        process = start(sock_dir)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn, _ = server.accept()
                break
            except TimeoutError:
                cause = process.poll()
                if cause is not None:
                    tail = process.log_tail()
                    raise WorkerCrashedError(
                        library,
                        ["(startup)"],
                        f"{process.description} exited before connecting: "
                        f"{cause}" + (f"\n--- worker log (tail) ---\n{tail}" if tail else ""),
                    ) from None
                if time.monotonic() > deadline:
                    process.kill()
                    raise WorkerTimeoutError(
                        library,
                        ["(startup)"],
                        f"{process.description} did not connect within {timeout:g} s",
                    ) from None
        conn.setblocking(True)
        client = SocketWorkerClient(conn, process, library)
        check_hello(client, timeout=timeout)
        return client
    except BaseException:
        if process is not None:
            process.kill()
        raise
    finally:
        server.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
