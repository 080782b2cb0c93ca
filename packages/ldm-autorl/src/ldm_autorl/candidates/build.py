"""Building a candidate's SB3 model on a `VecEnv`: policy, constructor arguments, logger.

The only place where a candidate's plain-data hyperparameters become live objects
(schedules, action noise, classes) and where the replay buffer is sized to the memory there is.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ldm_autorl.candidates.compat import compatibility
from ldm_autorl.candidates.hyperparams import (
    _SCHEDULE,
    ActionNoiseConfig,
    _import_reference,
    _linear_schedule,
)
from ldm_autorl.candidates.kinds import _as_model
from ldm_autorl.errors import CandidateError

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

    from ldm_autorl.candidates.config import CandidateConfig

logger = logging.getLogger(__name__)

#: Cap on the replay buffer's observation storage (obs + next obs) that `make_model` applies by
#: lowering `buffer_size`: 1 GiB holds ~43k transitions of 64x64x3 pixels, all of 7x7x3 grids.
REPLAY_BUFFER_MAX_BYTES = 1 << 30


def make_model(
    candidate: CandidateConfig,
    env: VecEnv,
    *,
    seed: int,
    device: str = "cpu",
    tensorboard_log: str | None = None,
    verbose: int = 0,
    max_replay_bytes: int = REPLAY_BUFFER_MAX_BYTES,
) -> BaseAlgorithm:
    """Build the SB3 model of `candidate` on `env`.

    Args:
        candidate: the candidate.
        env: an SB3 `VecEnv`, ideally with `n_envs` envs (another count only logs a warning).
        seed: seeds the model (and the env through SB3).
        device: torch device ("cpu", "cuda", "auto").
        tensorboard_log: SB3's tensorboard folder, if any. Without one the model logs
            through `ldm_envs.sb3.folderless_logger` (SB3's default makes
            `<tmp>/SB3-<date>` per `learn`).
        verbose: SB3's verbosity.
        max_replay_bytes: lowers `buffer_size` of off-policy algorithms so that stored
            observations (obs and next obs) stay under this many bytes.

    Raises:
        CandidateError: when the env's spaces are not ones this candidate supports.
    """
    obs_space = _as_model(env.observation_space)
    act_space = _as_model(env.action_space)
    ok, reason = compatibility(candidate, obs_space, act_space)
    if not ok:
        raise CandidateError(f"candidate {candidate.name!r} cannot run on this env: {reason}")
    if env.num_envs != candidate.n_envs:
        logger.warning(
            "candidate %r is tuned for %d envs; the VecEnv has %d",
            candidate.name,
            candidate.n_envs,
            env.num_envs,
        )
    cls = candidate.algorithm_class()
    policy, policy_kwargs = candidate.resolve_policy(obs_space)
    kwargs = _constructor_kwargs(candidate, env, cls, max_replay_bytes)
    kwargs.setdefault("verbose", verbose)
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    model = cls(
        policy,
        env,
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        **kwargs,
    )
    if tensorboard_log is None:
        from ldm_envs.sb3 import folderless_logger

        model.set_logger(folderless_logger(int(kwargs["verbose"])))
    return model


def _constructor_kwargs(
    candidate: CandidateConfig, env: VecEnv, cls: type[BaseAlgorithm], max_replay_bytes: int
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for key, value in candidate.hyperparams.items():
        if isinstance(value, str) and (m := _SCHEDULE.match(value)):
            kwargs[key] = _linear_schedule(float(m.group(1)))
        elif key == "train_freq" and isinstance(value, list | tuple):
            kwargs[key] = (int(value[0]), str(value[1]))
        elif key.endswith("_class") and isinstance(value, str):
            kwargs[key] = _import_reference(value)
        elif key == "action_noise" and isinstance(value, dict):
            space = env.action_space
            kwargs[key] = ActionNoiseConfig.model_validate(value).build(
                int(math.prod(space.shape or (1,)))
            )
        else:
            kwargs[key] = value
    params = inspect.signature(cls.__init__).parameters
    if "buffer_size" in params:
        default = params["buffer_size"].default
        size = int(kwargs.get("buffer_size", default))
        obs = env.observation_space
        per_transition = 2 * int(math.prod(obs.shape or (1,))) * np.dtype(obs.dtype).itemsize
        cap = max(1_000, max_replay_bytes // max(per_transition, 1))
        if size > cap:
            logger.info(
                "candidate %r: buffer_size %d -> %d so observations fit in %d MiB",
                candidate.name,
                size,
                cap,
                max_replay_bytes >> 20,
            )
            kwargs["buffer_size"] = cap
    return kwargs
