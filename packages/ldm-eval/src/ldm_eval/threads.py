"""Torch's thread count for a block, restored after it.

The model acts in the evaluating process while env workers step in theirs: on a small or busy
machine one torch thread is often several times faster per step than torch's default (an
evaluation during training took 31-38 s with the default and 1.5 s with one thread on 2 cores).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch threads (None: leave torch's setting alone)."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
