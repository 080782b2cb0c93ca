"""The protocol on the toy library (in-process envs): episodes, contexts, seeds, failures."""

import os
import signal

import numpy as np
import pytest

from ldm_envs.backends import get_backend
from ldm_envs.backends.inprocess import InProcessBackend
from ldm_envs.errors import WorkerCrashedError
from ldm_envs.protocol import SocketWorkerClient
from ldm_envs.shared_steps import SharedSteps
from ldm_eval.policies import RandomPolicy, RandomPolicyFactory
from ldm_eval.protocol import EnvTarget, EvalConfig, run_protocol

SHORT = EnvTarget(library="toy", env_id="ShortCartPole-v1")  # 10-step episodes
CARTPOLE = EnvTarget(library="toy", env_id="CartPole-v1")
PENDULUM = EnvTarget(library="toy", env_id="Pendulum-v1")
FAST = {"backend": "inprocess", "retries": 1}


class SpyFactory:
    """Random actions; records every policy built, its reset calls and its steps."""

    def __init__(self):
        self.policies = []

    def __call__(self, slots):
        policy = SpyPolicy(slots)
        self.policies.append(policy)
        return policy


class SpyPolicy:
    """A `Policy` (structurally) that acts at random and logs its calls."""

    def __init__(self, slots):
        self.slots = list(slots)
        self.inner = RandomPolicy([s.action_space for s in slots], [0] * len(slots))
        self.events = []  # ("reset", envs) / ("act", done array)

    def reset(self, envs=None):
        self.events.append(("reset", envs))
        self.inner.reset(envs)

    def act(self, obs, reward=None, done=None):
        self.events.append(("act", np.asarray(done).copy()))
        return self.inner.act(obs, reward, done)


def test_each_env_gets_two_rollouts_of_ten_complete_episodes():
    results = run_protocol(
        [SHORT, PENDULUM], {"random": RandomPolicyFactory(0)}, EvalConfig(**FAST)
    )
    assert sorted((r.env_id, r.rollout) for r in results) == [
        ("Pendulum-v1", 0),
        ("Pendulum-v1", 1),
        ("ShortCartPole-v1", 0),
        ("ShortCartPole-v1", 1),
    ]
    for r in results:
        assert r.status == "ok" and r.attempt == 1 and r.cause is None
        assert len(r.returns) == len(r.lengths) == len(r.terminated) == 10
        assert r.seed == r.rollout  # default seeds: 0, 1
    pend = [r for r in results if r.env_id == "Pendulum-v1"]
    assert all(length == 200 for r in pend for length in r.lengths)  # truncated at its limit
    assert all(-2000 < x < 0 for r in pend for x in r.returns)
    short = [r for r in results if r.env_id == "ShortCartPole-v1"]
    assert all(r.returns == [float(n) for n in r.lengths] for r in short)  # reward 1 per step
    assert all(r.steps == sum(r.lengths) for r in results)


def test_context_is_reset_once_per_rollout_and_kept_across_episodes():
    spy = SpyFactory()
    run_protocol([SHORT, CARTPOLE], {"spy": spy}, EvalConfig(**FAST, episodes=3))
    (policy,) = spy.policies
    # one slot per rollout: each rollout starts from its own empty context
    assert sorted((s.env_id, s.rollout) for s in policy.slots) == [
        ("CartPole-v1", 0),
        ("CartPole-v1", 1),
        ("ShortCartPole-v1", 0),
        ("ShortCartPole-v1", 1),
    ]
    assert policy.events[0] == ("reset", None)  # before the first step
    resets = [e for e in policy.events if e[0] == "reset"]
    assert len(resets) == 1  # never at an episode's end
    dones = np.stack([d for kind, d in policy.events if kind == "act"])
    assert not dones[0].any()
    short = [i for i, s in enumerate(policy.slots) if s.env_id == "ShortCartPole-v1"]
    assert dones[:, short].sum(axis=0).min() >= 3  # the policy saw the episode boundaries


def test_two_policies_meet_the_same_env_seeds():
    spy_a, spy_b = SpyFactory(), SpyFactory()
    results = run_protocol(
        [CARTPOLE],
        {"a": spy_a, "b": spy_b},
        EvalConfig(**FAST, episodes=2, seeds=[11, 12]),
    )
    assert {(r.policy, r.rollout, r.seed) for r in results} == {
        ("a", 0, 11),
        ("a", 1, 12),
        ("b", 0, 11),
        ("b", 1, 12),
    }
    # same seeds and same (seeded) random actions: identical returns
    by = {(r.policy, r.rollout): r.returns for r in results}
    assert by[("a", 0)] == by[("b", 0)] and by[("a", 1)] == by[("b", 1)]
    assert len(spy_a.policies) == len(spy_b.policies) == 1


def test_results_do_not_depend_on_batching():
    config = EvalConfig(**FAST, episodes=2)
    together = run_protocol([CARTPOLE, SHORT], {"r": RandomPolicyFactory(5)}, config)
    alone = run_protocol(
        [CARTPOLE, SHORT],
        {"r": RandomPolicyFactory(5)},
        config.model_copy(update={"batch_size": 1}),
    )
    assert {r.key: r.returns for r in together} == {r.key: r.returns for r in alone}


class CrashingBackend(InProcessBackend):
    """Workers hosting `env_id` die at their `after`-th step (a real SIGKILL for process
    workers, a crash error for in-process ones); every fresh worker does it again."""

    def __init__(self, env_id, after=5, inner=None):
        super().__init__()
        self.env_id, self.after, self.inner = env_id, after, inner
        self.spawned = 0

    def prepare(self, spec, *, rebuild=False):
        return self.inner.prepare(spec) if self.inner else super().prepare(spec)

    def spawn(self, spec):
        client = self.inner.spawn(spec) if self.inner else super().spawn(spec)
        self.spawned += 1
        send, recv, steps = client.send, client.recv, [0]

        def step_sent():
            if self.env_id in client.env_ids:
                steps[0] += 1
                if steps[0] == self.after and isinstance(client, SocketWorkerClient):
                    os.kill(client.hello["pid"], signal.SIGKILL)

        def crashing_send(header, arrays=()):
            if header.get("cmd") == "step":
                step_sent()
            send(header, arrays)

        client.step_sent = step_sent  # steps through shared memory bypass `send`: see below

        def crashing_recv(timeout):
            if (
                steps[0] >= self.after
                and self.env_id in client.env_ids
                and not isinstance(client, SocketWorkerClient)
            ):
                raise WorkerCrashedError(client.library, client.env_ids, "killed by the test")
            return recv(timeout)

        client.send, client.recv = crashing_send, crashing_recv
        return client


def check_crash_is_retried_then_failed(backend):
    seen = []
    config = EvalConfig(backend="inprocess", episodes=3, retries=1, num_workers=2)
    results = run_protocol(
        [SHORT, CARTPOLE],
        {"random": RandomPolicyFactory(0)},
        config,
        backend=backend,
        on_result=seen.append,
    )
    assert [r.key for r in seen] == [r.key for r in results]  # reported as they finish
    crashed = [r for r in results if r.env_id == "CartPole-v1"]
    assert sorted((r.rollout, r.attempt) for r in crashed) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for r in crashed:
        assert r.status == "failed" and r.returns == []
        assert "worker restarted" in r.cause or "worker failed" in r.cause
    fine = [r for r in results if r.env_id == "ShortCartPole-v1"]
    assert [r.status for r in fine] == ["ok", "ok"]  # the other worker was not disturbed
    assert all(len(r.returns) == 3 for r in fine)
    assert backend.spawned >= 4  # fresh workers for the retries


def test_a_worker_that_dies_is_retried_then_reported_failed():
    check_crash_is_retried_then_failed(CrashingBackend("CartPole-v1", after=5))


@pytest.mark.slow
def test_a_killed_venv_worker_is_retried_then_reported_failed(monkeypatch):
    shared_send = SharedSteps.send

    def counted_send(self, actions):
        self.client.step_sent()
        shared_send(self, actions)

    monkeypatch.setattr(SharedSteps, "send", counted_send)
    check_crash_is_retried_then_failed(
        CrashingBackend("CartPole-v1", after=5, inner=get_backend("venv"))
    )


def test_unmakeable_env_fails_alone():
    results = run_protocol(
        [SHORT, EnvTarget(library="toy", env_id="Unmakeable-v0")],
        {"random": RandomPolicyFactory(0)},
        EvalConfig(**FAST, episodes=1),
    )
    bad = [r for r in results if r.env_id == "Unmakeable-v0"]
    assert len(bad) == 4 and all(r.status == "failed" for r in bad)  # 2 rollouts x 2 attempts
    assert "no_such_argument" in bad[0].cause
    assert all(r.status == "ok" for r in results if r.env_id == "ShortCartPole-v1")


def test_endless_episodes_end_as_timeout_without_retry():
    results = run_protocol(
        [CARTPOLE],
        {"random": RandomPolicyFactory(0)},
        EvalConfig(**FAST, episodes=2, max_episode_steps=3, rollouts=1),
    )
    (r,) = results
    assert r.status == "timeout" and "max_episode_steps=3" in r.cause


def test_skip_and_previous_attempts_resume_a_protocol():
    results = run_protocol(
        [SHORT],
        {"random": RandomPolicyFactory(0)},
        EvalConfig(**FAST, episodes=1),
        skip={("random", "toy", "ShortCartPole-v1", 0)},
        previous_attempts={("random", "toy", "ShortCartPole-v1", 1): 2},
    )
    assert [(r.rollout, r.attempt) for r in results] == [(1, 3)]


def test_config_validation():
    with pytest.raises(ValueError, match="3 seeds for 2 rollouts"):
        EvalConfig(seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="unknown backend"):
        EvalConfig(backend="nope")
    assert EvalConfig().rollout_seeds() == [0, 1]
    assert (EvalConfig().episodes, EvalConfig().rollouts) == (10, 2)


@pytest.mark.slow
def test_envs_with_actions_of_different_sizes_evaluate_side_by_side():
    """LunarLander (one discrete action) and LunarLanderContinuous (two numbers) share a
    library but not a worker's action array: each gets its own pool."""
    targets = [
        EnvTarget(library="box2d", env_id="LunarLander-v3"),
        EnvTarget(library="box2d", env_id="LunarLanderContinuous-v3"),
    ]
    results = run_protocol(
        targets,
        {"random": RandomPolicyFactory(0)},
        EvalConfig(backend="venv", episodes=1, rollouts=1, retries=0, num_workers=1),
    )
    assert sorted(r.env_id for r in results) == ["LunarLander-v3", "LunarLanderContinuous-v3"]
    assert all(r.status == "ok" and len(r.returns) == 1 for r in results), results
