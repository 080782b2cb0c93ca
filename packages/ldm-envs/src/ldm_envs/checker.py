"""`ldm-envs check`: random rollouts of every declared env through a backend.

Verifies what comes back against the manifest: spaces, observation shapes, dtypes and bounds,
finite rewards, episode ends. Results are saved so `ldm-envs list` can show library health.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel
from rich.markup import escape

from ldm_envs.backends import Backend
from ldm_envs.errors import LDMEnvsError
from ldm_envs.manifest import EnvLibrarySpec, atomic_write_text
from ldm_envs.paths import checks_dir
from ldm_envs.pool import EnvPool, Obs
from ldm_envs.spaces import BoxSpace, SpaceModel

if TYPE_CHECKING:
    from rich.console import Console


class EnvCheck(BaseModel):
    """The outcome for one env."""

    env_id: str
    ok: bool
    steps: int = 0
    episodes: int = 0
    steps_per_second: float = 0.0
    observation: str = ""
    action: str = ""
    problems: list[str] = []


class LibraryCheck(BaseModel):
    """The outcome for a library through one backend."""

    library: str
    backend: str
    ok: bool
    seconds: float
    envs: list[EnvCheck]
    when: float


def bound_violations(
    space: SpaceModel, row: np.ndarray, limit: int = 3
) -> list[tuple[int, float, float, float]]:
    """The flat dims of `row` outside the Box `space`: `(dim, value, low, high)`, worst first.

    NaN counts as outside. At most `limit` entries (0: all).
    """
    if not isinstance(space, BoxSpace):
        return []
    values = np.asarray(row, dtype=np.float64).ravel()
    low = space.low_array().astype(np.float64).ravel()
    high = space.high_array().astype(np.float64).ravel()
    excess = np.maximum(low - values, values - high)
    excess = np.where(np.isnan(values), np.inf, excess)
    dims = [int(d) for d in np.argsort(-excess, kind="stable") if excess[d] > 0]
    found = [(d, float(values[d]), float(low[d]), float(high[d])) for d in dims]
    return found[:limit] if limit else found


def describe_violation(env_id: str, dim: int, value: float, low: float, high: float) -> str:
    """One bound violation as `check` and `add` print it."""
    side = f"low {low:g}" if value < low else f"high {high:g}"
    return (
        f"{env_id}: observation dim {dim} = {value:.6g} is outside the declared bounds "
        f"[{low:g}, {high:g}] (beyond the {side})"
    )


def _observation_problems(env_id: str, pool: EnvPool, obs: Obs) -> list[str]:
    model = pool.observation_spaces[0]
    space = model.to_gymnasium()
    problems = []
    for row in obs:
        if row.shape != space.shape:
            problems.append(f"observation shape {row.shape} != declared {space.shape}")
        elif row.dtype != space.dtype:
            problems.append(f"observation dtype {row.dtype} != declared {space.dtype}")
        elif not space.contains(row):
            found = bound_violations(model, row)
            if found:
                problems += [describe_violation(env_id, *v) for v in found]
                more = len(bound_violations(model, row, limit=0)) - len(found)
                if more > 0:
                    problems.append(f"{env_id}: {more} more dims outside the declared bounds")
            else:
                problems.append(
                    f"{env_id}: observation {np.asarray(row).tolist()} is not in the declared "
                    f"{model.describe()}"
                )
        if problems:
            break
    return problems


def check_env(
    spec: EnvLibrarySpec,
    env_id: str,
    backend: Backend,
    *,
    steps: int = 200,
    num_envs: int = 2,
    seed: int = 0,
) -> EnvCheck:
    """Roll out random actions in `num_envs` copies of one env for `steps` batched steps."""
    declared = spec.env(env_id)
    result = EnvCheck(env_id=env_id, ok=False)
    try:
        with EnvPool(spec, env_id, num_envs=num_envs, backend=backend, max_restarts=0) as pool:
            result.observation = pool.observation_spaces[0].describe()
            result.action = pool.action_spaces[0].describe()
            if not declared.probed:
                result.problems.append("spaces not declared: run `ldm-envs probe`")
            action_space = pool.action_spaces[0].to_gymnasium()
            action_space.seed(seed)
            obs, _ = pool.reset(seed=seed)
            result.problems += _observation_problems(env_id, pool, obs)
            start = time.perf_counter()
            for _ in range(steps):
                r = pool.step(np.stack([action_space.sample() for _ in range(num_envs)]))
                if not np.all(np.isfinite(r.rewards)):
                    result.problems.append(f"non-finite reward {r.rewards.tolist()}")
                result.episodes += int(np.sum(r.terminated | r.truncated))
                if not result.problems:
                    result.problems += _observation_problems(env_id, pool, r.obs)
                result.steps += num_envs
            result.steps_per_second = result.steps / max(time.perf_counter() - start, 1e-9)
    except LDMEnvsError as exc:
        result.problems.append(str(exc))
    result.ok = not result.problems
    return result


def show_env_check(console: Console, res: EnvCheck) -> None:
    """Print one env's result (and its problems) as `ldm-envs check` does.

    The suite's probe stage prints through it too, so a check reads the same wherever it runs.
    """
    mark = "[green]ok[/]" if res.ok else "[red]FAIL[/]"
    console.print(
        f"  {mark} {res.env_id:<32} {res.observation:<24} {res.action:<22} "
        f"{res.steps_per_second:>8.0f} steps/s {res.episodes:>4} episodes",
        highlight=False,
    )
    for problem in res.problems:
        console.print(f"      [red]{escape(problem)}[/]", highlight=False)


def check_library(
    spec: EnvLibrarySpec,
    backend: Backend,
    *,
    env_ids: list[str] | None = None,
    steps: int = 200,
    num_envs: int = 2,
    on_env: Callable[[EnvCheck], None] | None = None,
) -> LibraryCheck:
    """Check every declared env (or `env_ids`) and save the result under the data home.

    The saved record holds each env's latest check: a check of some envs (`--env`,
    `--ranking`) replaces theirs and keeps the others' earlier results, for envs still
    declared, so `ldm-envs list` shows a docker check of the ranking subset too.
    """
    start = time.time()
    backend.prepare(spec)
    results = []
    for env_id in env_ids or spec.env_ids:
        res = check_env(spec, env_id, backend, steps=steps, num_envs=num_envs)
        results.append(res)
        if on_env is not None:
            on_env(res)
    report = LibraryCheck(
        library=spec.name,
        backend=backend.name,
        ok=all(r.ok for r in results),
        seconds=round(time.time() - start, 1),
        envs=results,
        when=start,
    )
    saved = report
    previous = last_check(spec.name, backend.name) if env_ids is not None else None
    if previous is not None:
        rechecked = {r.env_id for r in results}
        order = {env_id: i for i, env_id in enumerate(spec.env_ids)}
        kept = [e for e in previous.envs if e.env_id in order and e.env_id not in rechecked]
        envs = sorted(kept + results, key=lambda e: order.get(e.env_id, len(order)))
        saved = report.model_copy(update={"envs": envs, "ok": all(e.ok for e in envs)})
    atomic_write_text(
        checks_dir() / f"{spec.name}-{backend.name}.json", saved.model_dump_json(indent=2)
    )
    return report


def last_check(library: str, backend: str) -> LibraryCheck | None:
    """The saved latest check of each env of `library` through `backend`, if any."""
    path = checks_dir() / f"{library}-{backend}.json"
    if not path.exists():
        return None
    try:
        return LibraryCheck.model_validate_json(path.read_text())
    except ValueError:
        return None
