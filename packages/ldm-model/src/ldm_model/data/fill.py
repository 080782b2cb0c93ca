"""Copying a window's shard rows into a batch's preallocated arrays, fast.

Each window slices the rows `[start - 1, start + T)` of the memory-mapped record batches that
hold them (the extra row gives position 0 its previous action, reward and done) and writes them
straight into preallocated `(B, T, ...)` numpy arrays: no per-row Python and no concatenation
across record batches. What the copy needs of a codec (`Layout`) is computed once per codec,
and the views of a record batch (`OpenShard`) once per opening of its shard.

Images smaller than 64x64x3 are copied at their stored size (the model resizes them on its
device: resizing a MiniGrid 7x7x3 image on the host turns 147 bytes into 12 KB and capped
sampling at 0.1M transitions/s); larger ones are resized on the host (`resize_into`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from ldm_envs.dataset import ShardReader
from ldm_model.tokenizer import IMAGE_SIZE, SpaceCodec

__all__ = ["Layout", "OpenShard", "fill_window", "layout_of", "raw_image", "resize_into"]


@dataclass(frozen=True)
class Layout:
    """What the copy loop needs of a codec, computed once (not per window)."""

    obs_dims: int
    act_dims: int
    #: float32 (obs_dims,) to subtract, or None when every start is 0 (Box: a plain copy).
    obs_start: np.ndarray | None
    #: int64 (act_dims,) to subtract, or None when every start is 0.
    act_start: np.ndarray | None
    #: images only: source rows, columns and channels (None: all three) of the resized image
    #: (`resize_images`'s nearest neighbour); None when the image is already 64x64x3.
    image_resize: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None


def layout_of(codec: SpaceCodec) -> Layout:
    """What the copy loop needs of `codec` (once per codec, not per window)."""
    resize = None
    if codec.image_shape is not None and codec.image_shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        h, w, c = codec.image_shape
        rows = (np.arange(IMAGE_SIZE) * h // IMAGE_SIZE).astype(np.intp)
        cols = (np.arange(IMAGE_SIZE) * w // IMAGE_SIZE).astype(np.intp)
        chans = None if c == 3 else (np.arange(3) % c).astype(np.intp)
        resize = (rows, cols, chans)
    obs_start = codec.obs_start if codec.obs_start.any() else None
    act_start = codec.act_start if codec.act_start.any() else None
    return Layout(codec.obs_dims, codec.act_dims, obs_start, act_start, resize)


def raw_image(shape: tuple[int, ...]) -> bool:
    """Images of fewer bytes than 64x64x3 travel at their stored size (resized by the model)."""
    return math.prod(shape) < IMAGE_SIZE * IMAGE_SIZE * 3


def resize_into(
    src: np.ndarray,
    resize: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None,
    out: np.ndarray,
) -> None:
    """`out[:] = resize_images(src)` without a temporary of the output's size.

    Columns and channels first (a small array), then rows: the last gather copies whole
    64x3-byte rows, where one gather of every pixel would copy byte by byte (~10x slower).
    """
    if resize is None:
        np.copyto(out, src)
        return
    rows, cols, chans = resize
    narrow = np.take(src, cols, axis=2)  # (n, h, 64, c)
    if chans is not None:
        narrow = narrow[..., chans]
    np.take(narrow, rows, axis=1, out=out, mode="clip")


class OpenShard:
    """A reader plus flat views of its record batches, made on first use.

    Lazy because a shard opens whenever the LRU of open shards missed, and making the views of
    every record batch of a long run up front costs more than opening the reader.
    """

    __slots__ = ("ends", "pieces", "reader", "starts")

    def __init__(self, reader: ShardReader) -> None:
        self.reader = reader
        starts = getattr(reader, "_starts", None)  # first row of each record batch
        if not isinstance(starts, list):  # pragma: no cover - the reader changed: walk it
            starts = [first for first, _ in reader.batches()]
        self.starts: list[int] = starts
        self.ends: list[int] = [*starts[1:], reader.num_rows]
        self.pieces: dict[int, tuple[np.ndarray, ...]] = {}

    def piece(self, k: int) -> tuple[np.ndarray, ...]:
        """Views of record batch `k` (obs, raw obs, action, ref_action, reward, flags).

        obs, action and ref_action are flattened to (rows, dims); raw obs keeps its shape.
        """
        views = self.pieces.get(k)
        if views is None:
            first, end = self.starts[k], self.ends[k]
            cols = self.reader.rows(first, end)  # one record batch: views of the map
            n = end - first
            views = (
                cols["obs"].reshape(n, -1),
                cols["obs"],
                cols["action"].reshape(n, -1),
                cols["ref_action"].reshape(n, -1),
                cols["reward"],
                cols["terminated"],
                cols["truncated"],
            )
            self.pieces[k] = views
        return views

    def close(self) -> None:
        self.pieces = {}
        self.reader.close()


def fill_window(
    i: int,
    shard: OpenShard,
    layout: Layout,
    start: int,
    n: int,
    obs: np.ndarray,
    prev_action: np.ndarray,
    target: np.ndarray,
    prev_reward: np.ndarray,
    prev_done: np.ndarray,
    image: np.ndarray | None,
) -> None:
    """Copy rows `[start - 1, start + n)` of `shard` into window `i` of the outputs.

    Position `p` holds row `start + p` (obs, target) and row `start + p - 1` (prev_*),
    one record batch at a time: a window spanning batches is never concatenated first.
    `image` is this window's image destination: `(T, 64, 64, 3)` (resized into) or
    `(T, H, W, C)` (copied into), None for a vector env.
    """
    stop = start + n
    lo = max(start - 1, 0)
    k = bisect.bisect_right(shard.starts, lo) - 1
    d, a = layout.obs_dims, layout.act_dims
    # slice assignment rather than np.copyto: a third of the call overhead, which is what
    # a window of 64 rows costs (the assignment casts like casting="unsafe")
    while True:
        first, end = shard.starts[k], shard.ends[k]
        x, raw, act, ref, rew, term, trunc = shard.piece(k)
        # this rows: [max(start, first), min(stop, end)) -> positions from row - start
        r0, r1 = max(start, first), min(stop, end)
        if r1 > r0:
            p0, p1, s0, s1 = r0 - start, r1 - start, r0 - first, r1 - first
            if d:
                if layout.obs_start is None:
                    obs[i, p0:p1, :d] = x[s0:s1]
                else:
                    np.subtract(x[s0:s1], layout.obs_start, out=obs[i, p0:p1, :d])
            if image is not None:
                if image.shape[1:] == raw.shape[1:]:
                    image[p0:p1] = raw[s0:s1]
                else:
                    resize_into(raw[s0:s1], layout.image_resize, image[p0:p1])
            if layout.act_start is None:
                target[i, p0:p1, :a] = ref[s0:s1]
            else:
                np.subtract(
                    ref[s0:s1], layout.act_start, out=target[i, p0:p1, :a], casting="unsafe"
                )
        # previous rows: [max(start - 1, first), min(stop - 1, end)) -> positions + 1
        q0, q1 = max(lo, first), min(stop - 1, end)
        if q1 > q0:
            p0, p1, s0, s1 = q0 - start + 1, q1 - start + 1, q0 - first, q1 - first
            if layout.act_start is None:
                prev_action[i, p0:p1, :a] = act[s0:s1]
            else:
                np.subtract(
                    act[s0:s1],
                    layout.act_start,
                    out=prev_action[i, p0:p1, :a],
                    casting="unsafe",
                )
            prev_reward[i, p0:p1] = rew[s0:s1]
            np.logical_or(term[s0:s1], trunc[s0:s1], out=prev_done[i, p0:p1])
        if end >= stop:
            return
        k += 1
