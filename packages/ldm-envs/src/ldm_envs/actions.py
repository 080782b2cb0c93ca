"""Actions: the dtype each action space travels in, and the check of a batch of actions.

Every action a pool sends is checked here first, so that a bad one is refused naming its env
rather than crashing a worker (which would be restarted, and fail again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ldm_envs.errors import ActionError
from ldm_envs.spaces import (
    BoxSpace,
    DiscreteSpace,
    MultiBinarySpace,
    MultiDiscreteSpace,
    SpaceModel,
)


def action_dtype(space: SpaceModel) -> np.dtype:
    """The dtype actions travel in."""
    if isinstance(space, BoxSpace):
        return np.dtype(space.dtype)
    if isinstance(space, MultiBinarySpace):
        return np.dtype(np.int8)
    return np.dtype(np.int64)


class ActionChecker:
    """Vectorized membership test of a batch of actions in one action space."""

    def __init__(self, space: SpaceModel) -> None:
        self.space = space
        self.dtype = action_dtype(space)
        self._discrete: tuple[int, int] | None = None
        if isinstance(space, BoxSpace):
            self.low, self.high = space.low_array(), space.high_array()
            self.shape: tuple[int, ...] = space.shape
        elif isinstance(space, DiscreteSpace):
            self.low, self.high = np.int64(space.start), np.int64(space.start + space.n - 1)
            self.shape = ()
            self._discrete = (int(space.start), int(space.start + space.n - 1))
        elif isinstance(space, MultiDiscreteSpace):
            start = np.asarray(space.start or [0] * len(space.nvec))
            self.low, self.high = start, start + np.asarray(space.nvec) - 1
            self.shape = (len(space.nvec),)
        else:
            self.low, self.high = np.int8(0), np.int8(1)
            self.shape = (space.n,)

    def _discrete_inside(self, arr: np.ndarray, n: int) -> bool:
        """The hot case, a batch of integer Discrete actions, checked in plain Python.

        Two NumPy reductions cost more than the whole test on a few ints, and SB3 checks
        actions at every step, right after its policy left the caches cold.
        """
        if self._discrete is None or arr.ndim != 1 or arr.dtype.kind not in "iu" or len(arr) != n:
            return False
        values = arr.tolist()
        low, high = self._discrete
        return low <= min(values) and max(values) <= high

    def bad_rows(self, actions: np.ndarray) -> np.ndarray:
        """Indices of rows outside the space (NaN, out of bounds, non-integer)."""
        if self._all_inside(actions):
            return np.empty(0, np.int64)
        flat = actions.reshape(actions.shape[0], -1)
        ok = np.all(
            (flat >= self.low.ravel() if np.ndim(self.low) else flat >= self.low)
            & (flat <= self.high.ravel() if np.ndim(self.high) else flat <= self.high),
            axis=1,
        )
        if self.dtype.kind in "iub" and actions.dtype.kind == "f":
            ok &= np.all(np.mod(flat, 1) == 0, axis=1)
        return np.flatnonzero(~ok)

    def _all_inside(self, actions: np.ndarray) -> bool:
        """One vectorized test for the common case; rows are only examined on failure."""
        if actions.dtype.kind in "iub":
            if np.ndim(self.low) == 0:  # scalar bounds: two reductions
                return bool(actions.min() >= self.low and actions.max() <= self.high)
            return bool(np.all(actions >= self.low) and np.all(actions <= self.high))
        if self.dtype.kind == "f":
            return bool(np.all(actions >= self.low) and np.all(actions <= self.high))
        return False

    def _numeric(self, arr: np.ndarray, env_ids: Sequence[str], first_index: int) -> np.ndarray:
        """Cast an object array of numbers; refuse actions that are not numbers, naming the env.

        A string, None or a complex value would otherwise reach NumPy's comparisons below and
        fail there with an error that names no env.

        Raises:
            ActionError: naming the first env whose action is not a number.
        """
        if arr.dtype.kind == "O" and _is_number(arr):
            return arr.astype(np.float64)
        rows = list(arr) if arr.ndim and len(arr) == len(env_ids) else [arr]
        i = next((k for k, row in enumerate(rows) if not _is_number(row)), 0)
        value = np.asarray(rows[i]).tolist()  # a plain Python value in the message
        raise ActionError(
            f"action {value!r} for env {env_ids[i]!r} (index {first_index + i}) is not a number "
            f"(dtype {arr.dtype}); action space {self.space.describe()} takes "
            f"{self.dtype.name} values"
        )

    def convert(
        self, actions: Any, n: int, env_ids: Sequence[str], first_index: int = 0
    ) -> np.ndarray:
        """Cast to the wire dtype, checking shape and membership.

        Raises:
            ActionError: naming the env ids whose actions are outside the declared space.
        """
        arr = np.asarray(actions)
        if self._discrete_inside(arr, n):
            return arr.astype(self.dtype, copy=False)
        if arr.dtype.kind not in "biuf":
            arr = self._numeric(arr, env_ids, first_index)
        if arr.shape[:1] != (n,) or arr.shape[1:] != self.shape:
            if arr.size == n * int(np.prod(self.shape)):
                arr = arr.reshape((n, *self.shape))
            else:
                raise ActionError(
                    f"actions of shape {arr.shape} do not fit {n} envs of action space "
                    f"{self.space.describe()} (expected {(n, *self.shape)})"
                )
        bad = self.bad_rows(arr)
        if bad.size:
            i = int(bad[0])
            raise ActionError(
                f"action {arr[i].tolist()!r} for env {env_ids[i]!r} (index {first_index + i}) is "
                f"outside its "
                f"action space {self.space.describe()}"
                + (f" and {bad.size - 1} more" if bad.size > 1 else "")
            )
        return arr.astype(self.dtype, copy=False)


def _is_number(value: Any) -> bool:
    """Whether `value` (a scalar, a row or a batch) holds only real numbers."""
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        return True
    if arr.dtype.kind != "O":
        return False
    try:
        arr.astype(np.float64)
    except (TypeError, ValueError):
        return False
    return True
