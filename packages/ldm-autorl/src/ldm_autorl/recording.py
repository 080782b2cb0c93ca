"""Recording every transition SB3 trains on, and relabeling it with the final policy.

Each sub-env of the training VecEnv gets its own shard part, so a part holds whole episodes
back to back (the model's window sampler reads contiguous rows, crossing episode boundaries
the way evaluation keeps context across episodes). Rows are buffered and written in blocks.

An episode cut short by a worker restart (its worker crashed or hung and `EnvPool` started a
fresh one) ended because of the machine, not the policy: its last row is marked `restarted`
in the shard, and it is left out of the episode returns and lengths that feed the first/last
10% statistics, the ranking and the learning curve (`cut_episodes` counts it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from ldm_envs.dataset.shards import ShardReader, ShardWriter, write_ref_actions
from ldm_envs.sb3 import env_actions

FLUSH_ROWS = 2048


class _PartBuffer:
    """Rows of one sub-env waiting to be appended to its shard."""

    def __init__(self) -> None:
        self.obs: list[np.ndarray] = []
        self.action: list[np.ndarray] = []
        self.reward: list[float] = []
        self.terminated: list[bool] = []
        self.truncated: list[bool] = []
        self.episode: list[int] = []
        self.step: list[int] = []
        self.restarted: list[bool] = []

    def __len__(self) -> int:
        return len(self.reward)

    def flush(self, writer: ShardWriter) -> None:
        if not self.reward:
            return
        writer.append(
            np.stack(self.obs),
            np.stack(self.action),
            np.asarray(self.reward, np.float32),
            np.asarray(self.terminated, np.bool_),
            np.asarray(self.truncated, np.bool_),
            np.asarray(self.episode, np.int64),
            np.asarray(self.step, np.int64),
            np.asarray(self.restarted, np.bool_),
        )
        self.__init__()  # type: ignore[misc]


class RecordingVecEnv(VecEnvWrapper):
    """Records (obs_t, action_t, reward_t, terminated_t, truncated_t) of every sub-env.

    Without writers it only keeps the episode returns (the learning curve), which ranking runs
    need and reference runs log as well. `record_seconds` is the time spent recording, so the
    overhead outside SB3's own training can be reported.

    Episodes that end with `worker_restarted` in their info are not in `episode_returns` or
    `episode_lengths`; `cut_episodes` counts them and `restart_causes` keeps each distinct
    cause, and their last row is marked `restarted` in the shard.
    """

    def __init__(self, venv: VecEnv, writers: Sequence[ShardWriter] | None = None) -> None:
        super().__init__(venv)
        if writers is not None and len(writers) != venv.num_envs:
            raise ValueError(f"{len(writers)} shard writers for {venv.num_envs} envs")
        self.writers = list(writers) if writers is not None else None
        self.buffers = [_PartBuffer() for _ in range(venv.num_envs)]
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.cut_episodes = 0
        self.restart_causes: list[str] = []
        self._episode = np.zeros(venv.num_envs, np.int64)
        self._step = np.zeros(venv.num_envs, np.int64)
        self._return = np.zeros(venv.num_envs, np.float64)
        self._last_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self.record_seconds = 0.0

    def reset(self) -> Any:
        obs = self.venv.reset()
        self._last_obs = np.array(obs, copy=True)
        self._step[:] = 0
        self._return[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def _recorded_actions(self) -> np.ndarray:
        assert self._actions is not None
        return env_actions(self.venv.action_space, self._actions)

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        start = time.perf_counter()
        actions = self._recorded_actions()
        last = self._last_obs
        assert last is not None
        for i in range(self.num_envs):
            truncated = bool(dones[i] and infos[i].get("TimeLimit.truncated", False))
            terminated = bool(dones[i]) and not truncated
            cause = infos[i].get("worker_restarted") if dones[i] else None
            restarted = cause is not None
            if self.writers is not None:
                buf = self.buffers[i]
                buf.obs.append(last[i])
                buf.action.append(actions[i])
                buf.reward.append(float(rewards[i]))
                buf.terminated.append(terminated)
                buf.truncated.append(truncated)
                buf.episode.append(int(self._episode[i]))
                buf.step.append(int(self._step[i]))
                buf.restarted.append(restarted)
                if len(buf) >= FLUSH_ROWS:
                    buf.flush(self.writers[i])
            self._return[i] += float(rewards[i])
            self._step[i] += 1
            if restarted:
                self.cut_episodes += 1
                if str(cause) not in self.restart_causes:
                    self.restart_causes.append(str(cause))
            elif dones[i]:
                self.episode_returns.append(float(self._return[i]))
                self.episode_lengths.append(int(self._step[i]))
            if dones[i]:
                self._return[i] = 0.0
                self._step[i] = 0
                self._episode[i] += 1
        self._last_obs = np.array(obs, copy=True)
        self.record_seconds += time.perf_counter() - start
        return obs, rewards, dones, infos

    def finish(self) -> list[Path]:
        """Flush and close every shard part (atomic renames); returns their paths."""
        if self.writers is None:
            return []
        start = time.perf_counter()
        paths = []
        for buf, writer in zip(self.buffers, self.writers, strict=True):
            buf.flush(writer)
            paths.append(writer.close())
        self.record_seconds += time.perf_counter() - start
        return paths

    def abort(self) -> None:
        """Drop the partial shards (a failed attempt leaves nothing behind)."""
        for writer in self.writers or []:
            writer.abort()


def relabel(model: BaseAlgorithm, shard: Path, batch: int = 4096) -> int:
    """Write the final policy's deterministic action for every recorded observation.

    `model.predict` applies the same preprocessing the policy trained with (image transposes,
    normalization of its own observation space). Returns the number of rows relabeled.
    """
    reader = ShardReader(shard)
    n = reader.num_rows
    parts = []
    for start in range(0, n, batch):
        obs = reader.rows(start, min(n, start + batch))["obs"]
        action, _ = model.predict(obs, deterministic=True)
        parts.append(env_actions(model.action_space, np.asarray(action)))
    if not parts:
        return 0
    ref = np.concatenate(parts)
    del reader
    write_ref_actions(shard, ref)
    return n
