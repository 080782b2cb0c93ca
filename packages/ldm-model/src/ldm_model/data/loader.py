"""A DataLoader over training steps: step `s` maps to `sampler.sample(s, ...)`.

Why steps rather than windows: a batch is a pure function of `(seed, step)`, so the loader is a
map from step numbers to batches. Workers build whole batches in parallel (the copy loop runs
in their processes, not the trainer's), the order is the step order, and resuming at step `k`
is `make_loader(..., start_step=k)`: the same batches an uninterrupted run would have seen.

Why workers send `PackedBatch`es rather than `Batch`es: a tensor leaving a worker is copied into
shared memory page by page, and a padded batch (128 obs dims, 28 action dims) is ~25x the bytes
of a CartPole one; measured, the transfer cost 5-10x the building. Workers send the compact
numpy arrays through the pipe and the loader pads them in the trainer's process, straight into
pinned memory when asked (one copy instead of two). Images smaller than 64x64x3 are not resized
on the way: they reach the model's device at their stored size (`Batch.image_groups`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ldm_model.batch import Batch
from ldm_model.data.windows import PackedBatch, WindowSampler


class StepBatches(Dataset[Any]):
    """Map-style dataset whose item `step` is this rank's share of the batch at `step`.

    Items are `Batch`es, or with `packed` the compact `PackedBatch`es that `make_loader`'s
    workers send (`to_batch()` turns one into the `Batch`). It has no length: any non-negative
    step is an item, and the loader's sampler says which.
    """

    def __init__(
        self,
        sampler: WindowSampler,
        *,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        packed: bool = False,
    ) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} does not divide by world {world}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world = int(world)
        self.packed = packed

    def __getitem__(self, step: int) -> Batch | PackedBatch:
        if self.packed:
            return self.sampler.pack(step, self.batch_size, rank=self.rank, world=self.world)
        return self.sampler.sample(step, self.batch_size, rank=self.rank, world=self.world)


def _pass_batch(batch: Any) -> Any:
    """Collate for `batch_size=None`: the dataset already made the batch."""
    return batch


class StepLoader(DataLoader[Any]):
    """A DataLoader that unpacks the workers' `PackedBatch`es into `Batch`es as they arrive."""

    def __init__(self, *args: Any, unpack: bool, pin: bool, **kwargs: Any) -> None:
        self.unpack = unpack
        self.pin = pin
        super().__init__(*args, **kwargs)

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        items = super().__iter__()
        if not self.unpack:
            return items
        return (item.to_batch(pin_memory=self.pin) for item in items)


def make_loader(
    sampler: WindowSampler,
    *,
    batch_size: int,
    start_step: int,
    steps: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> StepLoader:
    """Batches of steps `start_step .. start_step + steps - 1`, in order.

    Args:
        sampler: the window sampler (copied into each worker; open shards are not).
        batch_size: global batch size (all ranks); each rank gets `batch_size / world`.
        start_step: first step (the step to resume at).
        steps: number of batches.
        rank: this process's DDP rank.
        world: DDP world size.
        num_workers: worker processes (0: build batches in the calling process). Workers
            persist across epochs of the loader.
        pin_memory: batches in pinned memory (for asynchronous copies to a GPU); ignored
            with a warning without CUDA, as DataLoader does.
        prefetch_factor: batches each worker builds ahead (default 2 with workers).

    Returns:
        A DataLoader yielding `Batch`es; `len()` is `steps`.
    """
    if start_step < 0 or steps < 0:
        raise ValueError(f"start_step and steps must be non-negative, got {start_step}, {steps}")
    workers = num_workers > 0
    if workers and pin_memory and not torch.cuda.is_available():
        warnings.warn("pin_memory=True but CUDA is not available: not pinning", stacklevel=2)
        pin_memory = False
    dataset = StepBatches(sampler, batch_size=batch_size, rank=rank, world=world, packed=workers)
    return StepLoader(
        dataset,
        unpack=workers,
        pin=pin_memory and workers,
        batch_size=None,
        sampler=range(start_step, start_step + steps),
        num_workers=num_workers,
        collate_fn=_pass_batch,
        # with workers, to_batch pins in place; without, DataLoader pins the Batch
        pin_memory=pin_memory and not workers,
        persistent_workers=workers,
        prefetch_factor=prefetch_factor if workers else None,
    )


__all__ = ["StepBatches", "StepLoader", "make_loader"]
