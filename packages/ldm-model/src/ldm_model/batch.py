"""The batch contract between the window sampler, the model, the trainer and the policy.

Values travel raw (floats, discrete values counted from 0) and padded to `OBS_DIMS`/`ACT_DIMS`;
the model bins them on its device (see `ldm_model.tokenizer` for why). `B` windows of `T`
consecutive transitions; per-window tables come from the env's `SpaceCodec`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


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
    #: uint8 (B, T, 64, 64, 3) or None when no window of the batch has images.
    image: torch.Tensor | None = None
    #: bool (B,): windows whose observation is an image.
    has_image: torch.Tensor | None = None
    #: int64 (B,): index of the window's env in the sampler's env table (for per-env metrics).
    env_index: torch.Tensor | None = None

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
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        """Pinned copy (DataLoader calls this with `pin_memory=True`)."""
        pinned = {
            f.name: v.pin_memory()
            for f in fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **pinned)

    def select(self, rows: slice) -> Batch:
        """Windows `rows` of the batch (a DDP rank's share of a global batch)."""
        picked = {
            f.name: v[rows]
            for f in fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **picked)
