"""Trying each registered env: probe its spaces, step it at random, time it, watch its bounds.

An env that fails gets a one-line cause for the manifest's `excluded`; one that passes gets its
spaces, its speed and, where its values left the declared Box, the dims to widen with the
values seen (the evidence the plugin's README quotes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ldm_envs.backends import Backend
from ldm_envs.checker import bound_violations
from ldm_envs.errors import LDMEnvsError, SpaceError, WorkerError
from ldm_envs.manifest import EnvLibrarySpec, EnvSpec, ObservationBounds
from ldm_envs.pool import EnvPool
from ldm_envs.probe import probe_tolerant
from ldm_envs.spaces import BoxSpace, SpaceModel, check_limits, space_from_dict


@dataclass
class Widened:
    """One dim whose random rollouts left the library's declared bound."""

    dim: int
    low: float
    high: float
    seen_min: float
    seen_max: float
    #: The env whose rollouts showed it, when another env of the same layout did (see `pool`).
    seen_in: str = ""


@dataclass
class EnvTrial:
    """What trying one env found."""

    env_id: str
    cause: str = ""
    observation: SpaceModel | None = None
    action: SpaceModel | None = None
    steps_per_second: float = 0.0
    episodes: int = 0
    widened: list[Widened] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the env passes (no cause to exclude it)."""
        return not self.cause


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def probe_spaces(
    spec: EnvLibrarySpec, backend: Backend, env_ids: list[str], timeout: float = 300
) -> dict[str, EnvTrial]:
    """Make each env once (reset and one step, in the worker) and read its spaces."""
    skipped: dict[str, str] = {}
    replies = probe_tolerant(spec, backend, env_ids, timeout, skipped)
    trials = {}
    for env_id in env_ids:
        trial = EnvTrial(env_id)
        if env_id in skipped:
            trial.cause = f"cannot be made, reset or stepped: {skipped[env_id]}"
        else:
            reply = replies[env_id]
            trial.observation = space_from_dict(reply["observation"])
            trial.action = space_from_dict(reply["action"])
            try:
                check_limits(trial.observation, trial.action)
            except SpaceError as exc:
                trial.cause = str(exc)
        trials[env_id] = trial
    return trials


def _widen(space: BoxSpace, seen_min: np.ndarray, seen_max: np.ndarray) -> list[Widened]:
    """The dims whose seen values left `space`; the exceeded side becomes unbounded."""
    low = space.low_array().astype(np.float64).ravel()
    high = space.high_array().astype(np.float64).ravel()
    out = []
    for dim in np.flatnonzero((seen_min < low) | (seen_max > high)):
        d = int(dim)
        out.append(
            Widened(d, float(low[d]), float(high[d]), float(seen_min[d]), float(seen_max[d]))
        )
    return out


def widened_bounds(space: BoxSpace, widened: list[Widened]) -> ObservationBounds:
    """Bounds for the manifest: the library's, each exceeded side made unbounded.

    Unbounded (not the largest value seen) because a few hundred random steps show that the
    declared bound is wrong, not where the true one lies. A symmetric bound (`-b, b`, as for a
    velocity) seen wrong on one side opens on both: the other side is as wrong, only not seen
    yet (panda-gym's angular velocities). Integer boxes open to their dtype's range.
    """
    low = space.low_array().astype(np.float64).ravel()
    high = space.high_array().astype(np.float64).ravel()
    dt = np.dtype(space.dtype)
    lo_open, hi_open = (
        (float(np.iinfo(dt).min), float(np.iinfo(dt).max)) if dt.kind in "iu" else (-np.inf, np.inf)
    )
    changed_low = changed_high = False
    for w in widened:
        symmetric = w.low == -w.high
        if w.seen_min < w.low or (symmetric and w.seen_max > w.high):
            low[w.dim], changed_low = lo_open, True
        if w.seen_max > w.high or (symmetric and w.seen_min < w.low):
            high[w.dim], changed_high = hi_open, True

    def plain(values: np.ndarray) -> float | list[float]:
        return float(values[0]) if np.all(values == values[0]) else [float(v) for v in values]

    return ObservationBounds(
        low=plain(low) if changed_low else None, high=plain(high) if changed_high else None
    )


class _Seen:
    """The range of each observation dim over the random steps, and whether a NaN showed.

    Kept as running extremes, not the rows: a 240x256x3 image (gym-super-mario-bros) over
    2 x 1000 steps would hold 3 GB as float64.
    """

    def __init__(self, batch: np.ndarray | list[np.ndarray]) -> None:
        rows = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        self.nan = bool(np.isnan(rows).any())
        self.low, self.high = rows.min(axis=0), rows.max(axis=0)

    def add(self, batch: np.ndarray | list[np.ndarray]) -> None:
        rows = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        self.nan = self.nan or bool(np.isnan(rows).any())
        np.minimum(self.low, rows.min(axis=0), out=self.low)
        np.maximum(self.high, rows.max(axis=0), out=self.high)


def roll_out(
    spec: EnvLibrarySpec,
    env: EnvSpec,
    backend: Backend,
    trial: EnvTrial,
    *,
    steps: int,
    min_steps_per_second: float,
    seed: int = 0,
    copies: int = 2,
) -> EnvTrial:
    """Step one probed env with random actions; fill speed, episodes, widened dims or a cause.

    `copies` copies start from seeds `seed`, `seed + 1`, ... (as `check` does): starts differ,
    so more of the values the env can reach show up per second of stepping.
    """
    try:
        with EnvPool(spec, env.id, num_envs=copies, backend=backend, max_restarts=0) as pool:
            action_space = pool.action_spaces[0].to_gymnasium()
            action_space.seed(seed)
            obs, _ = pool.reset(seed=seed)
            box = pool.observation_spaces[0]
            seen = _Seen(obs)
            start = time.perf_counter()
            for _ in range(steps):
                r = pool.step(np.stack([action_space.sample() for _ in range(copies)]))
                if not np.all(np.isfinite(r.rewards)):
                    trial.cause = f"non-finite reward {r.rewards.tolist()} in random steps"
                    return trial
                trial.episodes += int(np.sum(r.terminated | r.truncated))
                seen.add(r.obs)
            elapsed = max(time.perf_counter() - start, 1e-9)
            trial.steps_per_second = round(steps * copies / elapsed, 1)
    except (WorkerError, LDMEnvsError) as exc:
        trial.cause = f"failed in random steps: {_first_line(str(exc))}"
        return trial
    if seen.nan:
        trial.cause = "observations hold NaN in random steps"
        return trial
    if isinstance(box, BoxSpace) and not box.is_image:
        seen_min, seen_max = seen.low, seen.high
        if bound_violations(box, seen_min) or bound_violations(box, seen_max):
            trial.widened = _widen(box, seen_min, seen_max)
    if trial.steps_per_second < min_steps_per_second:
        trial.cause = (
            f"too slow: {trial.steps_per_second:g} random steps/s, under the "
            f"{min_steps_per_second:g} asked (--min-steps-per-second)"
        )
    return trial


def pool_widened(trials: list[EnvTrial], family: dict[str, str]) -> None:
    """Share the widened dims among envs of one observation layout.

    Envs of one library module with the same Box (shape and declared bounds) usually put the
    same quantity in each dim (panda-gym's Push, PushDense and PushJoints: the object's angular
    velocity in dims 21-23), and a few hundred random steps show a bound left in some of them
    only. A dim widened in one is widened in all, with the env that showed it as the evidence;
    widening only loosens a bound, so a wrong guess costs no failure.
    """
    groups: dict[tuple[str, str], list[EnvTrial]] = {}
    for t in trials:
        if t.ok and isinstance(t.observation, BoxSpace) and not t.observation.is_image:
            key = (family.get(t.env_id, ""), t.observation.model_dump_json())
            groups.setdefault(key, []).append(t)
    for members in groups.values():
        found: dict[int, Widened] = {}
        for t in members:
            for w in t.widened:
                best = found.get(w.dim)
                if best is None:
                    found[w.dim] = Widened(**{**w.__dict__, "seen_in": t.env_id})
                else:
                    best.seen_min = min(best.seen_min, w.seen_min)
                    best.seen_max = max(best.seen_max, w.seen_max)
        for t in members:
            own = {w.dim for w in t.widened}
            t.widened += [w for d, w in sorted(found.items()) if d not in own]
            t.widened.sort(key=lambda w: w.dim)
