"""The host's side of the worker protocol: requests, replies, and failures turned into errors.

The byte format itself is defined in `worker.py` (the worker must stay a single stdlib + NumPy
file); this module adds what only the host needs: timeouts, liveness checks and error messages
that name the library, the env and the cause.
"""

from __future__ import annotations

import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from ldm_envs.errors import EnvRaisedError, WorkerCrashedError, WorkerTimeoutError
from ldm_envs.worker import PROTOCOL_VERSION, Channel, EnvGroup, error_reply

Reply = tuple[dict[str, Any], list[np.ndarray]]


class WorkerProcess(ABC):
    """Something that runs a worker (a subprocess, a container) and can tell if it died."""

    description: str = "worker"

    @abstractmethod
    def poll(self) -> str | None:
        """None while alive; otherwise why it stopped (exit code, signal, OOM)."""

    @abstractmethod
    def kill(self) -> None:
        """Stop it now, without waiting for the envs to close."""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the worker wrote to its stderr/stdout, for error messages."""
        return ""


class WorkerClient(ABC):
    """A connection to one worker; `send` then `recv` lets many workers step in parallel."""

    library: str
    env_ids: list[str]
    hello: dict[str, Any] = {}

    @abstractmethod
    def send(self, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
        """Send a request without waiting for its reply."""

    @abstractmethod
    def recv(self, timeout: float) -> Reply:
        """Wait for the reply to the last request.

        Raises:
            WorkerCrashedError: the worker died or closed the connection.
            WorkerTimeoutError: no reply within `timeout` seconds.
            EnvRaisedError: an env raised; the cause holds the remote traceback.
        """

    def request(
        self, header: dict[str, Any], arrays: Sequence[np.ndarray] = (), timeout: float = 60.0
    ) -> Reply:
        """Send a request and wait for its reply."""
        self.send(header, arrays)
        return self.recv(timeout)

    @abstractmethod
    def close(self) -> None:
        """Ask the worker to close its envs and stop; kill it if it does not."""

    def _raise_remote(self, reply: dict[str, Any]) -> None:
        index = reply.get("env_index")
        envs = (
            [self.env_ids[index]]
            if index is not None and index < len(self.env_ids)
            else (self.env_ids or ["(no env yet)"])
        )
        tb = reply.get("traceback", "")
        raise EnvRaisedError(self.library, envs, f"{reply.get('error')}\n{tb}".rstrip())


class SocketWorkerClient(WorkerClient):
    """A worker reached over a Unix socket (the venv and docker backends)."""

    def __init__(
        self, sock: socket.socket, process: WorkerProcess, library: str, spin: float | None = None
    ) -> None:
        if spin is None:
            spin = float(os.environ.get("LDM_HOST_SPIN_US", "500")) * 1e-6
        self.sock = sock
        self.channel = Channel(sock, spin)
        self.process = process
        self.library = library
        self.env_ids: list[str] = []
        self._closed = False
        self.unresponsive = False  # a request timed out: `close` kills without asking

    def timed_out(self, timeout: float) -> WorkerTimeoutError:
        """The error for a reply that did not come; marks the worker as not worth asking."""
        self.unresponsive = True
        return WorkerTimeoutError(
            self.library,
            self.env_ids or ["(no env yet)"],
            f"{self.process.description} did not answer within {timeout:g} s (hung env?)",
        )

    def _dead(self, what: str) -> WorkerCrashedError:
        # the socket closes a moment before the process is reaped: wait briefly for the cause
        deadline = time.monotonic() + 2.0
        while (cause := self.process.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        cause = cause or "connection closed while the process still runs"
        tail = self.process.log_tail()
        detail = f"{self.process.description} {what}: {cause}"
        if tail:
            detail += f"\n--- worker log (tail) ---\n{tail}"
        return WorkerCrashedError(self.library, self.env_ids or ["(no env yet)"], detail)

    def send(self, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
        try:
            self.channel.send(header, arrays)
        except OSError as exc:
            raise self._dead(f"could not be sent {header.get('cmd')!r} ({exc})") from None

    def recv(self, timeout: float) -> Reply:
        deadline = time.monotonic() + timeout
        remaining = timeout
        while True:
            reply = self.recv_message(remaining, limit=timeout)
            if not reply[0].get("wake"):  # a late wake-up of shared-memory steps
                return self.checked(reply)
            remaining = max(0.0, deadline - time.monotonic())

    def recv_message(self, timeout: float, limit: float | None = None) -> Reply:
        """The next message as it came, wake-ups included; socket failures become errors.

        `limit` is the whole wait the caller allowed, which the timeout error reports.
        """
        try:
            return self.channel.recv(timeout)
        except TimeoutError:
            raise self.timed_out(timeout if limit is None else limit) from None
        except (ConnectionError, OSError) as exc:
            raise self._dead(f"died ({exc})") from None

    def checked(self, message: Reply) -> Reply:
        """The reply, or the remote error raised as `EnvRaisedError`."""
        if not message[0].pop("ok", False):
            self._raise_remote(message[0])
        return message

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.process.poll() is None and not self.unresponsive:
                self.request({"cmd": "close"}, timeout=5.0)
        except Exception:
            pass
        finally:
            self.sock.close()
            self.process.kill()


class InProcessWorkerClient(WorkerClient):
    """The same requests answered by an `EnvGroup` in this process (no serialization)."""

    def __init__(self, library: str) -> None:
        self.group = EnvGroup()
        self.library = library
        self.env_ids: list[str] = []
        self._pending: tuple[dict[str, Any], Sequence[np.ndarray]] | None = None

    def send(self, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
        self._pending = (header, arrays)

    def recv(self, timeout: float) -> Reply:
        assert self._pending is not None, "recv without send"
        header, arrays = self._pending
        self._pending = None
        try:
            reply, out = self.group.handle(header, list(arrays))
        except Exception as exc:
            self._raise_remote(error_reply(exc))
        return reply, out

    def close(self) -> None:
        self.group.close_envs()


def check_hello(client: WorkerClient, timeout: float) -> dict[str, Any]:
    """Handshake: refuse a worker speaking another protocol version."""
    reply, _ = client.request({"cmd": "hello"}, timeout=timeout)
    if reply.get("protocol") != PROTOCOL_VERSION:
        raise WorkerCrashedError(
            client.library,
            ["(handshake)"],
            f"worker speaks protocol {reply.get('protocol')}, host {PROTOCOL_VERSION}",
        )
    client.hello = reply
    return reply
