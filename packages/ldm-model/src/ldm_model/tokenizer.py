"""Tokenization (LDM-v0 §3.3): mu-law + uniform bins for continuous values, lookup for discrete.

Continuous value `x` -> `F(x) = sign(x) * log(1 + mu*|x|) / log(1 + M*mu)` (mu=100, M=256),
clipped to [-1, 1], then one of `n_bins` (1024) uniform bins over [-1, 1]. Decoding a bin gives
the inverse mu-law of the bin's center. Discrete values (Discrete, MultiDiscrete, MultiBinary)
are their category index counted from 0 (a Discrete's `start` removed).

Why the split between `SpaceCodec` (numpy, per env) and the `*_bins` functions (torch): the
window sampler must move ≥ 1M transitions/s on two cores, which leaves no time to take a
logarithm of every value on the host. Windows therefore carry raw values padded to 128 (obs) and
28 (action) dims, plus the codec's per-env tables (which dims are real, which are discrete, which
classes an action dim allows), and the model bins them on its device in one vectorized call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ldm_envs.errors import SpaceError
from ldm_envs.spaces import (
    MAX_ACTION_DIMS,
    MAX_OBS_DIMS,
    BoxSpace,
    DiscreteSpace,
    MultiBinarySpace,
    MultiDiscreteSpace,
    SpaceModel,
    check_limits,
)
from ldm_model.errors import TokenizationError

MU = 100.0
MU_M = 256.0
N_BINS = 1024
#: Size of the lookup table for discrete values: categories 0..1023.
DISCRETE_VOCAB = 1024
OBS_DIMS = MAX_OBS_DIMS
ACT_DIMS = MAX_ACTION_DIMS
#: Images are resized to IMAGE_SIZE x IMAGE_SIZE x 3 before the convolutional encoder.
IMAGE_SIZE = 64


# --------------------------------------------------------------------------------------------
# Continuous values (torch: run on the model's device)


def mu_law(x: torch.Tensor, mu: float = MU, m: float = MU_M) -> torch.Tensor:
    """Compress to roughly [-1, 1]; values beyond ±M map beyond ±1 (and get clipped)."""
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(m * mu)


def inverse_mu_law(y: torch.Tensor, mu: float = MU, m: float = MU_M) -> torch.Tensor:
    """Inverse of `mu_law` on [-1, 1]."""
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(m * mu)) / mu


def value_bins(x: torch.Tensor, n_bins: int = N_BINS, *, check: bool = True) -> torch.Tensor:
    """Bin index in [0, n_bins) of each value; ±inf and huge values land in the edge bins.

    Raises:
        TokenizationError: a value is NaN (with `check`; it costs a device sync).
    """
    x = x.float()
    if check and bool(torch.isnan(x).any()):
        raise TokenizationError(f"NaN among {x.numel()} values to tokenize")
    y = mu_law(torch.nan_to_num(x, nan=0.0, posinf=1e30, neginf=-1e30)).clamp(-1.0, 1.0)
    # y == 1 would give n_bins: the last bin is closed on the right
    return ((y + 1.0) * (n_bins / 2.0)).floor().clamp(0, n_bins - 1).long()


def bin_values(n_bins: int = N_BINS, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The value each bin decodes to: inverse mu-law of its center, shape `(n_bins,)`."""
    centers = (torch.arange(n_bins, device=device, dtype=torch.float64) + 0.5) / (n_bins / 2) - 1
    return inverse_mu_law(centers).float()


def bin_edges(n_bins: int = N_BINS) -> np.ndarray:
    """Value-space edges of the bins, shape `(n_bins + 1,)`; the outer edges are ±M."""
    y = torch.linspace(-1.0, 1.0, n_bins + 1, dtype=torch.float64)
    return inverse_mu_law(y).numpy()


# --------------------------------------------------------------------------------------------
# Per-env tables (numpy: built once per env, gathered per window by the sampler)


def _allowed_bins(low: np.ndarray, high: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per dim, the first and last bin whose decoded value lies in [low, high].

    When no bin center falls inside (a range narrower than a bin), the bin holding the middle
    of the range is the only one allowed.
    """
    centers = bin_values(n_bins).double().numpy()
    lo = np.searchsorted(centers, low, side="left")
    hi = np.searchsorted(centers, high, side="right") - 1
    empty = lo > hi
    if empty.any():
        mid = value_bins(torch.from_numpy((low[empty] + high[empty]) / 2.0), n_bins).numpy()
        lo[empty] = mid
        hi[empty] = mid
    return lo.astype(np.int64), hi.astype(np.int64)


#: The per-env tables of a `SpaceCodec` that a `Batch` carries (same names in both).
CODEC_TABLES = ("obs_mask", "obs_discrete", "act_mask", "act_discrete", "act_low", "act_high")


@dataclass(frozen=True)
class SpaceCodec:
    """How one env's observations and actions map onto the model's padded, typed dims.

    Observation: `obs_dims` real values (a vector observation flattened; 0 for an image), each
    continuous or discrete (`obs_discrete`), plus an image when `image_shape` is set. Action:
    `act_dims` real dims; each allows the classes `act_low[i]..act_high[i]` (continuous: the bins
    whose value lies in the Box bounds; discrete: 0..n-1).
    """

    observation_space: SpaceModel
    action_space: SpaceModel
    n_bins: int = N_BINS
    obs_dims: int = field(init=False)
    obs_discrete: np.ndarray = field(init=False)  # bool (OBS_DIMS,)
    obs_mask: np.ndarray = field(init=False)  # bool (OBS_DIMS,)
    obs_start: np.ndarray = field(init=False)  # float32 (obs_dims,): subtracted from discretes
    image_shape: tuple[int, int, int] | None = field(init=False)
    act_dims: int = field(init=False)
    act_discrete: np.ndarray = field(init=False)  # bool (ACT_DIMS,)
    act_mask: np.ndarray = field(init=False)  # bool (ACT_DIMS,)
    act_low: np.ndarray = field(init=False)  # int64 (ACT_DIMS,), inclusive
    act_high: np.ndarray = field(init=False)  # int64 (ACT_DIMS,), inclusive
    act_start: np.ndarray = field(init=False)  # int64 (act_dims,): added back when decoding

    def __post_init__(self) -> None:
        obs, act = self.observation_space, self.action_space
        try:
            check_limits(obs, act)
        except SpaceError as exc:
            raise TokenizationError(str(exc)) from exc
        set_ = object.__setattr__
        # observation
        image = isinstance(obs, BoxSpace) and obs.is_image
        set_(self, "image_shape", tuple(obs.shape) if image and isinstance(obs, BoxSpace) else None)
        n = 0 if image else obs.flat_dim
        set_(self, "obs_dims", n)
        discrete, start = _discrete_layout(obs, n, what="observation")
        set_(self, "obs_discrete", _pad(discrete, OBS_DIMS, False))
        set_(self, "obs_mask", _pad(np.ones(n, bool), OBS_DIMS, False))
        set_(self, "obs_start", start.astype(np.float32))
        # action
        k = act.flat_dim
        set_(self, "act_dims", k)
        discrete, start = _discrete_layout(act, k, what="action")
        set_(self, "act_discrete", _pad(discrete, ACT_DIMS, False))
        set_(self, "act_mask", _pad(np.ones(k, bool), ACT_DIMS, False))
        set_(self, "act_start", start.astype(np.int64))
        if isinstance(act, BoxSpace):
            low = act.low_array().astype(np.float64).reshape(-1)
            high = act.high_array().astype(np.float64).reshape(-1)
            lo, hi = _allowed_bins(low, high, self.n_bins)
        else:
            lo = np.zeros(k, np.int64)
            hi = _category_counts(act) - 1
        set_(self, "act_low", _pad(lo, ACT_DIMS, 0))
        set_(self, "act_high", _pad(hi, ACT_DIMS, 0))

    # -- host-side conversions (used by the policy; the sampler slices shards directly) ----------

    def flat_obs(self, obs: np.ndarray) -> np.ndarray:
        """`(N, *obs_shape)` -> float32 `(N, OBS_DIMS)`, discrete values counted from 0."""
        obs = np.asarray(obs)
        out = np.zeros((obs.shape[0], OBS_DIMS), np.float32)
        if self.obs_dims:
            out[:, : self.obs_dims] = obs.reshape(obs.shape[0], -1) - self.obs_start
        return out

    def image(self, obs: np.ndarray) -> np.ndarray | None:
        """`(N, H, W, C)` uint8 -> `(N, 64, 64, 3)` uint8 (nearest neighbour), or None."""
        if self.image_shape is None:
            return None
        return resize_images(np.asarray(obs), IMAGE_SIZE)

    def flat_action(self, action: np.ndarray) -> np.ndarray:
        """Env actions `(N, ...)` -> float32 `(N, ACT_DIMS)`, discrete values counted from 0."""
        action = np.asarray(action)
        out = np.zeros((action.shape[0], ACT_DIMS), np.float32)
        out[:, : self.act_dims] = action.reshape(action.shape[0], -1) - self.act_start
        return out

    def decode_action(self, classes: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Model classes `(N, ACT_DIMS)` -> env actions `(N, ...)` in the space's dtype/shape.

        Args:
            classes: chosen class per dim (bin for continuous dims, category for discrete).
            values: the value of every bin, `bin_values()` as numpy.
        """
        classes = np.asarray(classes)[:, : self.act_dims].astype(np.int64)
        act = self.action_space
        n = classes.shape[0]
        if isinstance(act, BoxSpace):
            low = act.low_array().reshape(-1).astype(np.float64)
            high = act.high_array().reshape(-1).astype(np.float64)
            out = np.clip(values[classes].astype(np.float64), low, high)
            if np.dtype(act.dtype).kind in "iub":
                out = np.rint(out)
            return out.astype(act.dtype).reshape((n, *act.shape))
        out = classes + self.act_start
        if isinstance(act, DiscreteSpace):
            return out[:, 0].astype(np.int64)
        if isinstance(act, MultiBinarySpace):
            return out.astype(np.int8)
        return out.astype(np.int64)


def _pad(values: np.ndarray, size: int, fill: object) -> np.ndarray:
    out = np.full(size, fill, dtype=np.asarray(values).dtype if len(values) else type(fill))
    out[: len(values)] = values
    return out


def _category_counts(space: SpaceModel) -> np.ndarray:
    if isinstance(space, DiscreteSpace):
        return np.array([space.n], np.int64)
    if isinstance(space, MultiDiscreteSpace):
        return np.asarray(space.nvec, np.int64)
    if isinstance(space, MultiBinarySpace):
        return np.full(space.n, 2, np.int64)
    raise TypeError(f"not a discrete space: {space!r}")


def _discrete_layout(space: SpaceModel, n: int, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Which of the `n` flat dims are discrete, and the start to subtract from each."""
    if isinstance(space, BoxSpace):
        return np.zeros(n, bool), np.zeros(n, np.float64)
    counts = _category_counts(space)
    if counts.max() > DISCRETE_VOCAB:
        raise TokenizationError(
            f"{what} space {space.describe()} has a category count of {int(counts.max())}; "
            f"the discrete lookup table holds {DISCRETE_VOCAB}"
        )
    if isinstance(space, DiscreteSpace):
        start = np.array([space.start], np.float64)
    elif isinstance(space, MultiDiscreteSpace) and space.start is not None:
        start = np.asarray(space.start, np.float64)
    else:
        start = np.zeros(n, np.float64)
    return np.ones(n, bool), start


def resize_images(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Nearest-neighbour resize of uint8 `(..., H, W, C)` to `(..., size, size, 3)`.

    Channels: the first three are kept; one or two channels are repeated up to three.
    """
    h, w, c = images.shape[-3:]
    rows = (np.arange(size) * h // size).astype(np.intp)
    cols = (np.arange(size) * w // size).astype(np.intp)
    chans = np.arange(3) % c if c < 3 else np.arange(3)
    if (h, w) == (size, size) and c == 3:
        return np.ascontiguousarray(images)
    return np.ascontiguousarray(images[..., rows[:, None], cols[None, :], :][..., chans])
