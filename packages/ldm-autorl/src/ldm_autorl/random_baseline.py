"""A random policy's score per env, measured with ldm itself through the env's isolated worker.

It is the zero of `% of zoo` and the bar a reference run must clear to be worth imitating: a
run whose last-10% return is not above it learned nothing a dataset should keep (the filter
drops it, saying so). It is measured once per env and data root and kept as
`random/<library>/<env>.json` (written last, so an interrupted measure is redone, never
half-read): uniform samples of the action space from a seeded generator, `episodes` complete
episodes over `num_envs` parallel envs, stopped early at `max_steps` transitions so that an
env whose random episodes never end (or are very long) costs a bounded time.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from ldm_autorl import layout
from ldm_autorl.config import AutoRLConfig
from ldm_envs.manifest import atomic_write_text
from ldm_envs.plugins import get_library

__all__ = ["RandomScore", "load_random_score", "measure_random", "random_path"]

DEFAULT_EPISODES: int = AutoRLConfig.model_fields["random_episodes"].default
DEFAULT_MAX_STEPS = 50_000
DEFAULT_NUM_ENVS = 4


class RandomScore(BaseModel):
    """The returns of a uniformly random policy on one env (`random/<lib>/<env>.json`)."""

    library: str
    env_id: str
    seed: int
    episodes: int
    mean: float
    std: float
    returns: list[float]
    steps: int
    seconds: float


def random_path(root: Path, library: str, env_id: str) -> Path:
    """Where an env's random score is kept under the data root."""
    return root / "random" / library / f"{layout.safe(env_id)}.json"


def load_random_score(root: Path, library: str, env_id: str) -> RandomScore | None:
    """The env's measured random score, or None if it was never measured under `root`."""
    path = random_path(root, library, env_id)
    if not path.exists():
        return None
    return RandomScore.model_validate_json(path.read_text())


def measure_random(
    library: str,
    env_id: str,
    *,
    root: Path,
    episodes: int = DEFAULT_EPISODES,
    max_steps: int = DEFAULT_MAX_STEPS,
    num_envs: int = DEFAULT_NUM_ENVS,
    seed: int = 0,
    backend: str = "venv",
) -> RandomScore:
    """Measure (or read back) a random policy's returns on one env.

    Raises:
        RuntimeError: naming the env, when no episode ended within `max_steps` transitions.
    """
    done = load_random_score(root, library, env_id)
    if done is not None and done.seed == seed:
        return done
    from ldm_envs.sb3 import LDMSB3VecEnv

    start = time.perf_counter()
    spec = get_library(library)
    venv = LDMSB3VecEnv(spec, env_id, num_envs, backend=backend)
    try:
        venv.seed(seed)
        space = venv.action_space
        space.seed(seed)
        venv.reset()
        running = np.zeros(num_envs, dtype=np.float64)
        returns: list[float] = []
        steps = 0
        while len(returns) < episodes and steps < max_steps:
            actions = np.stack([np.asarray(space.sample()) for _ in range(num_envs)])
            _, rewards, dones, _ = venv.step(actions)
            running += rewards
            steps += num_envs
            for i in np.flatnonzero(dones):
                returns.append(float(running[i]))
                running[i] = 0.0
    finally:
        venv.close()
    if not returns:
        raise RuntimeError(
            f"random policy on {library}/{env_id}: no episode ended within {max_steps:,} "
            "transitions; raise max_steps"
        )
    returns = returns[:episodes]
    score = RandomScore(
        library=library,
        env_id=env_id,
        seed=seed,
        episodes=len(returns),
        mean=float(np.mean(returns)),
        std=float(np.std(returns)),
        returns=returns,
        steps=steps,
        seconds=round(time.perf_counter() - start, 2),
    )
    path = random_path(root, library, env_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, score.model_dump_json(indent=2))
    return score
