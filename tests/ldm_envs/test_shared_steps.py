"""Steps through shared memory: the same results as the socket, and the same failures reported."""

import os
import signal
import time

import numpy as np
import pytest

from ldm_envs.errors import EnvRaisedError, WorkerCrashedError
from ldm_envs.pool import EnvPool
from ldm_envs.worker import SpinGate

pytestmark = pytest.mark.slow


def rollout(toy, env_id, actions, **options):
    """Every step's result, from a pool seeded with 3 (infos kept where an episode ended)."""
    with EnvPool(toy, env_id, num_envs=actions.shape[1], **options) as pool:
        transport = pool.transport
        obs, _ = pool.reset(seed=3)
        steps = [pool.step(a) for a in actions]
    return transport, obs, steps


def assert_same_steps(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.rewards, y.rewards)
        np.testing.assert_array_equal(x.terminated, y.terminated)
        np.testing.assert_array_equal(x.truncated, y.truncated)
        for i, (ix, iy) in enumerate(zip(x.infos, y.infos, strict=True)):
            assert ix.keys() == iy.keys(), i
            if "final_obs" in ix:
                np.testing.assert_array_equal(ix["final_obs"], iy["final_obs"])
                assert ix["final_info"] == iy["final_info"]


def test_shared_memory_steps_equal_socket_steps(toy):
    # ShortCartPole ends every 10 steps at the latest: episode ends travel on the socket
    actions = np.random.default_rng(0).integers(0, 2, size=(60, 3))
    kind, obs_shared, shared = rollout(toy, "ShortCartPole-v1", actions)
    kind_socket, obs_socket, socket = rollout(toy, "ShortCartPole-v1", actions, shared_memory=False)
    assert (kind, kind_socket) == ("shared-memory", "socket")
    np.testing.assert_array_equal(obs_shared, obs_socket)
    assert_same_steps(shared, socket)
    ends = sum(int(np.sum(s.terminated | s.truncated)) for s in shared)
    assert ends >= 18
    assert all(s.obs.flags.owndata for s in shared)  # copies, not views of the region


def test_box_actions_through_shared_memory(toy):
    actions = np.random.default_rng(1).uniform(-2, 2, size=(30, 2, 1)).astype(np.float32)
    kind, _, shared = rollout(toy, "Pendulum-v1", actions)
    _, _, socket = rollout(toy, "Pendulum-v1", actions, shared_memory=False)
    assert kind == "shared-memory"
    assert_same_steps(shared, socket)


def test_both_sides_asleep_every_step_still_answer(toy, monkeypatch):
    """No spinning on either side: every step needs the wake-up messages, in both directions."""
    monkeypatch.setenv("LDM_HOST_SPIN_US", "0")
    monkeypatch.setenv("LDM_WORKER_SHARED_SPIN_US", "0")
    actions = np.random.default_rng(2).integers(0, 2, size=(40, 2))
    kind, _, asleep = rollout(toy, "ShortCartPole-v1", actions)
    monkeypatch.delenv("LDM_HOST_SPIN_US")
    monkeypatch.delenv("LDM_WORKER_SHARED_SPIN_US")
    _, _, socket = rollout(toy, "ShortCartPole-v1", actions, shared_memory=False)
    assert kind == "shared-memory"
    assert_same_steps(asleep, socket)


def test_a_worker_gone_to_sleep_is_woken_at_once(toy, monkeypatch):
    """The host sees the sleeper's flag and sends the wake-up message.

    Checked by the message sent rather than by the step's latency: the worker's own 50 ms
    recheck would answer too, and a loaded CI machine cannot tell the two apart by the clock.
    """
    with EnvPool(toy, "CartPole-v1", num_envs=2) as pool:
        pool.reset(seed=0)
        pool.step(np.array([0, 1]))
        client = pool.workers[0].shared.client
        sent: list[dict] = []
        real_send = client.send

        def spy(message, *args, **kwargs):
            sent.append(message)
            return real_send(message, *args, **kwargs)

        monkeypatch.setattr(client, "send", spy)
        time.sleep(0.5)  # far past the worker's spin budget: it sleeps on its socket
        r = pool.step(np.array([1, 0]))
        assert {"cmd": "wake"} in sent, sent
        assert r.rewards.tolist() == [1.0, 1.0]


def test_an_env_raising_in_a_shared_step_is_named(toy):
    with EnvPool(toy, "CartPole-v1", num_envs=2, max_restarts=0) as pool:
        pool.reset(seed=0)
        w = pool.workers[0]
        assert w.shared is not None
        w.shared.send(np.array([0, 7]))  # past the host's check: CartPole asserts on it
        with pytest.raises(EnvRaisedError, match=r"env\(s\) CartPole-v1.*AssertionError"):
            w.shared.recv(5.0)


def test_a_worker_killed_during_a_shared_step_is_restarted(toy):
    with EnvPool(toy, "CartPole-v1", num_envs=2, max_restarts=1) as pool:
        pool.reset(seed=0)
        assert pool.transport == "shared-memory"
        pid = pool.workers[0].client.hello["pid"]
        os.kill(pid, signal.SIGKILL)
        r = pool.step(np.array([0, 1]))
        assert r.truncated.all() and "killed by signal 9" in r.infos[0]["worker_restarted"]
        assert pool.transport == "shared-memory"  # the fresh worker shares memory again
        assert pool.step(np.array([0, 1])).rewards.tolist() == [1.0, 1.0]
        os.kill(pool.workers[0].client.hello["pid"], signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match="signal 9"):
            pool.step(np.array([0, 1]))


def test_a_frozen_worker_times_out_and_is_restarted(toy):
    with EnvPool(toy, "CartPole-v1", num_envs=1, step_timeout=1.0, max_restarts=1) as pool:
        pool.reset(seed=0)
        os.kill(pool.workers[0].client.hello["pid"], signal.SIGSTOP)
        start = time.monotonic()
        r = pool.step(np.array([1]))
        # the 1 s step timeout plus a fresh worker's start, well below a hang (forever)
        assert time.monotonic() - start < 20
        assert r.truncated.all() and "did not answer within 1 s" in r.infos[0]["worker_restarted"]
        assert pool.step(np.array([1])).rewards.tolist() == [1.0]


def test_mixed_spaces_stay_on_the_socket(toy):
    with EnvPool(toy, ["CartPole-v1", "Pendulum-v1"]) as pool:
        assert pool.transport == "socket"


def test_spinning_stops_when_the_other_threads_fill_the_cpus(tmp_path):
    loadavg = tmp_path / "loadavg"
    gate = SpinGate(period=0.0, loadavg=str(loadavg))
    gate.cpus = 2
    loadavg.write_text("0.50 0.40 0.30 2/180 4242\n")  # this thread and one other: a CPU free
    assert gate.allows(time.perf_counter())
    loadavg.write_text("2.10 1.90 1.50 3/180 4242\n")  # two others: both CPUs busy
    assert not gate.allows(time.perf_counter())
    gate.cpus = 1
    loadavg.write_text("0.50 0.40 0.30 1/180 4242\n")
    assert not gate.allows(time.perf_counter())  # one CPU: spinning only ever delays the other
