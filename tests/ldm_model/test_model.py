"""The model: causal, masked where the contract says, images through the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_envs.spaces import BoxSpace, DiscreteSpace
from ldm_model.batch import Batch
from ldm_model.config import get_config
from ldm_model.model import LDM, resize_frames
from ldm_model.tokenizer import IMAGE_SIZE, SpaceCodec, resize_images
from tests.ldm_model.datasets import host_resized, mixed_image_batch


def _batch(codec: SpaceCodec, b: int = 2, t: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)

    def per_env(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.broadcast_to(a, (b, *a.shape)).copy())

    obs_mask = per_env(codec.obs_mask)
    act_mask = per_env(codec.act_mask)
    image = None
    if codec.image_shape is not None:
        image = torch.randint(0, 256, (b, t, 64, 64, 3), generator=g, dtype=torch.uint8)
    target = torch.rand(b, t, 28, generator=g) * act_mask[:, None, :]
    if codec.act_discrete.any():
        target = (target * 2).floor()
    return Batch(
        obs=torch.randn(b, t, 128, generator=g) * obs_mask[:, None, :],
        obs_mask=obs_mask,
        obs_discrete=per_env(codec.obs_discrete),
        prev_action=torch.rand(b, t, 28, generator=g).round() * act_mask[:, None, :],
        prev_reward=torch.randn(b, t, generator=g),
        prev_done=torch.rand(b, t, generator=g) > 0.8,
        prev_valid=torch.ones(b, t, dtype=torch.bool),
        act_mask=act_mask,
        act_discrete=per_env(codec.act_discrete),
        act_low=per_env(codec.act_low),
        act_high=per_env(codec.act_high),
        target=target,
        loss_mask=torch.ones(b, t, dtype=torch.bool),
        image=image,
        has_image=torch.full((b,), image is not None),
    )


@pytest.fixture(scope="module")
def model() -> LDM:
    torch.manual_seed(0)
    return LDM(get_config("tiny")).eval()


CARTPOLE = SpaceCodec(BoxSpace(shape=(4,), low=-5.0, high=5.0), DiscreteSpace(n=2))
PENDULUM = SpaceCodec(
    BoxSpace(shape=(3,), low=-8.0, high=8.0), BoxSpace(shape=(1,), low=-2.0, high=2.0)
)


def test_logits_shape_and_causality(model: LDM) -> None:
    batch = _batch(CARTPOLE)
    logits = model(batch).logits
    assert logits.shape == (2, 6, 28, 1024)
    later = _batch(CARTPOLE, seed=1)
    mixed = _batch(CARTPOLE)
    mixed.obs[:, 3:] = later.obs[:, 3:]
    mixed.prev_action[:, 3:] = later.prev_action[:, 3:]
    changed = model(mixed).logits
    assert torch.allclose(changed[:, :3], logits[:, :3], atol=1e-5)
    assert not torch.allclose(changed[:, 3:], logits[:, 3:], atol=1e-5)


def test_padding_and_invalid_previous_are_ignored(model: LDM) -> None:
    batch = _batch(PENDULUM)
    base = model(batch).logits
    noisy = _batch(PENDULUM)
    noisy.obs[:, :, 3:] = 123.0  # beyond the 3 real observation dims
    noisy.prev_action[:, :, 1:] = 7.0  # beyond the 1 real action dim
    assert torch.allclose(model(noisy).logits, base, atol=1e-6)
    first = _batch(PENDULUM)
    first.prev_valid[:, 0] = False
    other = _batch(PENDULUM)
    other.prev_valid[:, 0] = False
    other.prev_action[:, 0] = 1.5
    other.prev_reward[:, 0] = -40.0
    other.prev_done[:, 0] = True
    assert torch.allclose(model(first).logits, model(other).logits, atol=1e-6)


def test_loss_counts_only_real_dims_and_steps(model: LDM) -> None:
    batch = _batch(PENDULUM)
    batch.loss_mask[:, 4:] = False
    base = model.loss(batch)
    assert float(base.count) == 2 * 4 * 1
    other = _batch(PENDULUM)
    other.loss_mask[:, 4:] = False
    other.target[:, :, 1:] = 0.9  # padded dims
    other.target[:, 4:, 0] = -1.9  # masked steps
    assert torch.allclose(model.loss(other).loss, base.loss)
    assert 0.0 <= float(base.accuracy) <= 1.0


def test_masked_argmax_stays_in_the_action_space(model: LDM) -> None:
    batch = _batch(CARTPOLE)
    logits = model(batch).logits
    logits[..., 0, 500] = 1e9  # the unmasked argmax would pick an impossible category
    classes = model.act_classes(logits, batch)
    assert classes[..., 0].max() <= 1


def test_image_observations_go_through_the_encoder(model: LDM) -> None:
    codec = SpaceCodec(
        BoxSpace(shape=(7, 7, 3), dtype="uint8", low=0, high=255), DiscreteSpace(n=7)
    )
    batch = _batch(codec)
    base = model(batch).logits
    other = _batch(codec)
    other.image = torch.zeros_like(other.image)
    assert not torch.allclose(model(other).logits, base, atol=1e-6)
    loss = LDM(get_config("tiny")).loss(batch)
    loss.loss.backward()


def test_images_resized_on_the_device_equal_the_host_resize(model: LDM, tmp_path) -> None:
    """Groups at stored size (7x7x3, 5x5x1) resized by the model, mixed with host-resized
    70x66x3 images, vector windows and padded windows: the logits and the loss of the
    host-resized batch, bit for bit (the encoder sees the same frames in the same order)."""
    batch = mixed_image_batch(tmp_path)
    assert len(batch.image_groups) == 2 and batch.image is not None
    assert not batch.loss_mask[1, 30:].any()  # a padded image window
    host = host_resized(batch)
    assert host.image_groups == [] and host.image is not None
    dtype = model.merge.weight.dtype
    with torch.no_grad():
        features = model.embed_images(batch, dtype)
        assert torch.equal(features, model.embed_images(host, dtype))
        assert features[[0, 1, 3, 4, 5, 6]].abs().sum(-1).gt(0).all()
        assert not features[[2, 7]].any()
        assert torch.equal(model(batch).logits, model(host).logits)
        assert torch.equal(model.loss(batch).loss, model.loss(host).loss)
    # the groups' path trains the encoder like the host path
    grads = []
    for b in (batch, host):
        model.zero_grad()
        model.loss(b).loss.backward()
        grads.append([p.grad.clone() for p in model.image_encoder.parameters()])
    model.zero_grad()
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # micro-batches (Batch.select) sum to the whole batch
    whole = model.loss_terms(batch)[0]
    parts = sum(model.loss_terms(batch.select(slice(a, a + 3)))[0] for a in (0, 3, 6))
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


def test_resize_frames_matches_resize_images() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in [(7, 7, 3), (5, 5, 1), (3, 3, 2), (10, 70, 4), (64, 64, 3), (1, 1, 1)]:
        frames = torch.randint(0, 256, (2, 3, *shape), generator=g, dtype=torch.uint8)
        want = resize_images(frames.numpy())
        got = resize_frames(frames, IMAGE_SIZE)
        assert got.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE, 3)
        np.testing.assert_array_equal(got.numpy(), want)
