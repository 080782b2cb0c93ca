"""The worker's own logic: wire format, flattening, and the legacy-gym adapters."""

import socket
import sys
import types

import gymnasium as gym
import numpy as np
import pytest

from ldm_envs.worker import Channel, EnvGroup, Flattener


def test_messages_round_trip_without_pickle():
    a, b = socket.socketpair()
    arrays = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([True, False]),
        np.zeros((0, 2), np.int64),
        np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8),  # > 64 KiB
        np.array(3.5),
    ]
    sender, receiver = Channel(a), Channel(b, spin=0.0001)
    receiver.buf = bytearray(64)  # tiny: forces compaction and growth mid-message
    sender.send({"cmd": "step", "x": [1, None]}, arrays)
    header, got = receiver.recv(timeout=5)
    assert header == {"cmd": "step", "x": [1, None]}
    for want, have in zip(arrays, got, strict=True):
        assert have.dtype == want.dtype and have.shape == want.shape
        np.testing.assert_array_equal(have, want)
        assert have.flags.writeable or have.size == 0
    with pytest.raises(TimeoutError):
        receiver.recv(timeout=0.05)
    a.close()
    with pytest.raises(ConnectionError):
        receiver.recv(timeout=1)


def test_dict_and_tuple_observations_are_flattened():
    space = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-1, 1, (2,)),
            "mode": gym.spaces.Discrete(3, start=1),
            "flags": gym.spaces.MultiBinary(2),
            "inner": gym.spaces.Tuple((gym.spaces.Box(0, 5, (1,)), gym.spaces.MultiDiscrete([4]))),
        }
    )
    flat = Flattener(space)
    desc = flat.describe()
    assert desc["type"] == "box" and desc["shape"] == [7] and desc["dtype"] == "float32"
    obs = {
        "pos": np.array([0.5, -0.5]),
        "mode": 2,
        "flags": np.array([1, 0]),
        "inner": (np.array([4.0]), np.array([3])),
    }
    out = flat(obs)
    # gymnasium orders Dict keys alphabetically: flags, inner, mode, pos
    np.testing.assert_array_equal(out, [1, 0, 4, 3, 2, 0.5, -0.5])
    assert np.all(out >= flat.low) and np.all(out <= flat.high)


def test_image_inside_dict_asks_for_a_wrapper():
    space = gym.spaces.Dict(
        {"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8), "direction": gym.spaces.Discrete(4)}
    )
    with pytest.raises(ValueError, match=r"observation\['image'\] is an image.*ImgObsWrapper"):
        Flattener(space)


class _LegacyEnv:
    """Speaks gym 0.21: seed(), reset() -> obs, step() -> (obs, reward, done, info)."""

    def __init__(self, horizon=3):
        self.observation_space = gym.spaces.Box(-10, 10, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.horizon, self.t, self.seeded = horizon, 0, None

    def seed(self, seed):
        self.seeded = seed

    def reset(self):
        self.t = 0
        return np.array([float(self.seeded or 0)], np.float32)

    def step(self, action):
        self.t += 1
        done = self.t >= self.horizon
        info = {"TimeLimit.truncated": True} if done and action == 1 else {}
        return np.array([self.t], np.float32), 1.0, done, info

    def close(self):
        pass


@pytest.fixture
def legacy_gym(monkeypatch):
    module = types.ModuleType("gym")
    module.make = lambda gym_id, **kw: _LegacyEnv(**kw)
    monkeypatch.setitem(sys.modules, "gym", module)
    return module


def make_request(n=2, api="gym21", limit=None):
    env = {
        "id": "Legacy-v0",
        "gym_id": "Legacy-v0",
        "kwargs": {},
        "max_episode_steps": limit,
        "wrappers": [],
    }
    return {"cmd": "make", "api": api, "imports": [], "envs": [env] * n}


def test_gym21_done_becomes_terminated_or_truncated(legacy_gym):
    group = EnvGroup()
    reply, _ = group.handle(make_request(), [])
    assert reply["spaces"][0]["action"] == {"type": "discrete", "n": 2, "start": 0}
    _, (obs,) = group.handle({"cmd": "reset", "seeds": [7, 8]}, [])
    np.testing.assert_array_equal(obs[:, 0], [7, 8])  # env.seed() was called before reset()
    for _ in range(2):
        group.handle({"cmd": "step"}, [np.array([0, 1])])
    reply, out = group.handle({"cmd": "step"}, [np.array([0, 1])])
    obs, status, final0, _final1 = out  # status rows: reward, terminated, truncated
    assert status[0].tolist() == [1.0, 1.0]
    assert status[1].tolist() == [1, 0]  # terminated: done without TimeLimit.truncated
    assert status[2].tolist() == [0, 1]  # truncated: done with TimeLimit.truncated
    assert reply["done"] == [0, 1]
    assert reply["final_infos"]["0"]["episode"] == {"r": 3.0, "l": 3}
    np.testing.assert_array_equal(final0, [3.0])
    np.testing.assert_array_equal(obs[:, 0], [7, 8])  # auto-reset in the same step


def test_episode_limit_is_enforced_by_the_worker(legacy_gym):
    group = EnvGroup()
    group.handle(make_request(n=1, limit=2), [])
    group.handle({"cmd": "reset"}, [])
    group.handle({"cmd": "step"}, [np.array([0])])
    _, out = group.handle({"cmd": "step"}, [np.array([0])])
    assert out[1][2].tolist() == [1] and out[1][1].tolist() == [0]


_GYM26_NAMES = ("TimeLimit", "OrderEnforcing", "PassiveEnvChecker")


class _Gym26Wrapper:
    """Stands for one of the wrappers gym 0.26's make() adds: it unpacks the 0.26 step."""

    def __init__(self, env, max_episode_steps=None):
        self.env, self._max_episode_steps = env, max_episode_steps
        self.observation_space, self.action_space = env.observation_space, env.action_space

    def reset(self, **kwargs):
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, info

    def close(self):
        self.env.close()


@pytest.fixture
def gym26_with_legacy_env(monkeypatch):
    """gym 0.26 whose make() wraps a library env that still speaks 0.21 (nes-py 8)."""
    wrappers = {n: type(n, (_Gym26Wrapper,), {}) for n in _GYM26_NAMES}

    def make(gym_id, **kw):
        env = wrappers["PassiveEnvChecker"](_LegacyEnv(horizon=50, **kw))
        return wrappers["TimeLimit"](wrappers["OrderEnforcing"](env), max_episode_steps=4)

    module = types.ModuleType("gym")
    module.__version__ = "0.26.2"
    module.make = make
    monkeypatch.setitem(sys.modules, "gym", module)
    return module


def test_gym21_library_under_gym26_loses_the_new_api_wrappers(gym26_with_legacy_env):
    """Its 4-value steps adapt as for gym 0.21; the registered limit (4) still truncates."""
    group = EnvGroup()
    group.handle(make_request(n=1), [])
    _, (obs,) = group.handle({"cmd": "reset", "seeds": [5]}, [])
    assert obs[0, 0] == 5  # seeded through env.seed(), under the peeled wrappers
    for _ in range(3):
        _, out = group.handle({"cmd": "step"}, [np.array([0])])
        assert out[1][1:].tolist() == [[0], [0]]
    reply, out = group.handle({"cmd": "step"}, [np.array([0])])
    assert out[1][2].tolist() == [1] and out[1][1].tolist() == [0]
    assert reply["final_infos"]["0"]["episode"] == {"r": 4.0, "l": 4}
