"""The pool's two faces: a Gymnasium `VectorEnv` and a Stable-Baselines3 `VecEnv`.

`LDMVectorEnv` offers Gymnasium's two autoreset modes and defaults to `NEXT_STEP`, Gymnasium's
own default, so it is a drop-in for `gymnasium.vector.SyncVectorEnv`: every vector wrapper
accepts it (the stateful observation wrappers such as `NormalizeObservation` refuse
`SAME_STEP`). `SAME_STEP` remains one argument away for code written against it (`LDMPolicy`,
whose `done` means "this observation starts a new episode").

The worker itself always auto-resets in the same step (SB3's `VecEnv` needs that, and it costs
no extra round trip); `NEXT_STEP` is built on top of it here: the step that ends an episode
shows its last observation, and the next one shows the first observation the worker already
made, while the worker holds that env (its action is ignored, as Gymnasium does). Only that
following step leaves the shared-memory fast path (`EnvPool.step(hold=...)` goes by socket).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ldm_envs._lazy import deprecated_aliases
from ldm_envs.pool import EnvPool, StepResult

#: The modes `LDMVectorEnv` offers (`DISABLED` would need a reset per env: not offered).
AUTORESET_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
#: Keys the worker adds to the info of an ended episode, as Monitor's `episode` statistics.
#: Left out in `NEXT_STEP`, where Gymnasium's `RecordEpisodeStatistics` refuses an info that
#: already holds them.
_WORKER_STATS = ("episode",)
#: Keys that belong to the ending step only: the pool marks a worker restart both in the final
#: info and beside the new episode's first observation (what same-step users see); next-step
#: users see it once, on the step that ends the episode.
_ENDING_ONLY = ("final_obs", "final_info", "worker_restarted")


def resolve_autoreset_mode(value: AutoresetMode | str) -> AutoresetMode:
    """An `AutoresetMode` from itself, its value (`"NextStep"`) or its name (`"next_step"`).

    Raises:
        ValueError: for `DISABLED` or an unknown mode, naming the ones offered.
    """
    mode: AutoresetMode | None = value if isinstance(value, AutoresetMode) else None
    if mode is None:
        text = str(value)
        by_name = {m.name.lower(): m for m in AutoresetMode}
        mode = by_name.get(text.lower()) or next(
            (m for m in AutoresetMode if m.value.lower() == text.lower()), None
        )
    if mode not in AUTORESET_MODES:
        offered = ", ".join(f"AutoresetMode.{m.name}" for m in AUTORESET_MODES)
        raise ValueError(f"LdmVectorEnv offers autoreset_mode {offered}, not {value!r}")
    return mode


class LDMVectorEnv(VectorEnv):
    """A Gymnasium vector env over an `EnvPool` whose envs share their spaces.

    Args:
        library: library name or spec.
        env_ids: one id per sub-env, or one id repeated `num_envs` times.
        num_envs: how many copies when `env_ids` is a single id.
        autoreset_mode: `AutoresetMode.NEXT_STEP` (default, as Gymnasium's own vector envs):
            the step that ends an episode returns its last observation, and the next step
            returns the new episode's first observation with reward 0 and no end, ignoring
            that env's action. `AutoresetMode.SAME_STEP`: the ending step already returns the
            new episode's first observation; the last one is in `info["final_obs"]`, the
            step's info in `info["final_info"]` (with Monitor-style `episode` statistics).
            A value or name (`"SameStep"`, `"same_step"`) works too.
        **pool_options: passed to `EnvPool` (backend, num_workers, step_timeout, ...), or
            `pool=` an open `EnvPool` to wrap.

    Raises:
        ValueError: envs with different spaces, or an autoreset mode not offered.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        library: Any,
        env_ids: Sequence[str] | str,
        num_envs: int | None = None,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        **pool_options: Any,
    ) -> None:
        mode = resolve_autoreset_mode(autoreset_mode)
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
        self.autoreset_mode = mode
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        # NEXT_STEP: the envs whose episode ended at the last step, and the first observation
        # and reset info the worker made for each when it auto-reset them
        self._ended = np.zeros(self.num_envs, np.bool_)
        self._first: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env; an int seed gives env i the seed `seed + i` (as Gymnasium)."""
        obs, infos = self.pool.reset(seed)
        self._ended[:] = False
        self._first.clear()
        return obs, self._merge(infos)  # type: ignore[return-value]

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env once, auto-resetting ended episodes as `autoreset_mode` says."""
        if self.autoreset_mode is AutoresetMode.SAME_STEP:
            r = self.pool.step(actions)
            return r.obs, r.rewards, r.terminated, r.truncated, self._merge(r.infos)  # type: ignore[return-value]
        held = np.flatnonzero(self._ended)
        r = self.pool.step(actions, held)
        return self._next_step(r, held)

    def _next_step(
        self, r: StepResult, held: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Turn a same-step result into Gymnasium's next-step one.

        Held envs (ended at the last step) show the first observation and reset info kept
        then; envs ending now show their last observation and the step's own info, and keep
        the worker's reset for the next step. A restarted worker's envs end as truncated with
        the last observation they had (`final_obs`), so they take the same path.
        """
        obs = np.asarray(r.obs)
        infos = r.infos
        ended = np.flatnonzero(r.terminated | r.truncated)
        if len(held) or len(ended):
            obs = obs.copy()
        for i in held.tolist():
            first, reset_info = self._first.pop(i)
            if r.truncated[i]:  # its worker was restarted during this step: it ends again
                continue
            obs[i] = first
            infos[i] = reset_info
        for i in ended.tolist():
            info = infos[i]
            self._first[i] = (
                obs[i].copy(),
                {k: v for k, v in info.items() if k not in _ENDING_ONLY},
            )
            obs[i] = info["final_obs"]
            final = info.get("final_info") or {}
            infos[i] = {k: v for k, v in final.items() if k not in _WORKER_STATS}
        self._ended[:] = False
        self._ended[ended] = True
        return obs, r.rewards, r.terminated, r.truncated, self._merge(infos)

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
        from ldm_envs.sb3 import LDMSB3VecEnv
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the SB3 adapter needs stable-baselines3: pip install 'ldm-envs[sb3]'"
        ) from exc
    return LDMSB3VecEnv(library, env_ids, num_envs=num_envs, **pool_options)


#: `LdmVectorEnv`, the spelling before `LDM*`: deprecated, warns, removed in the next release.
__getattr__ = deprecated_aliases(__name__, {"LdmVectorEnv": "LDMVectorEnv"})
if TYPE_CHECKING:
    LdmVectorEnv = LDMVectorEnv

__all__ = ["AUTORESET_MODES", "LDMVectorEnv", "make_sb3_vec_env", "resolve_autoreset_mode"]
