"""The batch contract between the window sampler, the model, the trainer and the policy.

Values travel raw (floats, discrete values counted from 0) and padded to `OBS_DIMS`/`ACT_DIMS`;
the model bins them on its device (see `ldm_model.tokenizer` for why). `B` windows of `T`
consecutive transitions; per-window tables come from the env's `SpaceCodec`.

Images travel two ways. `image` holds them resized to 64x64x3 (the policy's batches, and the
sampler's for images of 64x64x3 bytes or more). `image_groups` holds smaller ones at their
stored size, one group per shape: the model resizes them on its device, right before the image
encoder (`ldm_model.model.resize_frames`, the same nearest neighbour as
`ldm_model.tokenizer.resize_images`). A MiniGrid 7x7x3 transition is then 147 bytes on the host
instead of 12 KB.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class ImageGroup:
    """Image windows of one stored shape, at that size (resized by the model on its device)."""

    #: int64 (k,): the windows (rows of the batch) these images belong to, ascending.
    windows: torch.Tensor
    #: uint8 (k, T, H, W, C): their images, zero past each window's length.
    frames: torch.Tensor

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> ImageGroup:
        return ImageGroup(
            self.windows.to(device, non_blocking=non_blocking),
            self.frames.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> ImageGroup:
        return ImageGroup(self.windows.pin_memory(), self.frames.pin_memory())


@dataclass
class Batch:
    """B windows of T transitions. Shapes are given as (B, T, ...)."""

    #: float32 (B, T, OBS_DIMS): observation t, flattened, zero in padded dims.
    obs: torch.Tensor
    #: bool (B, OBS_DIMS): which observation dims are real.
    obs_mask: torch.Tensor
    #: bool (B, OBS_DIMS): which observation dims are discrete (lookup table, not bins).
    obs_discrete: torch.Tensor
    #: float32 (B, T, ACT_DIMS): action taken at t-1 (zero where `prev_valid` is False).
    prev_action: torch.Tensor
    #: float32 (B, T): reward of t-1.
    prev_reward: torch.Tensor
    #: bool (B, T): the episode ended (terminated or truncated) at t-1, so t starts a new one.
    prev_done: torch.Tensor
    #: bool (B, T): False where there is no previous transition (start of a run or rollout).
    prev_valid: torch.Tensor
    #: bool (B, ACT_DIMS): which action dims are real.
    act_mask: torch.Tensor
    #: bool (B, ACT_DIMS): which action dims are discrete.
    act_discrete: torch.Tensor
    #: int64 (B, ACT_DIMS): first allowed class per action dim (inclusive).
    act_low: torch.Tensor
    #: int64 (B, ACT_DIMS): last allowed class per action dim (inclusive).
    act_high: torch.Tensor
    #: float32 (B, T, ACT_DIMS): reference (relabeled) action at t, the training target.
    target: torch.Tensor | None = None
    #: bool (B, T): positions that count in the loss (False on padding past a run's end).
    loss_mask: torch.Tensor | None = None
    #: uint8 (B, T, 64, 64, 3), or None: the resized images of the image windows that are not
    #: in `image_groups` (zero elsewhere).
    image: torch.Tensor | None = None
    #: bool (B,): windows whose observation is an image (in `image` or in a group).
    has_image: torch.Tensor | None = None
    #: int64 (B,): index of the window's env in the sampler's env table (for per-env metrics).
    env_index: torch.Tensor | None = None
    #: image windows at their stored size, one group per shape; disjoint windows.
    image_groups: list[ImageGroup] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(B, T)."""
        return (int(self.obs.shape[0]), int(self.obs.shape[1]))

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device`."""
        moved = {
            f.name: v.to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        }
        groups = [g.to(device, non_blocking=non_blocking) for g in self.image_groups]
        return replace(self, **moved, image_groups=groups)

    def pin_memory(self) -> Batch:
        """Pinned copy (DataLoader calls this with `pin_memory=True`)."""
        pinned = {
            f.name: v.pin_memory()
            for f in fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        }
        groups = [g.pin_memory() for g in self.image_groups]
        return replace(self, **pinned, image_groups=groups)

    def select(self, rows: slice) -> Batch:
        """Windows `rows` of the batch (a micro-batch, or a DDP rank's share of a batch).

        Image groups keep the windows inside `rows`, renumbered from 0; a group left empty is
        dropped.
        """
        picked = {
            f.name: v[rows]
            for f in fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        }
        start, stop, step = rows.indices(self.shape[0])
        groups = []
        for g in self.image_groups:
            w = g.windows
            if step == 1:  # views: windows are ascending
                bounds = torch.tensor([start, stop], dtype=w.dtype, device=w.device)
                lo, hi = torch.searchsorted(w, bounds).tolist()
                new, frames = w[lo:hi] - start, g.frames[lo:hi]
            else:
                keep = (w >= start) & (w < stop) & ((w - start) % step == 0)
                new, frames = (w[keep] - start) // step, g.frames[keep]
            if len(new):
                groups.append(ImageGroup(new, frames))
        return replace(self, **picked, image_groups=groups)
