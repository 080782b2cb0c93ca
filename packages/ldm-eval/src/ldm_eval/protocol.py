"""The paper's evaluation protocol (section 4.4): per env, fresh rollouts of N episodes.

Every (policy, env, rollout) is one *slot*: an env instance in an `EnvPool` of its library, with
its own seed and its own policy context. All slots of all libraries step together: one batched
policy call per step, and one round trip per worker, every worker stepping in parallel
(`step_send` to all pools, then `step_recv` from all). Each pool has one worker (a library's
slots are split over `num_workers` pools), so a worker can be closed on its own once its
rollouts are over, finished or failed. The rollouts of one env run side
by side as separate slots rather than one after the other: each starts from an empty context
(one `reset()` of its policy before its first step) and keeps its context across its own
episodes, which is the paper's protocol, in half the wall time.

A slot ends when it has `episodes` complete episodes. Failures are never scores:

* a worker that dies (or hangs, or whose env raises) is restarted by the pool, which truncates
  the episodes of its envs with `worker_restarted`; the rollouts of those envs are abandoned
  (`failed`, with the cause) and run again from scratch, same seed, fresh worker, fresh context,
  up to `retries` times; a pool past its own restart limit fails all its unfinished slots;
* an episode longer than `max_episode_steps` (an env without a time limit) ends its slot as
  `timeout`, not retried (it would do the same again).

Results come back as one `RolloutResult` per attempt, and through `on_result` as soon as each
is final, so a caller can persist a partial evaluation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rich.console import Console
from rich.markup import escape

from ldm_envs.backends import BACKENDS, DEFAULT_BACKEND, Backend
from ldm_envs.errors import LDMEnvsError, WorkerError
from ldm_envs.plugins import get_library
from ldm_envs.pool import EnvPool, SpaceModel, StepResult
from ldm_eval.policies import Policy, PolicyFactory, SlotInfo

__all__ = [
    "EnvTarget",
    "EvalConfig",
    "RolloutKey",
    "RolloutResult",
    "RolloutStatus",
    "run_protocol",
]

RolloutStatus = Literal["ok", "failed", "timeout"]
#: (policy, library, env_id, rollout)
RolloutKey = tuple[str, str, str, int]


class EnvTarget(BaseModel):
    """One env to evaluate, by library and env id."""

    model_config = ConfigDict(frozen=True)

    library: str
    env_id: str

    def __str__(self) -> str:
        return f"{self.library}/{self.env_id}"


class EvalConfig(BaseModel):
    """The protocol's knobs; the defaults are the paper's (2 rollouts of 10 episodes).

    Attributes:
        episodes: complete episodes per rollout.
        rollouts: fresh rollouts per env (empty context at the start of each).
        seed: base seed: rollout r resets its env with `seed + r` unless `seeds` is given.
        seeds: one env seed per rollout, overriding `seed`.
        backend: isolation backend of the env pools.
        num_workers: workers per library pool (None: the cores shared among the libraries).
        step_timeout: seconds a worker may take for one step before it counts as hung.
        max_worker_restarts: restarts of one worker before its pool gives up.
        retries: times a rollout whose worker failed is run again before it is reported failed.
        max_episode_steps: guard against envs without a time limit: a longer episode ends its
            rollout as `timeout`.
        batch_size: most rollouts stepped together (None: all); bounds the model's memory (its
            KV cache grows with the batch), at the cost of running the batches one after another.
    """

    model_config = ConfigDict(extra="forbid")

    episodes: int = Field(default=10, gt=0, description="episodes per rollout")
    rollouts: int = Field(default=2, gt=0, description="fresh rollouts per env")
    seed: int = Field(default=0, description="env seed of rollout 0 (rollout r: seed + r)")
    seeds: list[int] | None = None
    backend: str = Field(
        default=DEFAULT_BACKEND, description=f"isolation backend: {', '.join(BACKENDS)}"
    )
    num_workers: int | None = Field(
        default=None,
        gt=0,
        description="env worker processes per library (default: cores / libraries)",
    )
    step_timeout: float = Field(default=60.0, gt=0)
    max_worker_restarts: int = Field(default=3, ge=0)
    retries: int = Field(default=1, ge=0, description="retries of a rollout whose worker died")
    max_episode_steps: int = Field(default=100_000, gt=0)
    batch_size: int | None = Field(
        default=None, gt=0, description="most rollouts stepped together (bounds model memory)"
    )

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        # a field validator, so the error names the field (`option backend: ...`)
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; known: {', '.join(BACKENDS)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.seeds is not None and len(self.seeds) != self.rollouts:
            raise ValueError(f"{len(self.seeds)} seeds for {self.rollouts} rollouts")
        return self

    def rollout_seeds(self) -> list[int]:
        """The env seed of each rollout."""
        return (
            list(self.seeds)
            if self.seeds is not None
            else [self.seed + r for r in range(self.rollouts)]
        )


class RolloutResult(BaseModel):
    """One attempt at one rollout: its episodes when `ok`, the cause otherwise."""

    policy: str
    library: str
    env_id: str
    rollout: int
    attempt: int
    seed: int
    status: RolloutStatus
    cause: str | None = None
    returns: list[float] = []
    lengths: list[int] = []
    terminated: list[bool] = []
    steps: int = 0
    wall_s: float = 0.0

    @property
    def key(self) -> RolloutKey:
        return (self.policy, self.library, self.env_id, self.rollout)


@dataclass
class _Slot:
    policy: str
    target: EnvTarget
    rollout: int
    seed: int
    attempt: int
    retry: int = 0  # retries spent on this rollout in this call
    state: Literal["running", "ok", "failed", "timeout"] = "running"
    emitted: bool = False
    cause: str | None = None
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    ep_return: float = 0.0
    ep_len: int = 0
    steps: int = 0

    def end(self, state: Literal["failed", "timeout"], cause: str) -> None:
        if self.state == "running":
            self.state, self.cause = state, cause

    def result(self, wall_s: float) -> RolloutResult:
        ok = self.state == "ok"
        return RolloutResult(
            policy=self.policy,
            library=self.target.library,
            env_id=self.target.env_id,
            rollout=self.rollout,
            attempt=self.attempt,
            seed=self.seed,
            status="failed" if self.state == "running" else self.state,
            cause=self.cause,
            returns=self.returns if ok else [],
            lengths=self.lengths if ok else [],
            terminated=self.terminated if ok else [],
            steps=self.steps,
            wall_s=wall_s,
        )


@dataclass
class _PoolRun:
    library: str
    pool: EnvPool
    slots: list[int]  # indices into the phase's live slots, in pool order
    alive: bool = True


class _RoutedPolicy:
    """One policy per policy name over the slots of a batch; `act` routes rows to them."""

    def __init__(
        self,
        slots: Sequence[_Slot],
        infos: Sequence[SlotInfo],
        factories: Mapping[str, PolicyFactory],
    ) -> None:
        self.n = len(slots)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(slots):
            groups.setdefault(s.policy, []).append(i)
        self.parts: list[tuple[np.ndarray, Policy]] = [
            (np.asarray(idx), factories[name]([infos[i] for i in idx]))
            for name, idx in groups.items()
        ]

    def reset(self) -> None:
        for _, policy in self.parts:
            policy.reset()

    def act(self, obs: list[np.ndarray], reward: np.ndarray, done: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = [None] * self.n  # type: ignore[list-item]
        for idx, policy in self.parts:
            actions = policy.act([obs[i] for i in idx], reward[idx], done[idx])
            for row, i in enumerate(idx):
                out[i] = np.asarray(actions[row])
        return out


def _action_size(library: str, env_id: str) -> int:
    """How many numbers one action of this env is on the wire (a Discrete action is one)."""
    try:
        space = get_library(library).env(env_id).action_space
    except LDMEnvsError:
        return 0  # unknown: the pool that opens it fails the slot with the reason
    return 0 if space is None else int(np.asarray(space.to_gymnasium().sample()).size)


def _default_workers(n_envs: int, n_libraries: int) -> int:
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return max(1, min(n_envs, cores // max(1, n_libraries)))


def run_protocol(
    envs: Sequence[EnvTarget],
    policies: Mapping[str, PolicyFactory],
    config: EvalConfig | None = None,
    *,
    skip: Container[RolloutKey] = (),
    previous_attempts: Mapping[RolloutKey, int] | None = None,
    on_result: Callable[[RolloutResult], None] | None = None,
    backend: Backend | None = None,
    console: Console | None = None,
) -> list[RolloutResult]:
    """Run every policy on every env: `config.rollouts` fresh rollouts of `config.episodes`.

    Args:
        envs: the envs to evaluate (libraries resolved through the plugin registry).
        policies: name -> factory; each policy gets its own rollouts of every env, all stepped
            in the same batch (the envs are seeded alike, so the policies meet the same starts).
        config: the protocol (default: the paper's).
        skip: rollouts already done (a resumed evaluation); they are not run again.
        previous_attempts: attempts already spent per rollout (numbering continues after them).
        on_result: called with each attempt's result as soon as it is final.
        backend: a backend instance overriding `config.backend` (tests inject failures so).
        console: where progress and worker restarts are reported.

    Returns:
        Every attempt, failed ones included; a rollout's outcome is its last attempt.
    """
    config = config or EvalConfig()
    console = console or Console(stderr=True)
    previous_attempts = previous_attempts or {}
    seeds = config.rollout_seeds()
    pending = [
        _Slot(name, t, r, seeds[r], previous_attempts.get((name, t.library, t.env_id, r), 0) + 1)
        for name in policies
        for t in envs
        for r in range(config.rollouts)
        if (name, t.library, t.env_id, r) not in skip
    ]
    results: list[RolloutResult] = []
    retry: list[_Slot] = []

    def emit(slot: _Slot, wall_s: float) -> None:
        res = slot.result(wall_s)
        results.append(res)
        if on_result is not None:
            on_result(res)
        if res.status == "failed" and slot.retry < config.retries:
            console.print(
                f"[yellow]rollout {res.rollout} of {slot.target} ({res.policy}) failed, "
                f"retrying ({slot.retry + 1}/{config.retries}):[/] "
                f"{escape(_first_line(res.cause))}",
                highlight=False,
            )
            retry.append(
                _Slot(
                    slot.policy,
                    slot.target,
                    slot.rollout,
                    slot.seed,
                    slot.attempt + 1,
                    retry=slot.retry + 1,
                )
            )

    while pending:
        size = config.batch_size or len(pending)
        for start in range(0, len(pending), size):
            _run_batch(pending[start : start + size], policies, config, backend, console, emit)
        pending = list(retry)
        retry.clear()
    return results


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text and text.strip() else ""


def _open_pool(
    library: str,
    members: list[int],
    slots: Sequence[_Slot],
    config: EvalConfig,
    backend: Backend | None,
    console: Console,
) -> tuple[EnvPool | None, list[int]]:
    """A one-worker pool over the members' envs; envs that cannot be made fail, left out.

    One worker per pool, so that a worker whose rollouts all failed (or finished) is closed
    on its own, without stopping the others: a worker that keeps crashing or hanging then
    costs only its own rollouts, never its neighbours'.
    """
    members = list(members)
    while members:
        try:
            pool = EnvPool(
                get_library(library),
                [slots[i].target.env_id for i in members],
                backend=backend or config.backend,
                num_workers=1,
                step_timeout=config.step_timeout,
                max_restarts=config.max_worker_restarts,
                console=console,
            )
            return pool, members
        except WorkerError as exc:
            culprits = set(exc.env_ids)
            named = [i for i in members if slots[i].target.env_id in culprits]
            for i in named or members:
                slots[i].end("failed", f"could not start the env: {exc}")
            members = [i for i in members if i not in named] if named else []
        except LDMEnvsError as exc:
            for i in members:
                slots[i].end("failed", f"could not start library {library!r}: {exc}")
            members = []
    return None, []


def _run_batch(
    slots: list[_Slot],
    factories: Mapping[str, PolicyFactory],
    config: EvalConfig,
    backend: Backend | None,
    console: Console,
    emit: Callable[[_Slot, float], None],
) -> None:
    """Step one batch of slots until each is `ok`, `failed` or `timeout`.

    Each slot is handed to `emit` (with the seconds since the batch started) as soon as its
    outcome is final, so results are saved while the rest of the batch still runs.
    """
    t0 = time.monotonic()

    def sweep() -> None:
        for s in slots:
            if s.state != "running" and not s.emitted:
                s.emitted = True
                emit(s, time.monotonic() - t0)

    # a pool holds envs of one action size (LunarLander's 1 and LunarLanderContinuous's 2 go
    # to two pools), so its actions travel as one array; EnvPool would also take mixed sizes
    by_library: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(slots):
        key = (s.target.library, _action_size(s.target.library, s.target.env_id))
        by_library.setdefault(key, []).append(i)
    libraries = {library for library, _ in by_library}
    pools: list[_PoolRun] = []
    try:
        for (library, _), members in by_library.items():
            workers = config.num_workers or _default_workers(len(members), len(libraries))
            for chunk in np.array_split(np.asarray(members), min(workers, len(members))):
                pool, alive = _open_pool(library, chunk.tolist(), slots, config, backend, console)
                if pool is not None:
                    pools.append(_PoolRun(library, pool, alive))
        if not pools:
            return
        # the batch the policies see: the slots of live pools, pool after pool
        order = [i for p in pools for i in p.slots]
        local = {g: k for k, g in enumerate(order)}
        for p in pools:
            p.slots = [local[g] for g in p.slots]
        live = [slots[g] for g in order]
        infos: list[SlotInfo] = []
        for p in pools:
            for j, k in enumerate(p.slots):
                s = live[k]
                infos.append(
                    SlotInfo(
                        library=p.library,
                        env_id=s.target.env_id,
                        rollout=s.rollout,
                        seed=s.seed,
                        attempt=s.attempt,
                        observation_space=p.pool.observation_spaces[j],
                        action_space=p.pool.action_spaces[j],
                    )
                )
        policy = _RoutedPolicy(live, infos, factories)
        _step_until_done(live, pools, policy, config, sweep)
    finally:
        for p in pools:
            p.pool.close()
        sweep()


def _step_until_done(
    live: list[_Slot],
    pools: list[_PoolRun],
    policy: _RoutedPolicy,
    config: EvalConfig,
    sweep: Callable[[], None],
) -> None:
    n = len(live)
    obs: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    for p in pools:
        try:
            first, _ = p.pool.reset([live[k].seed for k in p.slots])
        except WorkerError as exc:
            _fail_pool(p, live, f"reset failed: {exc}")
            first = [_placeholder(space) for space in p.pool.observation_spaces]
        for j, k in enumerate(p.slots):
            obs[k] = first[j]
    policy.reset()  # every rollout of the batch starts with an empty context
    reward = np.zeros(n, np.float64)
    done = np.zeros(n, np.bool_)
    while any(s.state == "running" for s in live):
        actions = policy.act(obs, reward, done)
        active = [p for p in pools if p.alive]
        for p in active:
            rows = [actions[k] for k in p.slots]
            p.pool.step_send(np.stack(rows) if p.pool.homogeneous else rows)
        for p in active:
            try:
                r = p.pool.step_recv()
            except WorkerError as exc:
                _fail_pool(p, live, f"worker failed past its restarts: {exc}")
                continue
            _record(p, r, live, obs, reward, done, config)
            if all(live[k].state != "running" for k in p.slots):
                p.alive = False  # nothing left to learn from this pool: free its workers
                p.pool.close()
        sweep()


def _placeholder(space: SpaceModel) -> np.ndarray:
    """An observation for a slot whose pool died before its first one (the batch needs one)."""
    gym_space = space.to_gymnasium()
    return np.zeros(gym_space.shape or (), gym_space.dtype)


def _fail_pool(p: _PoolRun, live: list[_Slot], cause: str) -> None:
    for k in p.slots:
        live[k].end("failed", cause)
    p.alive = False
    p.pool.close()


def _record(
    p: _PoolRun,
    r: StepResult,
    live: list[_Slot],
    obs: list[np.ndarray],
    reward: np.ndarray,
    done: np.ndarray,
    config: EvalConfig,
) -> None:
    """Fold one step's results of pool `p` into its slots (episodes, restarts, guards)."""
    rewards, terminated, truncated = r.rewards, r.terminated, r.truncated
    for j, k in enumerate(p.slots):
        obs[k] = r.obs[j]
        reward[k] = rewards[j]
        done[k] = bool(terminated[j] or truncated[j])
        s = live[k]
        if s.state != "running":
            continue
        info = r.infos[j]
        if "worker_restarted" in info:
            s.end("failed", f"worker restarted mid-episode: {info['worker_restarted']}")
            continue
        s.ep_return += float(rewards[j])
        s.ep_len += 1
        s.steps += 1
        if done[k]:
            s.returns.append(s.ep_return)
            s.lengths.append(s.ep_len)
            s.terminated.append(bool(terminated[j]))
            s.ep_return, s.ep_len = 0.0, 0
            if len(s.returns) >= config.episodes:
                s.state = "ok"
        elif s.ep_len >= config.max_episode_steps:
            s.end(
                "timeout",
                f"episode {len(s.returns) + 1} ran past max_episode_steps="
                f"{config.max_episode_steps} without ending",
            )
