"""The host's half of shared-memory steps: a step without syscalls, codec or wake-ups.

Through the socket alone, a step of 8 CartPoles costs two process wake-ups and two messages
encoded and decoded on cold caches (~140 µs besides the envs' own ~100 µs inside SB3's PPO),
so SB3 trained at 0.66-0.84x its in-process speed. Here the host writes the actions into a
memfd the worker maps, publishes a sequence number, and spins on the worker's reply number,
which arrives while the worker is still hot from spinning through the policy's forward pass.
The socket stays: every other request, infos and episode ends (rare), errors, wake-ups of a
side that went to sleep, and detecting a worker that died.

Only on x86 (see `SHARED_MACHINES`): the protocol relies on two stores becoming visible to the
other process in program order, which Python cannot fence on weaker memory models.
"""

from __future__ import annotations

import mmap
import os
import platform
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ldm_envs.protocol import Reply, SocketWorkerClient
from ldm_envs.worker import (
    HOST_ASLEEP,
    REPLY,
    REPLY_ON_SOCKET,
    REQUEST,
    SHARED_MACHINES,
    WORKER_ASLEEP,
    SharedRegion,
    SpinGate,
)


def shared_steps_supported(client: SocketWorkerClient) -> bool:
    """Both sides on a machine whose memory model keeps the protocol's stores in order."""
    return (
        hasattr(os, "memfd_create")
        and platform.machine() in SHARED_MACHINES
        and client.hello.get("machine") in SHARED_MACHINES
    )


class SharedSteps:
    """Steps one worker's envs through shared memory; `send` then `recv`, as with the socket.

    Args:
        client: the worker's socket client (handshake done, envs made, all sharing spaces).
        action_dtype: the wire dtype of one action.
        action_shape: the shape of one env's action.
        spin: seconds to spin on the reply number before sleeping on the socket
            (`LDM_HOST_SPIN_US`, default 500).
    """

    def __init__(
        self,
        client: SocketWorkerClient,
        action_dtype: np.dtype,
        action_shape: Sequence[int],
        spin: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.client = client
        self.spin = client.channel.spin if spin is None else spin
        reply, _ = client.request(
            {
                "cmd": "shared",
                "action_dtype": np.dtype(action_dtype).str,
                "action_shape": list(action_shape),
            },
            timeout=timeout,
        )
        layout: dict[str, Any] = reply["layout"]
        fd = os.memfd_create("ldm-steps", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, layout["size"])
            buf = mmap.mmap(fd, layout["size"])
            client.sock.sendmsg(
                [b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, np.array([fd], np.int32).tobytes())]
            )
        finally:
            os.close(fd)
        self.region = SharedRegion(buf, layout)
        self.gate = SpinGate()
        client.recv(timeout)  # the worker mapped it
        self._pending: dict[str, Any] | None = None
        self._extra: list[np.ndarray] = []

    def send(self, actions: np.ndarray) -> None:
        """Publish a step's actions (already checked and in the wire dtype)."""
        region = self.region
        region.actions[...] = actions
        region.seq += 1
        control = region.control
        control[REQUEST] = region.seq
        region.fence()
        if control[WORKER_ASLEEP]:
            self.client.send({"cmd": "wake"})

    def recv(self, timeout: float) -> Reply:
        """Wait for the step's reply; the same `(header, arrays)` a socket step returns.

        Raises:
            WorkerCrashedError: the worker died (its socket closed).
            WorkerTimeoutError: no reply within `timeout` seconds.
            EnvRaisedError: an env raised; the cause holds the remote traceback.
        """
        region = self.region
        control = region.control
        seq = region.seq
        socket_reply: Reply | None = None
        if control[REPLY] != seq:
            socket_reply = self._wait(seq, timeout)
        if control[REPLY_ON_SOCKET]:
            reply, extra = socket_reply or self.client.recv(timeout)
        else:
            reply, extra = {}, []
        reply["stacked"] = True
        return reply, [region.obs.copy(), region.status.copy(), *extra]

    def _wait(self, seq: int, timeout: float) -> Reply | None:
        """Spin, then sleep on the socket, until the reply number is `seq`.

        A message read meanwhile is a wake-up (dropped) or the step's own infos (returned).
        """
        control = self.region.control
        clock = time.perf_counter
        now = clock()
        stop = now + (self.spin if self.gate.allows(now) else 0.0)
        while clock() < stop:
            for _ in range(256):
                if control[REPLY] == seq:
                    return None
        deadline = clock() + timeout
        sock = self.client.sock
        channel = self.client.channel
        got: Reply | None = None
        while control[REPLY] != seq:
            remaining = deadline - clock()
            if remaining <= 0:
                raise self.client.timed_out(timeout)
            control[HOST_ASLEEP] = 1
            self.region.fence()
            if control[REPLY] == seq:
                control[HOST_ASLEEP] = 0
                break
            ready = channel.buffered() or select.select([sock], [], [], min(0.01, remaining))[0]
            control[HOST_ASLEEP] = 0
            if ready and got is None:
                # raises WorkerCrashedError on a closed socket
                message = self.client.recv_message(remaining, limit=timeout)
                if not message[0].get("wake"):
                    got = self.client.checked(message)  # EnvRaisedError on an error reply
        return got

    def close(self) -> None:
        self.region.close()
