"""LDMPolicy: cached stepping equals a full forward, sliding, per-env reset, masks, a real env."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiBinarySpace, MultiDiscreteSpace
from ldm_model.batch import Batch
from ldm_model.config import ModelConfig, get_config
from ldm_model.model import LDM
from ldm_model.policy import LDMPolicy
from ldm_model.tokenizer import SpaceCodec, bin_values

VEC_DISCRETE = SpaceCodec(BoxSpace(shape=(4,), low=-math.inf, high=math.inf), DiscreteSpace(n=2))
VEC_BOX = SpaceCodec(
    BoxSpace(shape=(3,), low=-math.inf, high=math.inf),
    BoxSpace(shape=(2,), low=-0.5, high=0.5),
)
IMAGE_MULTI = SpaceCodec(
    BoxSpace(shape=(7, 7, 3), dtype="uint8", low=0, high=255), MultiDiscreteSpace(nvec=[3, 5])
)
#: A single layer: its keys depend on each token alone, so sliding the cache must give exactly
#: what a full forward over the same window gives (with more layers, the upper layers' cached
#: keys also carry what the dropped transitions contributed; see ldm_model.policy).
ONE_LAYER = ModelConfig(
    name="one-layer",
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    context=64,
    token_dim=4,
    image_dim=16,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Single-token steps of a tiny model gain nothing from intra-op threads, and on a busy
    machine (parallel test jobs) OpenMP's spinning threads make each step 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(config: ModelConfig | None = None, seed: int = 0) -> LDM:
    torch.manual_seed(seed)
    return LDM(config or get_config("tiny")).eval()


def sample_obs(codec: SpaceCodec, rng: np.random.Generator) -> np.ndarray:
    if codec.image_shape is not None:
        return rng.integers(0, 256, size=codec.image_shape, dtype=np.uint8)
    return rng.normal(size=codec.observation_space.shape).astype(np.float32)


class Recorder:
    """Steps a policy on random inputs and keeps what a full forward needs to replay them."""

    def __init__(self, policy: LDMPolicy, seed: int = 1) -> None:
        self.policy = policy
        self.rng = np.random.default_rng(seed)
        self.obs: list[list[np.ndarray]] = []
        self.actions: list[list[np.ndarray]] = []
        self.rewards: list[np.ndarray] = []
        self.dones: list[np.ndarray] = []
        self.logits: list[torch.Tensor] = []

    def step(self, done_p: float = 0.1) -> None:
        n = self.policy.num_envs
        obs = [sample_obs(c, self.rng) for c in self.policy.codecs]
        reward = self.rng.normal(size=n).astype(np.float32) * 3
        done = self.rng.random(n) < done_p
        actions = self.policy.act(obs, reward, done)
        assert self.policy.last_logits is not None
        self.obs.append(obs)
        self.actions.append(list(actions))
        self.rewards.append(reward)
        self.dones.append(done)
        self.logits.append(self.policy.last_logits.clone())

    def batch(self, start: int = 0, stop: int | None = None) -> Batch:
        """Steps [start, stop) as one batch; the first step's previous transition is real when
        start > 0 (the policy was reset before step 0 only)."""
        stop = len(self.obs) if stop is None else stop
        codecs = self.policy.codecs
        steps = range(start, stop)
        obs = np.stack(
            [[c.flat_obs(self.obs[t][i][None])[0] for t in steps] for i, c in enumerate(codecs)]
        )
        prev_action = np.zeros((len(codecs), len(steps), 28), np.float32)
        for i, c in enumerate(codecs):
            for j, t in enumerate(steps):
                if t > 0:
                    prev_action[i, j] = c.flat_action(np.asarray(self.actions[t - 1][i])[None])[0]
        valid = np.array([t > 0 for t in steps])[None].repeat(len(codecs), 0)
        reward = np.stack([self.rewards[t] for t in steps], 1) * valid
        done = np.stack([self.dones[t] for t in steps], 1) & valid
        images = None
        if any(c.image_shape is not None for c in codecs):
            images = np.zeros((len(codecs), len(steps), 64, 64, 3), np.uint8)
            for i, c in enumerate(codecs):
                if c.image_shape is not None:
                    images[i] = c.image(np.stack([self.obs[t][i] for t in steps]))

        def table(name: str) -> torch.Tensor:
            return torch.from_numpy(np.stack([getattr(c, name) for c in codecs]))

        return Batch(
            obs=torch.from_numpy(obs),
            obs_mask=table("obs_mask"),
            obs_discrete=table("obs_discrete"),
            prev_action=torch.from_numpy(prev_action),
            prev_reward=torch.from_numpy(reward.astype(np.float32)),
            prev_done=torch.from_numpy(done),
            prev_valid=torch.from_numpy(valid),
            act_mask=table("act_mask"),
            act_discrete=table("act_discrete"),
            act_low=table("act_low"),
            act_high=table("act_high"),
            image=None if images is None else torch.from_numpy(images),
            has_image=torch.tensor([c.image_shape is not None for c in codecs]),
        )

    def stacked_logits(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return torch.stack(self.logits[start:stop], dim=1)  # (N, T, dims, bins)


# -- (a) cached steps == full forward -------------------------------------------------------------


@pytest.mark.parametrize("kv_heads", [None, 2], ids=["mha", "gqa"])
def test_cached_steps_equal_a_full_forward_over_the_sequence(kv_heads: int | None) -> None:
    model = make_model(get_config("tiny").model_copy(update={"num_kv_heads": kv_heads}))
    policy = LDMPolicy(model, [VEC_DISCRETE, VEC_DISCRETE, VEC_BOX, IMAGE_MULTI], 4)
    rec = Recorder(policy)
    for _ in range(24):  # shorter than the context (64); dones inside: the context is kept
        rec.step(done_p=0.15)
    assert np.concatenate(rec.dones[1:]).any()
    with torch.no_grad():
        full = model(rec.batch()).logits
    # the policy decodes the dims of its widest action space only (2 here)
    assert policy.act_dims == 2
    torch.testing.assert_close(rec.stacked_logits(), full[:, :, :2], atol=1e-4, rtol=1e-4)
    # the actions taken are the masked argmax of those logits (LDM.act_classes)
    classes = model.act_classes(full, rec.batch()).numpy()
    values = policy._values
    for t, actions in enumerate(rec.actions):
        assert VEC_DISCRETE.decode_action(classes[:2, t], values).tolist() == actions[:2]
        np.testing.assert_array_equal(VEC_BOX.decode_action(classes[2:3, t], values)[0], actions[2])


# -- (b) sliding context --------------------------------------------------------------------------


def test_cache_never_exceeds_the_context_and_keeps_acting() -> None:
    context = 16
    policy = LDMPolicy(make_model(), VEC_BOX, 3, context=context)
    rec = Recorder(policy)
    for step in range(3 * context):
        rec.step()
        assert policy.cache_length == min(step + 1, context)
        for layer in policy.cache.layers:
            assert layer.keys is not None and layer.keys.shape[2] <= context
        # positions stay bounded (keys are rotated back every `context` steps)
        assert int((policy._t - policy._base).max()) <= 2 * context
    assert np.all(policy.context_lengths == context - 1)
    assert all(np.all(np.abs(a) <= 0.5) for a in rec.actions[-1])
    assert torch.isfinite(rec.stacked_logits()).all()


def test_sliding_one_layer_cache_equals_a_forward_over_the_last_window() -> None:
    """Ring overwrite, masks and RoPE re-basing are exact: a 1-layer model's step logits equal a
    fresh forward over the last `context` transitions, long after the ring wrapped."""
    context = 8
    model = make_model(ONE_LAYER)
    policy = LDMPolicy(model, [VEC_DISCRETE, VEC_BOX], 2, context=context)
    rec = Recorder(policy)
    steps = 5 * context + 3  # wraps the ring 5 times, re-bases positions twice
    for _ in range(steps):
        rec.step()
    with torch.no_grad():
        for t in (context - 1, context, 2 * context + 1, 3 * context, steps - 1):
            start = max(0, t - context + 1)
            window = model(rec.batch(start, t + 1)).logits[:, -1, : policy.act_dims]
            torch.testing.assert_close(rec.logits[t], window, atol=1e-4, rtol=1e-4)


# -- (c) per-env reset ------------------------------------------------------------------------


def feed(policy: LDMPolicy, inputs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list:
    out = []
    for obs, reward, done in inputs:
        action = policy.act(obs, reward, done)
        assert policy.last_logits is not None
        out.append((action.copy(), policy.last_logits.clone()))
    return out


def test_reset_of_one_env_makes_it_act_like_a_fresh_policy() -> None:
    model = make_model()
    rng = np.random.default_rng(3)

    def inputs(n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [
            (
                rng.normal(size=(n, 4)).astype(np.float32),
                rng.normal(size=n).astype(np.float32),
                rng.random(n) < 0.1,
            )
            for _ in range(12)
        ]

    before, after = inputs(2), inputs(2)
    both = LDMPolicy(model, VEC_DISCRETE, 2)
    feed(both, before)
    both.reset(envs=[1])
    assert both.context_lengths.tolist() == [12, 0]
    stepped = feed(both, after)

    fresh = LDMPolicy(model, VEC_DISCRETE, 1)  # sees only env 1's inputs after the reset
    alone = feed(fresh, [(o[1:], r[1:], d[1:]) for o, r, d in after])
    kept = LDMPolicy(model, VEC_DISCRETE, 1)  # env 0 never reset
    unchanged = feed(kept, [(o[:1], r[:1], d[:1]) for o, r, d in before + after])[len(before) :]
    for (a, logits), (a1, logits1), (a0, logits0) in zip(stepped, alone, unchanged, strict=True):
        assert a[1] == a1[0] and a[0] == a0[0]
        torch.testing.assert_close(logits[1], logits1[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[0], logits0[0], atol=1e-5, rtol=1e-5)


def test_full_reset_empties_every_context() -> None:
    model = make_model()
    policy = LDMPolicy(model, VEC_DISCRETE, 2)
    inputs = [
        (np.full((2, 4), i, np.float32), np.ones(2, np.float32), np.zeros(2, bool))
        for i in range(5)
    ]
    first = feed(policy, inputs)
    policy.reset()
    assert policy.cache_length == 0 and policy.context_lengths.tolist() == [0, 0]
    again = feed(policy, inputs)
    for (_, x), (_, y) in zip(first, again, strict=True):
        torch.testing.assert_close(x, y)


# -- (d) action-space masks and decoding ----------------------------------------------------------


@pytest.fixture(scope="module")
def edge_model() -> LDM:
    """Untrained, with every dim's decoder biased hard toward the extreme classes, so that an
    unmasked argmax would leave every action space."""
    model = make_model(seed=1)
    with torch.no_grad():
        bias = model.decoder.bias.view(model.config.act_dims, model.config.n_bins)
        bias[:, -1] += 100.0
        bias[::2, 0] += 200.0  # even dims: the lowest bin wins, odd ones the highest
    return model


def run_policy(model: LDM, codec: SpaceCodec, n: int, steps: int = 6) -> list[np.ndarray]:
    policy = LDMPolicy(model, codec, n)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        obs = np.stack([sample_obs(codec, rng) for _ in range(n)])
        out.append(policy.act(obs, rng.normal(size=n), rng.random(n) < 0.2))
    return out


def trap_model(codec: SpaceCodec, best: Sequence[int]) -> LDM:
    """Untrained, with the decoder biased so that, per action dim, every class the action space
    forbids outscores every allowed one, and `best[d]` is the top allowed class of dim `d`.

    Only the mask can then pick `best`: an unmasked argmax lands outside the space (and a Box
    action clipped back into its bounds lands on a bound, not on `best`'s value).
    """
    model = make_model(seed=1)
    with torch.no_grad():
        bias = model.decoder.bias.view(model.config.act_dims, model.config.n_bins)
        low, high = torch.from_numpy(codec.act_low), torch.from_numpy(codec.act_high)
        bias += 200.0 * model.forbidden(low, high).float()
        for d, cls in enumerate(best):
            assert low[d] <= cls <= high[d]
            bias[d, cls] += 100.0
    return model


def test_box_actions_are_the_best_bin_inside_their_bounds() -> None:
    values = bin_values().numpy()
    best = [int(np.abs(values - 0.25).argmin()), int(np.abs(values + 0.3).argmin())]
    policy = LDMPolicy(trap_model(VEC_BOX, best), VEC_BOX, 3)
    rng = np.random.default_rng(0)
    for _ in range(6):
        action = policy.act(rng.normal(size=(3, 3)), rng.normal(size=3), rng.random(3) < 0.2)
        assert action.shape == (3, 2) and action.dtype == np.float32
        assert np.all(action >= -0.5) and np.all(action <= 0.5)
        # exactly the best allowed bin's value (about 0.25 and -0.3), not a clipped bound
        assert action.tolist() == [values[best].tolist()] * 3
        # the mask did the work: unmasked, a bin outside [-0.5, 0.5] would win every dim
        assert policy.last_logits is not None
        unmasked = policy.last_logits[:, :2].argmax(-1).numpy()
        low, high = VEC_BOX.act_low[:2], VEC_BOX.act_high[:2]
        assert np.all((unmasked < low) | (unmasked > high))


@pytest.mark.parametrize("space", [DiscreteSpace(n=3), DiscreteSpace(n=3, start=2)])
def test_discrete_actions_are_the_best_of_the_first_n(space: DiscreteSpace) -> None:
    codec = SpaceCodec(BoxSpace(shape=(4,), low=-1.0, high=1.0), space)
    policy = LDMPolicy(trap_model(codec, [1]), codec, 4)  # class 1: the middle category
    rng = np.random.default_rng(0)
    for _ in range(6):
        obs = rng.uniform(-1, 1, size=(4, 4)).astype(np.float32)
        action = policy.act(obs, rng.normal(size=4), rng.random(4) < 0.2)
        assert action.shape == (4,) and action.dtype == np.int64
        assert action.tolist() == [space.start + 1] * 4
        # unmasked, a category beyond the first n would win
        assert policy.last_logits is not None
        assert np.all(policy.last_logits[:, 0].argmax(-1).numpy() >= space.n)


def test_multi_discrete_and_multi_binary_shapes_and_dtypes(edge_model: LDM) -> None:
    md = SpaceCodec(
        BoxSpace(shape=(4,), low=-1.0, high=1.0), MultiDiscreteSpace(nvec=[3, 5], start=[1, -2])
    )
    for action in run_policy(edge_model, md, 2):
        assert action.shape == (2, 2) and action.dtype == np.int64
        assert np.all(action[:, 0] >= 1) and np.all(action[:, 0] <= 3)
        assert np.all(action[:, 1] >= -2) and np.all(action[:, 1] <= 2)
    mb = SpaceCodec(BoxSpace(shape=(4,), low=-1.0, high=1.0), MultiBinarySpace(n=4))
    for action in run_policy(edge_model, mb, 3):
        assert action.shape == (3, 4) and action.dtype == np.int8
        assert set(np.unique(action).tolist()) <= {0, 1}


def test_mixed_action_spaces_in_one_batch(edge_model: LDM) -> None:
    codecs = [
        VEC_BOX,
        SpaceCodec(BoxSpace(shape=(4,), low=-1.0, high=1.0), DiscreteSpace(n=3, start=2)),
        IMAGE_MULTI,
    ]
    policy = LDMPolicy(edge_model, codecs, 3)
    rng = np.random.default_rng(0)
    for _ in range(4):
        actions = policy.act([sample_obs(c, rng) for c in codecs], np.zeros(3), np.zeros(3, bool))
        assert isinstance(actions, list) and len(actions) == 3
        box, disc, multi = actions
        assert box.shape == (2,) and np.all(np.abs(box) <= 0.5)
        assert disc.shape == () and int(disc) in {2, 3, 4}
        assert multi.shape == (2,) and multi[0] < 3 and multi[1] < 5


# -- (e) end to end on a real vector env ----------------------------------------------------------


def test_rollout_on_cartpole_through_the_vector_env() -> None:
    from ldm_envs.vector import LDMVectorEnv

    # LDMPolicy reads `done` as "this observation starts a new episode": same-step autoreset
    env = LDMVectorEnv(
        "classic-control", "CartPole-v1", 4, backend="inprocess", autoreset_mode="SameStep"
    )
    try:
        codec = SpaceCodec(env.pool.observation_spaces[0], env.pool.action_spaces[0])
        policy = LDMPolicy(make_model(), codec, env.num_envs)
        policy.reset()
        obs, _ = env.reset(seed=0)
        reward, done = None, None
        episodes = np.zeros(env.num_envs, np.int64)
        for _ in range(200):
            action = policy.act(obs, reward, done)
            assert action.shape == (4,) and action.dtype == np.int64
            assert set(action.tolist()) <= {0, 1}
            obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated | truncated
            episodes += done
        assert episodes.min() >= 1  # episodes ended...
        # ...and no context was emptied by them: all envs see the full (sliding) context
        assert policy.context_lengths.tolist() == [policy.context - 1] * env.num_envs
        assert policy.cache_length == policy.context
    finally:
        env.close()


# -- from_checkpoint ------------------------------------------------------------------------------


def test_from_checkpoint_acts_like_the_saved_model(tmp_path: Path, tiny_dataset: Path) -> None:
    from ldm_model.data import WindowSampler
    from ldm_model.training import TrainConfig
    from ldm_model.training.checkpoint import dataset_info, save_checkpoint

    model = make_model()
    save_checkpoint(
        tmp_path,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        train_config=TrainConfig(model="tiny", data_root=tiny_dataset, context=8, batch_size=2),
        step=1,
        dataset=dataset_info(WindowSampler(tiny_dataset, context=8)),
    )
    obs_space, act_space = VEC_BOX.observation_space, VEC_BOX.action_space
    loaded = LDMPolicy.from_checkpoint(tmp_path, obs_space, act_space, 2)
    assert not loaded.model.training and loaded.context == model.config.context
    assert loaded.codecs[0] is loaded.codecs[1]  # equal spaces share one codec
    direct = LDMPolicy(model, VEC_BOX, 2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, reward = rng.normal(size=(2, 3)), rng.normal(size=2)
        np.testing.assert_array_equal(loaded.act(obs, reward), direct.act(obs, reward))
