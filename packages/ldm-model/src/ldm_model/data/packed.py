"""A batch as numpy arrays before padding: what crosses from a DataLoader worker.

Padding is the costliest part of a batch (a CartPole transition is ~30 bytes, padded ~750), so
the sampler can build the windows compact (widths of the widest env of the batch) and
`PackedBatch.to_batch()` pads later, in the trainer's process (see `ldm_model.data.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ldm_model.batch import Batch, ImageGroup
from ldm_model.tokenizer import ACT_DIMS, IMAGE_SIZE, OBS_DIMS

__all__ = ["PackedBatch", "RawImages"]


@dataclass
class RawImages:
    """Image windows of one stored shape at that size: `ImageGroup` of the `Batch`."""

    #: int64 (k,): the windows (rows of the batch) they belong to, ascending.
    windows: np.ndarray
    #: uint8 (k, T, H, W, C), zero on padding.
    images: np.ndarray


@dataclass
class PackedBatch:
    """A batch as numpy arrays, before the padding that `to_batch` adds.

    Observation and action widths are `OBS_DIMS`/`ACT_DIMS` (then `to_batch` copies nothing)
    or, compact, those of the widest env of the batch. Compact is what crosses from a
    DataLoader worker to the trainer's process: a padded CartPole batch is ~25x the bytes.
    Image windows smaller than 64x64x3 stay at their stored size (`raw_images`, one per shape)
    in every case: `to_batch` hands them over as `ImageGroup`s, the model resizes them.
    """

    obs: np.ndarray  # float32 (B, T, width)
    prev_action: np.ndarray  # float32 (B, T, width)
    target: np.ndarray  # float32 (B, T, width)
    prev_reward: np.ndarray  # float32 (B, T)
    prev_done: np.ndarray  # bool (B, T)
    lengths: np.ndarray  # int64 (B,): real positions of each window (the rest is padding)
    starts: np.ndarray  # int64 (B,): first row of each window in its shard
    has_image: np.ndarray  # bool (B,)
    env_index: np.ndarray  # int64 (B,)
    tables: dict[str, np.ndarray]  # per-window codec tables, (B, OBS_DIMS) or (B, ACT_DIMS)
    #: the batch has an `image` tensor (some window of the global batch is an image resized on
    #: the host)
    with_image: bool = False
    #: uint8 (B, T, 64, 64, 3): the images resized on the host, or None (zeros if `with_image`)
    image: np.ndarray | None = None
    raw_images: list[RawImages] = field(default_factory=list)

    def to_batch(self, *, pin_memory: bool = False) -> Batch:
        """The `Batch`: pad to 128/28 dims (no copy when already padded), masks from lengths.

        Args:
            pin_memory: build every tensor in pinned memory, written in place (no second
                copy as `Batch.pin_memory()` would make). Needs CUDA.
        """
        b, t = self.prev_reward.shape
        position = np.arange(t)
        loss_mask = position[None, :] < self.lengths[:, None]
        prev_valid = loss_mask & ((position[None, :] > 0) | (self.starts[:, None] > 0))

        def zeros(shape: tuple[int, ...], dtype: np.dtype) -> tuple[torch.Tensor, np.ndarray]:
            if pin_memory:
                # the caching host allocator hands back pinned blocks: no page faults
                pinned = torch.zeros(shape, dtype=_TORCH[np.dtype(dtype)], pin_memory=True)
                return pinned, pinned.numpy()
            # numpy, not torch.zeros: numpy asks for huge pages, and 4 KiB page faults cost
            # 5x the copy on large batches
            out = np.zeros(shape, dtype)
            return torch.from_numpy(out), out

        def tensor(array: np.ndarray, width: int | None = None) -> torch.Tensor:
            if not pin_memory and (width is None or array.shape[-1] == width):
                return torch.from_numpy(array)
            shape = array.shape if width is None else (*array.shape[:-1], width)
            out, view = zeros(shape, array.dtype)
            view[..., : array.shape[-1]] = array
            return out

        image: torch.Tensor | None = None
        if self.image is not None:
            image = tensor(self.image)
        elif self.with_image:
            image, _ = zeros((b, t, IMAGE_SIZE, IMAGE_SIZE, 3), np.dtype(np.uint8))
        return Batch(
            obs=tensor(self.obs, OBS_DIMS),
            prev_action=tensor(self.prev_action, ACT_DIMS),
            prev_reward=tensor(self.prev_reward),
            prev_done=tensor(self.prev_done),
            prev_valid=tensor(prev_valid),
            target=tensor(self.target, ACT_DIMS),
            loss_mask=tensor(loss_mask),
            image=image,
            has_image=tensor(self.has_image),
            env_index=tensor(self.env_index),
            **{name: tensor(value) for name, value in self.tables.items()},
            image_groups=[ImageGroup(tensor(g.windows), tensor(g.images)) for g in self.raw_images],
        )


_TORCH = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.bool_): torch.bool,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.uint8): torch.uint8,
}
