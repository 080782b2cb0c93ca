"""The pool's two faces: a Gymnasium `VectorEnv` and a Stable-Baselines3 `VecEnv`.

Both auto-reset in the same step (Gymnasium's `AutoresetMode.SAME_STEP`), so SB3 gets its
`terminal_observation` and Gymnasium users their `final_obs`, from one round trip per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ldm_envs.pool import EnvPool


class LdmVectorEnv(VectorEnv):
    """A Gymnasium vector env over an `EnvPool` whose envs share their spaces.

    Args:
        library: library name or spec.
        env_ids: one id per sub-env, or one id repeated `num_envs` times.
        num_envs: how many copies when `env_ids` is a single id.
        **pool_options: passed to `EnvPool` (backend, num_workers, step_timeout, ...).
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        library: Any,
        env_ids: Sequence[str] | str,
        num_envs: int | None = None,
        **pool_options: Any,
    ) -> None:
        self.pool = pool_options.pop("pool", None) or EnvPool(
            library, env_ids, num_envs=num_envs, **pool_options
        )
        if not self.pool.homogeneous:
            self.pool.close()
            raise ValueError(
                "LdmVectorEnv needs envs with one observation and action space; use EnvPool for "
                "mixed envs"
            )
        self.num_envs = self.pool.num_envs
        self.single_observation_space = self.pool.observation_spaces[0].to_gymnasium()
        self.single_action_space = self.pool.action_spaces[0].to_gymnasium()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(self.metadata)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, infos = self.pool.reset(seed)
        return obs, self._merge(infos)  # type: ignore[return-value]

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        r = self.pool.step(actions)
        return r.obs, r.rewards, r.terminated, r.truncated, self._merge(r.infos)  # type: ignore[return-value]

    def _merge(self, infos: list[dict[str, Any]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for i, info in enumerate(infos):
            if info:
                merged = self._add_info(merged, info, i)
        return merged

    def close_extras(self, **kwargs: Any) -> None:
        self.pool.close()


def make_sb3_vec_env(
    library: Any, env_ids: Sequence[str] | str, num_envs: int | None = None, **pool_options: Any
) -> Any:
    """Build an SB3 `VecEnv` over an `EnvPool` (imports SB3 lazily).

    Raises:
        ImportError: naming the `ldm-envs[sb3]` extra when SB3 is missing.
    """
    try:
        from ldm_envs.sb3 import LdmSB3VecEnv
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the SB3 adapter needs stable-baselines3: pip install 'ldm-envs[sb3]'"
        ) from exc
    return LdmSB3VecEnv(library, env_ids, num_envs=num_envs, **pool_options)


__all__ = ["LdmVectorEnv", "make_sb3_vec_env"]
