"""Stable-Baselines3 `VecEnv` over an `EnvPool`, so SB3 trains through isolation unchanged."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.vec_env import VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from ldm_envs._lazy import deprecated_aliases
from ldm_envs.pool import EnvPool


def folderless_logger(verbose: int = 0) -> Logger:
    """An SB3 logger that writes no files: the console at `verbose` >= 1, else nothing.

    SB3's default logger (`configure_logger`, set up by `learn` on a model without a logger of
    its own and no `tensorboard_log`) creates `<tmp>/SB3-<date and time>` even when it writes
    nothing there: one quickstart left 25 such folders in /tmp. ldm-autorl's models and the
    benchmark's get this one (`model.set_logger(folderless_logger())`), which keeps SB3's
    console output at `verbose` >= 1 and its `ep_info_buffer`.
    """
    return Logger(folder=None, output_formats=[HumanOutputFormat(sys.stdout)] if verbose else [])


def env_actions(space: gym.Space[Any], actions: np.ndarray) -> np.ndarray:
    """The actions an env receives for what an SB3 policy emitted.

    SB3 treats every Box as continuous and emits floats even for integer boxes (or-gym's order
    quantities); the env gets them rounded and clipped, as SB3 clips float boxes. Recording and
    relabeling use the same conversion, so the dataset holds what the env really executed.
    """
    if isinstance(space, gym.spaces.Box) and np.dtype(space.dtype).kind in "iu":
        return np.clip(np.rint(actions), space.low, space.high).astype(space.dtype)
    return actions


class LDMSB3VecEnv(VecEnv):
    """SB3's vector API: `step_async` sends to every worker, `step_wait` gathers.

    Done envs carry `terminal_observation`, `TimeLimit.truncated` and Monitor-style `episode`
    statistics in their info, so SB3 bootstraps truncated episodes and logs returns as with
    `Monitor` + `DummyVecEnv`.
    """

    def __init__(
        self,
        library: Any,
        env_ids: Sequence[str] | str,
        num_envs: int | None = None,
        **pool_options: Any,
    ) -> None:
        self.pool: EnvPool = pool_options.pop("pool", None) or EnvPool(
            library, env_ids, num_envs=num_envs, **pool_options
        )
        if not self.pool.homogeneous:
            self.pool.close()
            raise ValueError("an SB3 VecEnv needs envs that share their spaces")
        super().__init__(
            self.pool.num_envs,
            self.pool.observation_spaces[0].to_gymnasium(),
            self.pool.action_spaces[0].to_gymnasium(),
        )

    def reset(self) -> np.ndarray:
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, infos = self.pool.reset(seeds)
        self.reset_infos = infos
        self._reset_seeds()
        self._reset_options()
        return obs  # type: ignore[return-value]

    def step_async(self, actions: np.ndarray) -> None:
        self.pool.step_send(env_actions(self.action_space, actions))

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        r = self.pool.step_recv()
        dones = r.terminated | r.truncated
        infos = r.infos
        for i in np.flatnonzero(dones):
            info = infos[i]
            info["terminal_observation"] = info.pop("final_obs")
            final = info.pop("final_info", {})
            info.update(final)
            info["TimeLimit.truncated"] = bool(r.truncated[i] and not r.terminated[i])
            if "episode" in info:
                info["episode"] = {**info["episode"], "t": 0.0}
        return r.obs, r.rewards.astype(np.float32), dones, infos  # type: ignore[return-value]

    def close(self) -> None:
        self.pool.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":
            return [None] * len(list(self._get_indices(indices)))
        return self.pool.call(attr_name, list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise NotImplementedError("remote envs are configured through the manifest's kwargs")

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        raise NotImplementedError("remote env methods are not exposed; use the manifest")

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """True for SB3's `Monitor`: the worker reports its episode statistics itself.

        SB3's `evaluate_policy` asks so that it reads those statistics (and does not warn that
        no Monitor is there). `VecMonitor` asks too, only to warn that it will overwrite a
        Monitor's statistics; over this env it computes the same ones from the same steps, so
        the warning would be noise on every wrap: `VecMonitor` alone is answered False.
        """
        is_monitor = wrapper_class.__name__ == "Monitor" and not _asked_by_vec_monitor()
        return [is_monitor] * len(list(self._get_indices(indices)))


def _asked_by_vec_monitor(depth: int = 12) -> bool:
    """Whether `env_is_wrapped` runs for `VecMonitor.__init__`'s warning check.

    Looks a few frames up: wrappers in between (`VecNormalize`, ...) pass the question down.
    """
    code = VecMonitor.__init__.__code__
    frame: FrameType | None = sys._getframe(2)  # 0: here, 1: env_is_wrapped, 2: its caller
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


#: `LdmSB3VecEnv`, the spelling before `LDM*`: deprecated, warns, removed in the next release.
__getattr__ = deprecated_aliases(__name__, {"LdmSB3VecEnv": "LDMSB3VecEnv"})
if TYPE_CHECKING:
    LdmSB3VecEnv = LDMSB3VecEnv

__all__ = ["LDMSB3VecEnv", "env_actions", "folderless_logger"]
