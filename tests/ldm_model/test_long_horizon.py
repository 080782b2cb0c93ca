"""LDMPolicy past its context: the `exact` and `chunked` cache modes against from-scratch forwards.

Each test steps policies of the 2-layer `tiny` architecture (the ring's cache is exact for one
layer only) on random inputs, records the `T = 1` batch the policy fed its model at every step,
and replays windows of those batches through `LDM.forward` from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from ldm_envs.spaces import BoxSpace, DiscreteSpace
from ldm_model.batch import Batch
from ldm_model.config import get_config
from ldm_model.model import LDM
from ldm_model.policy import LDMPolicy
from ldm_model.tokenizer import SpaceCodec

VEC_DISCRETE = SpaceCodec(BoxSpace(shape=(4,), low=-math.inf, high=math.inf), DiscreteSpace(n=2))
VEC_BOX = SpaceCodec(
    BoxSpace(shape=(3,), low=-math.inf, high=math.inf),
    BoxSpace(shape=(2,), low=-0.5, high=0.5),
)
CODECS = [VEC_DISCRETE, VEC_BOX, VEC_DISCRETE]
CONTEXT = 8
#: per-step fields of a `Batch` (time on dim 1); the rest are per-env tables
STEP_FIELDS = ("obs", "prev_action", "prev_reward", "prev_done", "prev_valid")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> LDM:
    torch.manual_seed(0)
    return LDM(get_config("tiny")).eval()  # 2 layers: the ring is not exact past the context


class Recorder:
    """Steps a policy on seeded random inputs; keeps its step batches, logits and actions."""

    def __init__(self, policy: LDMPolicy, seed: int = 1) -> None:
        self.policy = policy
        self.rng = np.random.default_rng(seed)
        self.batches: list[Batch] = []
        self.logits: list[torch.Tensor] = []
        self.actions: list[np.ndarray] = []
        self.window_lengths: list[np.ndarray] = []
        make = policy._batch

        def record(*args: object) -> Batch:
            batch = make(*args)  # type: ignore[arg-type]
            # a copy: `prev_action` shares memory with the policy's array, updated in place
            self.batches.append(replace(batch, prev_action=batch.prev_action.clone()))
            return batch

        policy._batch = record  # type: ignore[method-assign]

    def step(self, done_p: float = 0.1) -> None:
        n = self.policy.num_envs
        obs = [self.rng.normal(size=c.observation_space.shape).astype(np.float32) for c in CODECS]
        reward = self.rng.normal(size=n).astype(np.float32) * 3
        done = self.rng.random(n) < done_p
        self.window_lengths.append(self.policy.context_lengths + 1)
        actions = self.policy.act(obs, reward, done)
        assert self.policy.last_logits is not None
        self.logits.append(self.policy.last_logits.clone())
        self.actions.append(np.concatenate([np.ravel(a) for a in actions]))

    def forward(self, model: LDM, env: int, start: int, stop: int) -> torch.Tensor:
        """From scratch: env `env`'s logits at step `stop - 1` given steps [start, stop) only."""
        steps = self.batches[start:stop]
        first = steps[0]
        values = {}
        for f in fields(Batch):
            value = getattr(first, f.name)
            if f.name in STEP_FIELDS:
                value = torch.cat([getattr(b, f.name) for b in steps], dim=1)
            values[f.name] = value[env : env + 1] if isinstance(value, torch.Tensor) else value
        with torch.no_grad():
            logits = model(replace(first, **values)).logits
        return logits[0, -1, : self.policy.act_dims]


def run(model: LDM, steps: int, resets: dict[int, list[int]] | None = None, **kwargs) -> Recorder:
    policy = LDMPolicy(model, CODECS, len(CODECS), context=CONTEXT, **kwargs)
    rec = Recorder(policy)
    for t in range(steps):
        if resets and t in resets:
            policy.reset(resets[t])
        rec.step()
    return rec


@pytest.mark.parametrize("mode", ["exact", "chunked"])
def test_modes_equal_the_ring_within_the_context(model: LDM, mode: str) -> None:
    """Until a transition slides out, every mode runs the ring's computation, bit for bit."""
    ring = run(model, CONTEXT)
    other = run(model, CONTEXT, cache=mode)
    for a, b in zip(ring.logits, other.logits, strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(np.stack(ring.actions), np.stack(other.actions))


def test_exact_equals_a_forward_over_the_last_context_transitions(model: LDM) -> None:
    """Past the context, every step of `exact` is a from-scratch forward over the last
    `context` transitions (positions from 0, as in training); the ring's is not."""
    steps = 4 * CONTEXT + 3
    exact = run(model, steps, cache="exact")
    ring = run(model, steps)
    ring_gap = 0.0
    for t in range(CONTEXT - 1, steps):
        for env in range(len(CODECS)):
            window = exact.forward(model, env, t - CONTEXT + 1, t + 1)
            torch.testing.assert_close(exact.logits[t][env], window, atol=1e-4, rtol=1e-4)
            ring_gap = max(ring_gap, float((ring.logits[t][env] - window).abs().max()))
    assert ring_gap > 1e-3  # the test would catch a ring posing as exact


def test_exact_after_a_reset_starts_the_window_at_the_reset(model: LDM) -> None:
    """An env reset past the context sees only its transitions since the reset; the others keep
    their full windows."""
    reset_at = 2 * CONTEXT + 3
    exact = run(model, reset_at + CONTEXT + 4, resets={reset_at: [1]}, cache="exact")
    for t in (reset_at, reset_at + 2, reset_at + CONTEXT - 1, reset_at + CONTEXT + 3):
        start = max(reset_at, t - CONTEXT + 1)
        window = exact.forward(model, 1, start, t + 1)
        torch.testing.assert_close(exact.logits[t][1], window, atol=1e-4, rtol=1e-4)
        for env in (0, 2):
            window = exact.forward(model, env, t - CONTEXT + 1, t + 1)
            torch.testing.assert_close(exact.logits[t][env], window, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("refresh", [1, 3, CONTEXT // 2, CONTEXT])
def test_chunked_steps_are_exact_windows_of_refreshing_length(model: LDM, refresh: int) -> None:
    """`chunked` refills every `refresh` steps: each step is a from-scratch forward over its last
    L transitions, context - refresh < L <= context, L sweeping that range."""
    steps = 3 * CONTEXT + 5
    rec = run(model, steps, resets={CONTEXT + 5: [2]}, cache="chunked", refresh=refresh)
    lengths = np.stack(rec.window_lengths)  # (steps, envs)
    past = lengths[CONTEXT:, 0]
    assert past.min() == CONTEXT - refresh + 1 and past.max() == CONTEXT
    for t in range(steps):
        for env in range(len(CODECS)):
            window = rec.forward(model, env, t - int(lengths[t, env]) + 1, t + 1)
            torch.testing.assert_close(rec.logits[t][env], window, atol=1e-4, rtol=1e-4)


def test_cache_mode_arguments_are_checked(model: LDM) -> None:
    with pytest.raises(ValueError, match="unknown cache mode"):
        LDMPolicy(model, VEC_BOX, 1, cache="sliding")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="refresh is a setting of cache='chunked'"):
        LDMPolicy(model, VEC_BOX, 1, cache="ring", refresh=2)
    with pytest.raises(ValueError, match="refresh must be in"):
        LDMPolicy(model, VEC_BOX, 1, context=4, cache="chunked", refresh=5)
    assert LDMPolicy(model, VEC_BOX, 1, context=64, cache="chunked").refresh == 16
