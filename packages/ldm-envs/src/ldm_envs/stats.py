"""The paper's first and last 10% windows of a run (LDM-v0 section 4.2), defined once.

The ranking, the run filter, the dataset index, the normalized scores and the run figures all
compare a run's first and last windows; they agree only if every one cuts the same episodes,
so the share and the rounding live here, in the lowest package, and the others import them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np

#: Share of a run's episodes that forms its "first" and "last" windows.
WINDOW_FRACTION = 0.10

_S = TypeVar("_S", bound="Sequence[float] | np.ndarray")


def window_size(n: int, fraction: float = WINDOW_FRACTION) -> int:
    """Episodes in each window of a run of `n`: ceil(fraction * n), at least one, 0 when empty.

    The product is rounded to 9 decimals before the ceiling so that float noise (0.1 * 30 is
    not exactly 3 in binary) never adds an episode: 30 episodes give windows of 3.
    """
    if n <= 0:
        return 0
    return max(1, math.ceil(round(fraction * n, 9)))


def first_last_window(values: _S, fraction: float = WINDOW_FRACTION) -> tuple[_S, _S]:
    """The first and the last `window_size` values (both empty when `values` is)."""
    k = window_size(len(values), fraction)
    if k == 0:
        return values[:0], values[:0]  # type: ignore[return-value]
    return values[:k], values[-k:]  # type: ignore[return-value]


def first_last_means(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean of the first and of the last window; None for both when `values` is empty."""
    first, last = first_last_window(values)
    if not len(first):
        return None, None
    return sum(first) / len(first), sum(last) / len(last)


__all__ = ["WINDOW_FRACTION", "first_last_means", "first_last_window", "window_size"]
