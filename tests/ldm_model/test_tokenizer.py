"""Tokenizer: mu-law bins round-trip within a bin, edge cases, per-env codec tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiBinarySpace, MultiDiscreteSpace
from ldm_model.tokenizer import (
    ACT_DIMS,
    N_BINS,
    OBS_DIMS,
    SpaceCodec,
    TokenizationError,
    bin_edges,
    bin_values,
    inverse_mu_law,
    mu_law,
    resize_images,
    value_bins,
)


def test_mu_law_inverts() -> None:
    x = torch.linspace(-256, 256, 10001, dtype=torch.float64)
    assert torch.allclose(inverse_mu_law(mu_law(x)), x, atol=1e-9)
    assert float(mu_law(torch.tensor(256.0, dtype=torch.float64))) == pytest.approx(1.0)


def test_round_trip_error_is_bounded_by_the_bin() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, s, 20000) for s in (0.01, 1.0, 30.0)]).clip(-255, 255)
    bins = value_bins(torch.from_numpy(x)).numpy()
    decoded = bin_values().double().numpy()[bins]
    edges = bin_edges()
    width = edges[bins + 1] - edges[bins]
    assert (np.abs(decoded - x) <= width + 1e-9).all()
    # each value lies inside its bin (up to float32 rounding at the edges)
    tol = 1e-5 * np.abs(x) + 1e-9
    assert (edges[bins] <= x + tol).all() and (x <= edges[bins + 1] + tol).all()
    # small values are resolved finely: 1e-3 around zero is a fraction of a bin of width ~5e-5
    near = np.abs(x) < 0.01
    assert np.abs(decoded - x)[near].max() < 1e-3


def test_edge_cases() -> None:
    x = torch.tensor([math.inf, -math.inf, 1e30, -1e30, 256.0, -256.0, 0.0])
    bins = value_bins(x)
    assert bins.tolist()[:6] == [N_BINS - 1, 0, N_BINS - 1, 0, N_BINS - 1, 0]
    assert int(bins.max()) <= N_BINS - 1 and int(bins.min()) >= 0
    assert bins[6] in (N_BINS // 2 - 1, N_BINS // 2)
    with pytest.raises(TokenizationError, match="NaN"):
        value_bins(torch.tensor([0.0, math.nan]))


def test_box_codec_tables_and_allowed_bins() -> None:
    codec = SpaceCodec(
        BoxSpace(shape=(3,), low=-math.inf, high=math.inf),
        BoxSpace(shape=(2,), low=[-0.5, 0.0], high=[0.5, 2.0]),
    )
    assert codec.obs_dims == 3 and codec.obs_mask.sum() == 3 and codec.obs_mask.shape == (OBS_DIMS,)
    assert not codec.obs_discrete.any()
    assert codec.act_dims == 2 and codec.act_mask.shape == (ACT_DIMS,)
    values = bin_values().numpy()
    for i, (lo, hi) in enumerate([(-0.5, 0.5), (0.0, 2.0)]):
        allowed = values[codec.act_low[i] : codec.act_high[i] + 1]
        assert allowed.min() >= lo and allowed.max() <= hi
        # the neighbours just outside are out of bounds
        assert values[codec.act_low[i] - 1] < lo and values[codec.act_high[i] + 1] > hi
    classes = np.zeros((4, ACT_DIMS), np.int64)
    classes[:, 0] = [0, N_BINS - 1, codec.act_low[0], codec.act_high[0]]
    classes[:, 1] = codec.act_low[1]
    actions = codec.decode_action(classes, values)
    assert actions.shape == (4, 2) and actions.dtype == np.float32
    assert (actions[:, 0] >= -0.5).all() and (actions[:, 0] <= 0.5).all()


def test_discrete_codecs() -> None:
    codec = SpaceCodec(DiscreteSpace(n=5, start=3), DiscreteSpace(n=3, start=-1))
    assert codec.obs_discrete[0] and not codec.obs_discrete[1]
    assert codec.flat_obs(np.array([3, 7]))[:, 0].tolist() == [0.0, 4.0]
    assert (codec.act_low[0], codec.act_high[0]) == (0, 2)
    assert codec.flat_action(np.array([-1, 1]))[:, 0].tolist() == [0.0, 2.0]
    classes = np.zeros((2, ACT_DIMS), np.int64)
    classes[:, 0] = [0, 2]
    assert codec.decode_action(classes, bin_values().numpy()).tolist() == [-1, 1]

    md = SpaceCodec(MultiDiscreteSpace(nvec=[2, 4]), MultiBinarySpace(n=3))
    assert md.obs_discrete[:2].all() and md.act_high[:3].tolist() == [1, 1, 1]
    out = md.decode_action(np.ones((1, ACT_DIMS), np.int64), bin_values().numpy())
    assert out.dtype == np.int8 and out.shape == (1, 3)


def test_limits_and_large_vocab_refused() -> None:
    with pytest.raises(TokenizationError, match="129 dims"):
        SpaceCodec(BoxSpace(shape=(129,), low=0.0, high=1.0), DiscreteSpace(n=2))
    with pytest.raises(TokenizationError, match="29 dims"):
        SpaceCodec(BoxSpace(shape=(4,), low=0.0, high=1.0), MultiBinarySpace(n=29))
    with pytest.raises(TokenizationError, match="2000"):
        SpaceCodec(DiscreteSpace(n=2000), DiscreteSpace(n=2))


def test_images_resize_to_64x64x3() -> None:
    codec = SpaceCodec(
        BoxSpace(shape=(7, 7, 3), dtype="uint8", low=0, high=255), DiscreteSpace(n=7)
    )
    assert codec.image_shape == (7, 7, 3) and codec.obs_dims == 0 and not codec.obs_mask.any()
    img = np.arange(7 * 7 * 3, dtype=np.uint8).reshape(1, 7, 7, 3)
    out = codec.image(img)
    assert out is not None and out.shape == (1, 64, 64, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == img[0, 0, 0].tolist()
    assert out[0, 63, 63].tolist() == img[0, 6, 6].tolist()
    gray = resize_images(np.full((2, 5, 5, 1), 9, np.uint8))
    assert gray.shape == (2, 64, 64, 3) and (gray == 9).all()


def test_paper_constants_pin_the_bins() -> None:
    """mu = 100, M = 256, 1024 bins over [-1, 1] (LDM-v0 §3.3): exact bins, not just a round trip.

    The round-trip and edge tests above pass with any mu (the inverse undoes whatever mu was
    used, and mu_law(M) = 1 for every mu), so these values are computed here by the paper's
    formula, written out, and also pinned as literals.
    """
    mu, m, n_bins = 100.0, 256.0, 1024
    assert n_bins == N_BINS
    x = np.array([-200.0, -30.0, -1.0, -0.1, -0.01, 0.003, 0.05, 0.5, 1.0, 7.0, 100.0])
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(m * mu)
    torch.testing.assert_close(mu_law(torch.from_numpy(x)), torch.from_numpy(y))
    expected = np.floor((np.clip(y, -1.0, 1.0) + 1.0) * n_bins / 2).astype(np.int64)
    bins = value_bins(torch.from_numpy(x)).numpy()
    assert bins.tolist() == expected.tolist()
    assert bins.tolist() == [12, 108, 279, 391, 477, 525, 602, 710, 744, 842, 976]
    # decoding: the inverse mu-law of each of the 1024 bin centers
    centers = (np.arange(n_bins) + 0.5) / (n_bins / 2) - 1.0
    decoded = np.sign(centers) * np.expm1(np.abs(centers) * math.log1p(m * mu)) / mu
    values = bin_values().double().numpy()
    assert values.shape == (n_bins,)
    np.testing.assert_allclose(values, decoded, rtol=1e-6, atol=0)
    assert values[744] == pytest.approx(0.99414, abs=1e-5)
    # beyond +-M the mu-law exceeds +-1 and is clipped into the edge bins
    assert float(mu_law(torch.tensor(300.0, dtype=torch.float64))) > 1.0
    assert value_bins(torch.tensor([300.0, -300.0])).tolist() == [n_bins - 1, 0]
