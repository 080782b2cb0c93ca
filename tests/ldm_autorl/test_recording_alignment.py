"""A recorded shard lines up with what the env returned, row by row.

A reference run (`jobs.train_run`, recording on, the `inprocess` backend so the envs live in this
process) trains A2C (8 sub-envs, one shard part each) on a counter env whose observation says
where it is, `[t, reset number, episode length, env uid]`, and whose reward is a known function
of the observation and the action. Every env also logs what its `reset`/`step` returned, so a
part can be checked against its env's log exactly, and against the env's rules from the shard
alone: `obs[t]` is what the env returned before `action[t]`, `reward[t]` that of `action[t]` in
`obs[t]`, the terminated/truncated flags sit on the last row of their episode, episode and step
numbers count right, and the row after an episode's end holds the next episode's reset
observation, never the terminal one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest

from ldm_autorl import jobs
from ldm_envs import tracking
from ldm_envs.dataset.shards import ShardReader
from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.plugins import LoadedLibrary, registry

GYM_ID = "LdmCounter-v0"
LIBRARY = "counter-test"
#: TimeLimit (the manifest's max_episode_steps) truncates longer episodes at this length
MAX_STEPS = 5
#: episode lengths the env terminates at, by reset number and env: 3 and 4 terminate, 6 and 7
#: are truncated at MAX_STEPS
LENGTHS = (3, 4, 6, 7)
BUDGET = 200  # 8 envs x 25 steps: several episodes each, both endings


def reward_of(obs: np.ndarray, action: int) -> float:
    """The counter env's reward for `action` in `obs`: any misalignment by a row shows."""
    return 10.0 * float(obs[0]) + float(action) + 0.25 * float(obs[1])


class CounterEnv(gym.Env):
    """Counts steps; terminates at a length set per episode; logs every reset and step."""

    instances: ClassVar[list[CounterEnv]] = []
    _uids = itertools.count(1)

    observation_space = gym.spaces.Box(0.0, 1e6, shape=(4,), dtype=np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self) -> None:
        self.uid = next(self._uids)
        self.resets = 0
        self.t = 0
        self.length = 0
        self.obs: np.ndarray | None = None
        #: (obs before the step, action, reward, terminated) of every step
        self.log: list[tuple[np.ndarray, int, float, bool]] = []
        CounterEnv.instances.append(self)

    def _observe(self) -> np.ndarray:
        self.obs = np.array([self.t, self.resets, self.length, self.uid], np.float32)
        return self.obs.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.resets += 1
        self.t = 0
        self.length = LENGTHS[(self.resets + self.uid) % len(LENGTHS)]
        return self._observe(), {}

    def step(self, action: Any):
        assert self.obs is not None
        before, action = self.obs.copy(), int(action)
        reward = reward_of(before, action)
        self.t += 1
        terminated = self.t == self.length
        self.log.append((before, action, reward, terminated))
        return self._observe(), reward, terminated, False, {}


@pytest.fixture
def counter_library(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[str]:
    """The counter env as an env library of the process-wide registry, MLflow in `tmp_path`."""
    if GYM_ID not in gym.registry:
        gym.register(GYM_ID, entry_point=CounterEnv)
    box = {"type": "box", "shape": [4], "dtype": "float32", "low": 0.0, "high": 1e6}
    spec = EnvLibrarySpec.model_validate(
        {
            "name": LIBRARY,
            "version": "0.1.0",
            "environment": {"requirements": ["gymnasium==1.2.2"]},
            "envs": [
                {
                    "id": "Counter-v0",
                    "gym_id": GYM_ID,
                    "max_episode_steps": MAX_STEPS,
                    "observation_space": box,
                    "action_space": {"type": "discrete", "n": 3},
                }
            ],
        }
    )
    monkeypatch.setitem(registry().libraries, LIBRARY, LoadedLibrary(spec=spec, plugin=LIBRARY))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LDM_HOME", str(tmp_path / "home"))
    tracking.setup()
    CounterEnv.instances.clear()
    yield LIBRARY
    CounterEnv.instances.clear()


def test_recorded_rows_line_up_with_what_the_env_returned(counter_library: str, tmp_path) -> None:
    root = tmp_path / "autorl"
    result = jobs.RunResult.model_validate(
        jobs.train_run(
            stage="reference",
            library=counter_library,
            env_id="Counter-v0",
            candidate="a2c-default",
            seed=0,
            budget=BUDGET,
            root=str(root),
            record=True,
            backend="inprocess",
        )
    )
    assert len(result.shards) == 8
    envs = {env.uid: env for env in CounterEnv.instances}
    seen_uids, total_rows, episode_lengths = set(), 0, []
    endings = {"terminated": 0, "truncated": 0}
    for shard in result.shards:
        with ShardReader(root / shard) as reader:
            obs = np.asarray(reader.column("obs"))
            action = np.asarray(reader.column("action")).reshape(-1)
            reward = np.asarray(reader.column("reward"))
            terminated = np.asarray(reader.column("terminated"))
            truncated = np.asarray(reader.column("truncated"))
            episode = np.asarray(reader.column("episode"))
            step = np.asarray(reader.column("step"))
        n = len(reward)
        total_rows += n
        # one part per sub-env: all its rows come from one env, in the order it stepped
        (uid,) = set(obs[:, 3].astype(int).tolist())
        assert uid not in seen_uids
        seen_uids.add(uid)
        log = envs[uid].log
        assert n == len(log) > 0
        np.testing.assert_array_equal(obs, np.stack([entry[0] for entry in log]))
        assert action.tolist() == [entry[1] for entry in log]
        np.testing.assert_array_equal(reward, np.array([e[2] for e in log], np.float32))
        assert terminated.tolist() == [entry[3] for entry in log]

        # the same, from the shard alone, by the env's rules
        t, resets, length = obs[:, 0], obs[:, 1], obs[:, 2]
        expected_reward = [reward_of(o, a) for o, a in zip(obs, action, strict=True)]
        np.testing.assert_array_equal(reward, np.array(expected_reward, np.float32))
        assert np.array_equal(terminated, (t + 1 == length) & (length <= MAX_STEPS))
        assert np.array_equal(truncated, (t + 1 == MAX_STEPS) & (length > MAX_STEPS))
        assert not np.any(terminated & truncated)
        done = terminated | truncated
        assert step.tolist() == t.astype(int).tolist()
        assert episode[0] == 0 and t[0] == 0
        assert np.array_equal(np.diff(episode), done[:-1].astype(int))
        # within an episode the counter advances; after its end comes the reset observation
        # of the next episode (t = 0, one more reset), not the terminal one (t = its length)
        after_end = np.flatnonzero(done[:-1]) + 1
        assert np.all(t[after_end] == 0)
        assert np.all(resets[after_end] == resets[after_end - 1] + 1)
        inside = np.flatnonzero(~done[:-1]) + 1
        assert np.all(t[inside] == t[inside - 1] + 1) and np.all(
            resets[inside] == resets[inside - 1]
        )
        endings["terminated"] += int(terminated.sum())
        endings["truncated"] += int(truncated.sum())
        ends = np.flatnonzero(done)
        episode_lengths += (t[ends] + 1).astype(int).tolist()
    assert total_rows == BUDGET
    assert endings["terminated"] > 0 and endings["truncated"] > 0
    assert sorted(result.episode_lengths) == sorted(episode_lengths)
