"""EnvPool: many envs of one library across one or more workers, stepped in one round trip each.

The pool is the layer both vector-env faces (`vector.py`) and the model's evaluation build on.
Envs may differ in spaces (observations then come back as a list); when they all share spaces
the observations are one stacked array. A worker that crashes, hangs or whose env raises is
restarted up to `max_restarts` times: its envs' episodes end as truncated with the cause in
their info (never silently), and past the limit the error propagates with library, env and cause.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

# ActionChecker and action_dtype lived here before `actions.py`: importable from here still
from ldm_envs.actions import ActionChecker, SpaceModel
from ldm_envs.actions import action_dtype as action_dtype
from ldm_envs.backends import DEFAULT_BACKEND, Backend, get_backend
from ldm_envs.errors import ActionError, PoolClosedError, SpaceError, WorkerError
from ldm_envs.inputs import require_positive
from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.plugins import LibraryLike, resolve_library
from ldm_envs.protocol import SocketWorkerClient, WorkerClient
from ldm_envs.shared_steps import SharedSteps, shared_steps_supported
from ldm_envs.spaces import check_limits, space_from_dict

_STEP = {"cmd": "step"}

Obs = np.ndarray | list[np.ndarray]


@dataclass
class StepResult:
    """What one batched step returns; `infos[i]` holds `final_obs`/`final_info` when env i ended."""

    obs: Obs
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    infos: list[dict[str, Any]]


@dataclass
class _Worker:
    client: WorkerClient
    indices: list[int]
    stacked: bool = True
    restarts: int = 0
    last_obs: list[np.ndarray] = field(default_factory=list)
    send_error: WorkerError | None = None
    shared: SharedSteps | None = None
    sent_shared: bool = False

    def send(self, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        """Send, keeping a failure for `recv` so a dead worker is restarted like any other.

        Steps go through shared memory when the worker has it; everything else by socket.
        """
        # only the plain step goes through shared memory (a step holding envs carries a header)
        self.sent_shared = self.shared is not None and header is _STEP
        try:
            if self.sent_shared:
                self.shared.send(arrays[0])  # type: ignore[union-attr]
            else:
                self.client.send(header, arrays)
        except WorkerError as exc:
            self.send_error = exc

    def recv(self, timeout: float) -> tuple[dict[str, Any], list[np.ndarray]]:
        if self.send_error is not None:
            exc, self.send_error = self.send_error, None
            raise exc
        if self.sent_shared:
            return self.shared.recv(timeout)  # type: ignore[union-attr]
        return self.client.recv(timeout)

    def close(self) -> None:
        self.client.close()
        if self.shared is not None:
            self.shared.close()
            self.shared = None


class EnvPool:
    """Envs of one library behind one batched API, spread over `num_workers` workers.

    `shared_memory` (default: on unless `LDM_SHARED_STEPS=0`) moves steps of envs that share
    their spaces to a memory region mapped by host and worker (`shared_steps.py`); other
    commands, and pools of mixed spaces, use the socket. `transport` says which was taken.

    `num_envs` and `num_workers` below 1 are refused (`BadInputError`), never rounded up to 1.
    After `close()`, stepping, resetting or querying raises `PoolClosedError` and starts
    nothing: a closed worker must not look like a crashed one, which would be restarted.
    """

    def __init__(
        self,
        library: LibraryLike,
        env_ids: Sequence[str] | str,
        *,
        num_envs: int | None = None,
        backend: str | Backend = DEFAULT_BACKEND,
        num_workers: int = 1,
        step_timeout: float = 30.0,
        max_restarts: int = 3,
        pin_workers: bool = False,
        shared_memory: bool | None = None,
        console: Console | None = None,
    ) -> None:
        self._closed = True  # until the workers start: `__del__` of a refused pool closes nothing
        require_positive("num_envs", num_envs)
        require_positive("num_workers", num_workers)
        self.spec: EnvLibrarySpec = resolve_library(library)
        if isinstance(env_ids, str):
            env_ids = [env_ids] * (num_envs or 1)
        self.env_ids = list(env_ids)
        if not self.env_ids:
            raise ValueError("an EnvPool needs at least one env")
        self.envs = [self.spec.env(e) for e in self.env_ids]  # unknown ids fail here, by name
        self.num_envs = len(self.env_ids)
        self.console = console or Console(stderr=True)
        self.backend = (
            backend if isinstance(backend, Backend) else get_backend(backend, console=self.console)
        )
        self.step_timeout = step_timeout
        self.max_restarts = max_restarts
        self.pin_workers = pin_workers
        if shared_memory is None:
            shared_memory = os.environ.get("LDM_SHARED_STEPS", "1") != "0"
        self.shared_memory = shared_memory
        self.failures: list[dict[str, Any]] = []
        self.observation_spaces: list[SpaceModel] = []
        self.action_spaces: list[SpaceModel] = []
        num_workers = max(1, min(num_workers, self.num_envs))
        chunks = np.array_split(np.arange(self.num_envs), num_workers)
        self.workers: list[_Worker] = []
        self._closed = False
        try:
            self.backend.prepare(self.spec)
            for chunk in chunks:
                self.workers.append(self._start_worker([int(i) for i in chunk]))
        except BaseException:
            self.close()
            raise
        self.homogeneous = all(
            o == self.observation_spaces[0] and a == self.action_spaces[0]
            for o, a in zip(self.observation_spaces, self.action_spaces, strict=True)
        )
        self._checkers = self._make_checkers()
        self._pending: np.ndarray | list[np.ndarray] | None = None
        try:
            for w in self.workers:
                self._share(w)
        except BaseException:
            self.close()
            raise
        self._shared_alone: _Worker | None = None
        if len(self.workers) == 1 and self.workers[0].shared is not None:
            self._shared_alone = self.workers[0]

    # -- workers -------------------------------------------------------------------------------

    def _make_request(self, indices: list[int]) -> dict[str, Any]:
        env_block = self.spec.environment
        return {
            "cmd": "make",
            "api": env_block.api.value,
            "imports": self.spec.imports,
            "env_vars": env_block.env_vars,
            "envs": [self.envs[i].worker_request() for i in indices],
        }

    def _start_worker(self, indices: list[int]) -> _Worker:
        client = self.backend.spawn(self.spec)
        client.env_ids = [self.env_ids[i] for i in indices]
        try:
            reply, _ = client.request(
                self._make_request(indices), timeout=max(self.step_timeout, 120)
            )
        except BaseException:
            client.close()
            raise
        first_start = len(self.observation_spaces) < self.num_envs
        for i, spaces in zip(indices, reply["spaces"], strict=True):
            obs_space = space_from_dict(spaces["observation"])
            act_space = space_from_dict(spaces["action"])
            where = f"library {self.spec.name!r}, env {self.env_ids[i]!r}"
            check_limits(obs_space, act_space, where=where)
            declared = self.envs[i]
            if declared.probed and (declared.observation_space, declared.action_space) != (
                obs_space,
                act_space,
            ):
                raise SpaceError(
                    f"{where}: the library reports observation {obs_space.describe()} / action "
                    f"{act_space.describe()} but the manifest declares "
                    f"{declared.observation_space.describe()} / "  # type: ignore[union-attr]
                    f"{declared.action_space.describe()}; run `ldm-envs probe {self.spec.name}`"  # type: ignore[union-attr]
                )
            if first_start:
                self.observation_spaces.append(obs_space)
                self.action_spaces.append(act_space)
        if self.pin_workers:
            self._pin(client, len(self.workers))
        return _Worker(client=client, indices=indices, stacked=bool(reply["stacked"]))

    @staticmethod
    def _pin(client: WorkerClient, k: int) -> None:
        """Pin worker k to one CPU, counting down from the last (the host keeps CPU 0).

        A pinned worker keeps its caches warm and stops migrating between the spins of its
        round trips; this steadies throughput on small machines. Only local worker processes
        (venv) can be pinned this way; a container reports a pid of its own namespace.
        """
        pid = client.hello.get("pid")
        cpus = sorted(os.sched_getaffinity(0))
        if not isinstance(client, SocketWorkerClient) or not hasattr(client.process, "proc"):
            return
        if pid != client.process.proc.pid or len(cpus) < 2:
            return
        os.sched_setaffinity(pid, {cpus[-1 - k % (len(cpus) - 1)]})

    def _share(self, w: _Worker) -> None:
        """Move the worker's steps to shared memory where both sides support it.

        Needs one action and observation space for the whole pool (the region has fixed rows)
        and a local socket worker (venv or docker) on x86; otherwise steps stay on the socket.
        """
        client = w.client
        if not (
            self.shared_memory
            and self.homogeneous
            and w.stacked
            and isinstance(client, SocketWorkerClient)
            and shared_steps_supported(client)
        ):
            return
        checker = self._checkers[0]
        w.shared = SharedSteps(client, checker.dtype, checker.shape, timeout=self.step_timeout)

    @property
    def transport(self) -> str:
        """How steps travel: `shared-memory`, `socket`, or `mixed` after a partial fallback."""
        kinds = {"shared-memory" if w.shared is not None else "socket" for w in self.workers}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def _make_checkers(self) -> list[ActionChecker]:
        if self.homogeneous:
            return [ActionChecker(self.action_spaces[0])]
        return [ActionChecker(s) for s in self.action_spaces]

    # -- reset ---------------------------------------------------------------------------------

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, int | np.integer):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        return seeds

    @property
    def restarts(self) -> int:
        """Worker restarts so far, all workers together (each cut its envs' episodes short).

        A run that trains through the pool records it, so its episode statistics can be
        trusted or questioned (`failures` holds each restart's envs and cause).
        """
        return sum(w.restarts for w in self.workers)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (the workers are gone for good)."""
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise PoolClosedError(
                f"library {self.spec.name!r}: cannot {what} a closed pool of {self.num_envs} "
                f"env(s) ({', '.join(sorted(set(self.env_ids)))}); make a new one"
            )

    def reset(
        self, seed: int | Sequence[int | None] | None = None
    ) -> tuple[Obs, list[dict[str, Any]]]:
        """Reset every env; an int seed gives env i the seed `seed + i`.

        Raises:
            PoolClosedError: after `close()`.
        """
        self._check_open("reset")
        seeds = self._seeds(seed)
        for w in self.workers:
            w.client.send({"cmd": "reset", "seeds": [seeds[i] for i in w.indices]})
        obs: list[np.ndarray] = [None] * self.num_envs  # type: ignore[list-item]
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for w in self.workers:
            reply, arrays = w.client.recv(max(self.step_timeout, 60))
            self._scatter(w, reply, arrays[: self._n_obs_buffers(w, reply)], obs)
            for k, info in reply.get("infos", {}).items():
                infos[w.indices[int(k)]] = info
        return self._gather(obs), infos

    # -- step ----------------------------------------------------------------------------------

    def step_send(self, actions: Any, hold: Sequence[int] | np.ndarray = ()) -> None:
        """Validate and send actions to every worker without waiting (pairs with `step_recv`).

        Args:
            actions: one action per env (every one is checked, held envs' too).
            hold: envs not to step this time: each answers the first observation of its
                current episode again, with reward 0 and no episode end, and its action is
                ignored. `LDMVectorEnv` uses it for Gymnasium's next-step autoreset (the step
                after an episode end only resets). A worker holding envs gets its step by
                socket, not shared memory.

        Raises:
            PoolClosedError: after `close()`.
            ActionError: naming the env whose action is outside its space or not a number.
        """
        if self._closed:
            self._check_open("step")
        if self.homogeneous:
            arr = self._checkers[0].convert(actions, self.num_envs, self.env_ids)
            self._pending = arr
            if len(hold):
                for w, header in zip(self.workers, self._step_headers(hold), strict=True):
                    w.send(header, [arr[w.indices[0] : w.indices[-1] + 1]])
                return
            if len(self.workers) == 1:
                self.workers[0].send(_STEP, [arr])
                return
            for w in self.workers:
                w.send(_STEP, [arr[w.indices[0] : w.indices[-1] + 1]])
            return
        if len(actions) != self.num_envs:
            raise ActionError(f"{len(actions)} actions for {self.num_envs} envs")
        per_env = [
            self._checkers[i].convert(np.asarray(a)[None], 1, [self.env_ids[i]], i)[0]
            for i, a in enumerate(actions)
        ]
        self._pending = per_env
        for w, header in zip(self.workers, self._step_headers(hold), strict=True):
            # heterogeneous action spaces travel as float64: one row per env when their sizes
            # agree, else one flat vector the worker splits by `sizes`
            rows = [np.asarray(per_env[i], np.float64).ravel() for i in w.indices]
            sizes = [r.size for r in rows]
            if len(set(sizes)) == 1:
                w.send(header, [np.stack(rows)])
            else:
                w.send({**header, "sizes": sizes}, [np.concatenate(rows)])

    def _step_headers(self, hold: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """Each worker's step header: `_STEP`, or one naming the envs it holds (local indices)."""
        held = {int(i) for i in hold}
        if not held:
            return [_STEP] * len(self.workers)
        if not held <= set(range(self.num_envs)):
            raise ValueError(f"hold {sorted(held)}: env indices go from 0 to {self.num_envs - 1}")
        headers = []
        for w in self.workers:
            local = [j for j, i in enumerate(w.indices) if i in held]
            headers.append({"cmd": "step", "hold": local} if local else _STEP)
        return headers

    def step_recv(self) -> StepResult:
        """Collect the replies of the step sent by `step_send`."""
        if self._closed:
            self._check_open("step")
        if self._shared_alone is not None and self._shared_alone.sent_shared:
            return self._recv_shared_alone(self._shared_alone)
        n = self.num_envs
        obs: list[np.ndarray] = [None] * n  # type: ignore[list-item]
        rewards = np.zeros(n, np.float64)
        terminated = np.zeros(n, np.bool_)
        truncated = np.zeros(n, np.bool_)
        infos: list[dict[str, Any]] = [{} for _ in range(n)]
        single = len(self.workers) == 1
        stacked_obs: np.ndarray | None = None
        for w in self.workers:
            try:
                reply, arrays = w.recv(self.step_timeout)
            except WorkerError as exc:
                self._restart(w, exc, obs, truncated, infos)
                continue
            k = self._n_obs_buffers(w, reply)
            status = arrays[k]  # rows: reward, terminated, truncated
            if single:
                rewards, terminated, truncated = status[0], status[1] > 0, status[2] > 0
                # the worker stacks observations whenever its envs share an observation space,
                # but only a homogeneous pool (same action spaces too) returns them stacked
                stacked_obs = arrays[0] if k == 1 and self.homogeneous else None
                if stacked_obs is None:
                    self._scatter(w, reply, arrays[:k], obs)
            else:
                self._scatter(w, reply, arrays[:k], obs)
                sl = slice(w.indices[0], w.indices[-1] + 1)
                rewards[sl], terminated[sl], truncated[sl] = status[0], status[1], status[2]
            for key, info in reply.get("infos", {}).items():
                infos[w.indices[int(key)]] = info
            for j, local in enumerate(reply.get("done", ())):
                i = w.indices[local]
                info = dict(infos[i])
                info["final_obs"] = arrays[k + 1 + j]
                info["final_info"] = reply["final_infos"][str(local)]
                infos[i] = info
        self._pending = None
        if single and stacked_obs is not None:
            self.workers[0].last_obs = stacked_obs  # type: ignore[assignment]
            return StepResult(stacked_obs, rewards, terminated, truncated, infos)
        return StepResult(self._gather(obs), rewards, terminated, truncated, infos)

    def _recv_shared_alone(self, w: _Worker) -> StepResult:
        """`step_recv` for one worker stepping through shared memory: the few lines it needs.

        The general path below is several times longer in Python, and inside SB3's rollouts
        every line runs on caches its policy left cold (this path took PPO from 0.82 to ~0.9
        of its in-process speed).
        """
        try:
            reply, arrays = w.recv(self.step_timeout)
        except WorkerError as exc:
            n = self.num_envs
            lost: list[np.ndarray] = [None] * n  # type: ignore[list-item]
            truncated = np.zeros(n, np.bool_)
            infos: list[dict[str, Any]] = [{} for _ in range(n)]
            self._restart(w, exc, lost, truncated, infos)
            return StepResult(
                self._gather(lost), np.zeros(n), np.zeros(n, np.bool_), truncated, infos
            )
        obs, status = arrays[0], arrays[1]
        w.last_obs = obs  # type: ignore[assignment]
        infos = [{} for _ in range(self.num_envs)]
        if len(reply) > 1:  # beyond "stacked": infos, episode ends
            for key, info in reply.get("infos", {}).items():
                infos[int(key)] = info
            for j, i in enumerate(reply.get("done", ())):
                infos[i] = {
                    **infos[i],
                    "final_obs": arrays[2 + j],
                    "final_info": reply["final_infos"][str(i)],
                }
        self._pending = None
        return StepResult(obs, status[0], status[1] > 0, status[2] > 0, infos)

    def step(self, actions: Any, hold: Sequence[int] | np.ndarray = ()) -> StepResult:
        """One batched step of every env but the held ones (auto-reset in the same step)."""
        self.step_send(actions, hold)
        return self.step_recv()

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _n_obs_buffers(w: _Worker, reply: dict[str, Any]) -> int:
        return 1 if reply.get("stacked", w.stacked) else len(w.indices)

    def _scatter(
        self, w: _Worker, reply: dict[str, Any], arrays: list[np.ndarray], obs: list[np.ndarray]
    ) -> None:
        rows = list(arrays[0]) if reply.get("stacked", w.stacked) else arrays
        w.last_obs = rows
        for i, row in zip(w.indices, rows, strict=True):
            obs[i] = row

    def _gather(self, obs: list[np.ndarray]) -> Obs:
        return np.stack(obs) if self.homogeneous else obs

    def _restart(
        self,
        w: _Worker,
        exc: WorkerError,
        obs: list[np.ndarray],
        truncated: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        ids = [self.env_ids[i] for i in w.indices]
        self.failures.append({"library": self.spec.name, "envs": ids, "cause": exc.cause})
        if w.restarts >= self.max_restarts:
            raise exc
        w.restarts += 1
        self.console.print(
            f"[yellow]worker of {self.spec.name} ({', '.join(sorted(set(ids)))}) failed, "
            f"restarting ({w.restarts}/{self.max_restarts}):[/] {escape(exc.cause.splitlines()[0])}"
        )
        w.close()
        last = w.last_obs
        fresh = self._start_worker(w.indices)
        w.client, w.stacked = fresh.client, fresh.stacked
        self._share(w)
        reply, arrays = w.client.request(
            {"cmd": "reset", "seeds": [None] * len(w.indices)}, timeout=max(self.step_timeout, 60)
        )
        self._scatter(w, reply, arrays, obs)
        cause = exc.cause.splitlines()[0]
        for j, i in enumerate(w.indices):
            truncated[i] = True
            infos[i] = {
                "final_obs": last[j] if j < len(last) else obs[i],
                "final_info": {"worker_restarted": cause},
                "worker_restarted": cause,
            }

    def call(self, name: str, indices: Sequence[int] | None = None) -> list[Any]:
        """Read an attribute of the remote envs (JSON-able values only)."""
        self._check_open("query")
        indices = list(range(self.num_envs)) if indices is None else list(indices)
        out: list[Any] = []
        for w in self.workers:
            local = [w.indices.index(i) for i in indices if i in w.indices]
            if not local:
                continue
            reply, _ = w.client.request(
                {"cmd": "get_attr", "name": name, "indices": local}, timeout=self.step_timeout
            )
            out.extend(reply["values"])
        return out

    def close(self) -> None:
        """Close every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for w in self.workers:
            w.close()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
