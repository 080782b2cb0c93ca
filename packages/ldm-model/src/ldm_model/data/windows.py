"""The window sampler: batches of `context` consecutive transitions drawn from the shards.

A window is `T = context` consecutive rows of one shard (one reference run, or a part of one),
starting uniformly in `[0, rows - T]`; it crosses episode boundaries freely, as the model must
learn to carry context across episodes (evaluation keeps the context across a rollout's
episodes). A shard shorter than `T` gives one window padded at the end.

Why it is built the way it is (quality bar: >= 1M transitions/s of batch x context on two
cores, memory bounded by the batch):

- Shards are memory-mapped; each window slices the rows `[start - 1, start + T)` of the
  record batches that hold them (the extra row gives position 0 its previous action, reward and
  done) and writes them straight into preallocated `(B, T, ...)` numpy arrays, which become
  tensors without a copy. No per-row Python and no concatenation across record batches.
- Values stay raw (see `ldm_model.tokenizer`): the host only subtracts the discrete starts; the
  model bins on its device.
- Images smaller than 64x64x3 stay at their stored size, one `ImageGroup` per shape, and the
  model resizes them on its device: resizing a MiniGrid 7x7x3 image on the host turns 147 bytes
  into 12 KB and capped sampling at 0.1M transitions/s. Larger images are resized on the host
  (the resized copy is the smaller one), 64x64x3 ones copied.
- Padding is the costliest part of a batch (a CartPole transition is ~30 bytes, padded ~750),
  so `pack()` can build the windows compact (widths of the widest env of the batch) and
  `PackedBatch.to_batch()` pads later: DataLoader workers send compact batches and the
  trainer's process pads them (see `ldm_model.data.loader`).
- Open shards live in an LRU (`max_open_shards`); the views of a record batch are made on
  first use. Nothing is read whole: memory is the batch plus page cache the kernel may drop.
- What is read is checked: `ShardReader` recomputes a record batch's CRC-32s the first time
  it hands the batch out, and the sampler remembers what was checked across reopenings of a
  shard, so each batch is checked once per process (DataLoader workers check their own reads).
  A corrupt shard
  is quarantined and sampling stops naming it (`ldm_model.data.integrity`); measured cost in
  the README (`tools/bench_shard_checks.py`).
- Everything random is drawn up front from `np.random.default_rng([seed, step])` for the whole
  global batch, so a batch is a pure function of `(seed, step)`: DDP ranks build their own share
  of the same global batch, DataLoader workers need no seeding, and a resumed run sees the
  batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import bisect
import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from ldm_envs.dataset import CorruptShardError, ShardReader, read_index
from ldm_envs.paths import dataset_root
from ldm_envs.spaces import space_from_dict
from ldm_model.batch import Batch, ImageGroup
from ldm_model.data.integrity import corrupt_shard, missing_shard, stale_shard
from ldm_model.tokenizer import ACT_DIMS, IMAGE_SIZE, OBS_DIMS, SpaceCodec, TokenizationError

Weighting = Literal["transitions", "env", "library"]
WEIGHTINGS: tuple[str, ...] = ("transitions", "env", "library")

#: Schema of `WindowSampler.envs`.
ENVS_SCHEMA: dict[str, pl.DataType] = {
    "index": pl.Int64(),
    "library": pl.String(),
    "env_id": pl.String(),
    "runs": pl.Int64(),
    "transitions": pl.Int64(),
    "weight": pl.Float64(),
}

#: Per-window tables copied from the codec (name in `Batch` -> codec attribute).
_TABLES = ("obs_mask", "obs_discrete", "act_mask", "act_discrete", "act_low", "act_high")


@dataclass(frozen=True)
class Draw:
    """The random part of a global batch: which run and which start row, per window."""

    #: int64 (B,): index of each window's run in the sampler's run list.
    runs: np.ndarray
    #: int64 (B,): first row of each window in its shard.
    starts: np.ndarray


@dataclass(frozen=True)
class _Layout:
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


def _layout(codec: SpaceCodec) -> _Layout:
    resize = None
    if codec.image_shape is not None and codec.image_shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        h, w, c = codec.image_shape
        rows = (np.arange(IMAGE_SIZE) * h // IMAGE_SIZE).astype(np.intp)
        cols = (np.arange(IMAGE_SIZE) * w // IMAGE_SIZE).astype(np.intp)
        chans = None if c == 3 else (np.arange(3) % c).astype(np.intp)
        resize = (rows, cols, chans)
    obs_start = codec.obs_start if codec.obs_start.any() else None
    act_start = codec.act_start if codec.act_start.any() else None
    return _Layout(codec.obs_dims, codec.act_dims, obs_start, act_start, resize)


def _raw_image(shape: tuple[int, ...]) -> bool:
    """Images of fewer bytes than 64x64x3 travel at their stored size (resized by the model)."""
    return math.prod(shape) < IMAGE_SIZE * IMAGE_SIZE * 3


def _resize_into(
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


class _OpenShard:
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


class WindowSampler:
    """Deterministic batches of windows over the kept, relabeled runs of a dataset index.

    Selection: runs of `read_index(root)` with `kept == True` (a run without a filter decision
    yet counts as not kept) and a `ref_action` column, optionally restricted to `libraries` and
    `env_ids`. One `SpaceCodec` per distinct pair of spaces; a shard whose spaces the codec
    refuses (beyond the paper's limits) is left out, named in `skipped` and in a warning, so
    one odd env never stops a training run.

    Weighting of the window draw:

    - `"transitions"`: every transition equally likely (large envs dominate);
    - `"env"` (default): every env equally likely, then its runs in proportion to their rows;
    - `"library"`: every library equally likely, then its envs equally, then runs by rows.

    Args:
        root: dataset folder holding `index/` (default: `ldm_envs.paths.dataset_root()`).
        context: `T`, the number of consecutive transitions per window.
        weighting: see above.
        libraries: only these libraries (None: all).
        env_ids: only these env ids (None: all).
        seed: the batch at step `s` is a function of `(seed, s)` alone.
        max_open_shards: memory maps kept open (least recently used are closed).
        check_shards: check each record batch's CRC-32s on its first read (off only to
            measure what the check costs).

    Raises:
        FileNotFoundError: no index under `root`.
        ShardUnavailableError: a selected shard is gone (named, with why when it was
            quarantined); later, from `sample`/`pack`/`build`, a shard found corrupt (then
            quarantined) or gone.
        ValueError: nothing to sample (naming root and filters), an unknown library or env id,
            an unknown weighting, or a context below 1.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        context: int,
        weighting: Weighting = "env",
        libraries: Sequence[str] | None = None,
        env_ids: Sequence[str] | None = None,
        seed: int = 0,
        max_open_shards: int = 256,
        check_shards: bool = True,
    ) -> None:
        if context < 1:
            raise ValueError(f"context must be at least 1, got {context}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if max_open_shards < 1:
            raise ValueError(f"max_open_shards must be at least 1, got {max_open_shards}")
        self.root = Path(root) if root is not None else dataset_root()
        self.context = int(context)
        self.weighting: Weighting = weighting
        self.seed = int(seed)
        self.max_open_shards = int(max_open_shards)
        self.skipped: list[tuple[str, str]] = []
        self.check_shards = bool(check_shards)
        #: (record batch, column) pairs checked, per file identity: survives LRU reopenings
        self._checks: dict[tuple[int, int, int, int], set[tuple[int, str]]] = {}
        self._open: OrderedDict[int, _OpenShard] = OrderedDict()
        runs, _ = read_index(self.root)
        runs = self._select(runs, libraries, env_ids)
        self._setup(runs)
        for path in self._paths:  # a stat each: a deleted shard fails now, not at some step
            if not (self.root / path).exists():
                raise missing_shard(self.root, path)

    # -- selection --------------------------------------------------------------------------

    def _select(
        self,
        runs: pl.DataFrame,
        libraries: Sequence[str] | None,
        env_ids: Sequence[str] | None,
    ) -> pl.DataFrame:
        index = runs
        for column, wanted in (("library", libraries), ("env_id", env_ids)):
            if wanted is None:
                continue
            if isinstance(wanted, str):
                raise TypeError(f"{column} filter must be a sequence of names, not a string")
            known = set(index[column].to_list())
            unknown = sorted(set(wanted) - known)
            if unknown:
                raise ValueError(
                    f"unknown {column} {', '.join(unknown)} in the index of {self.root}; "
                    f"known: {', '.join(sorted(known)) or '(none)'}"
                )
            runs = runs.filter(pl.col(column).is_in(list(wanted)))
        filtered = runs.height
        runs = runs.filter(
            (pl.col("kept") == True) & pl.col("has_ref_action") & (pl.col("rows") > 0)  # noqa: E712
        )
        if runs.height == 0:
            raise ValueError(
                f"no run to sample under {self.root} (libraries={libraries}, env_ids={env_ids}): "
                f"{filtered} shard(s) match the filters, none is kept with reference actions "
                "and rows"
            )
        return runs.sort("shard_path")

    def _setup(self, runs: pl.DataFrame) -> None:
        codecs: dict[tuple[str, str], int] = {}
        self._codecs: list[SpaceCodec] = []
        refused: dict[tuple[str, str], str] = {}
        env_spaces: dict[tuple[str, str], tuple[tuple[str, str], str]] = {}
        kept_runs: list[dict[str, Any]] = []
        for run in runs.iter_rows(named=True):
            path = run["shard_path"]
            spaces = (run["observation_space"], run["action_space"])
            env = (run["library"], run["env_id"])
            if spaces not in codecs and spaces not in refused:
                try:
                    codec = SpaceCodec(
                        space_from_dict(json.loads(spaces[0])),
                        space_from_dict(json.loads(spaces[1])),
                    )
                except TokenizationError as exc:
                    refused[spaces] = str(exc)
                else:
                    codecs[spaces] = len(self._codecs)
                    self._codecs.append(codec)
            if spaces in refused:
                self.skipped.append((path, refused[spaces]))
                continue
            first = env_spaces.setdefault(env, (spaces, path))
            if first[0] != spaces:
                reason = f"its spaces differ from those of {first[1]} (same env)"
                self.skipped.append((path, reason))
                continue
            kept_runs.append({**run, "codec": codecs[spaces]})
        self._warn_skipped()
        if not kept_runs:
            raise ValueError(
                f"no run to sample under {self.root}: every selected shard was skipped "
                f"({len(self.skipped)}; see .skipped)"
            )
        table = pl.DataFrame(
            {
                "library": [r["library"] for r in kept_runs],
                "env_id": [r["env_id"] for r in kept_runs],
                "rows": [r["rows"] for r in kept_runs],
            },
            schema={"library": pl.String, "env_id": pl.String, "rows": pl.Int64},
        )
        envs = (
            table.group_by("library", "env_id")
            .agg(pl.len().cast(pl.Int64).alias("runs"), pl.col("rows").sum().alias("transitions"))
            .sort("library", "env_id")
            .with_row_index("index")
            .with_columns(pl.col("index").cast(pl.Int64))
        )
        env_of = {(lib, env): i for i, lib, env in envs.select("index", "library", "env_id").rows()}
        self._paths = [r["shard_path"] for r in kept_runs]
        self._rows = np.array([r["rows"] for r in kept_runs], np.int64)
        self._run_env = np.array([env_of[(r["library"], r["env_id"])] for r in kept_runs])
        self._run_codec = np.array([r["codec"] for r in kept_runs], np.int64)
        self._env_codec = np.zeros(envs.height, np.int64)
        self._env_codec[self._run_env] = self._run_codec
        # probability of each run per window
        env_rows = envs["transitions"].to_numpy()[self._run_env].astype(np.float64)
        if self.weighting == "transitions":
            prob = self._rows / self._rows.sum()
        else:
            share = np.full(envs.height, 1.0 / envs.height)
            if self.weighting == "library":
                libs = envs["library"].to_numpy()
                names, lib_of, per_lib = np.unique(libs, return_inverse=True, return_counts=True)
                share = 1.0 / (len(names) * per_lib[lib_of])
            prob = share[self._run_env] * self._rows / env_rows
        cdf = np.cumsum(prob)
        cdf[-1] = 1.0  # rng.random() < 1: the last run ends the search
        self._cdf = cdf
        weight = np.bincount(self._run_env, weights=prob, minlength=envs.height)
        self.envs: pl.DataFrame = envs.with_columns(pl.Series("weight", weight)).select(
            list(ENVS_SCHEMA)
        )
        self._layouts = [_layout(c) for c in self._codecs]
        self._tables = {
            name: np.stack([getattr(c, name) for c in self._codecs]) for name in _TABLES
        }
        self._codec_image = np.array([c.image_shape is not None for c in self._codecs])
        #: images resized on the host into `Batch.image` (the others travel at stored size)
        self._codec_full_image = np.array(
            [c.image_shape is not None and not _raw_image(c.image_shape) for c in self._codecs]
        )
        self._obs_dims = np.array([c.obs_dims for c in self._codecs], np.int64)
        self._act_dims = np.array([c.act_dims for c in self._codecs], np.int64)

    def _warn_skipped(self) -> None:
        """One warning per reason (a library of 250 wide envs gives one, not 750)."""
        by_reason: dict[str, list[str]] = {}
        for path, reason in self.skipped:
            by_reason.setdefault(reason, []).append(path)
        for reason, paths in by_reason.items():
            shown = ", ".join(str(self.root / p) for p in paths[:5])
            if len(paths) > 5:
                shown += f" and {len(paths) - 5} more (see .skipped)"
            warnings.warn(
                f"window sampler: skipping {len(paths)} shard(s), {shown}: {reason}", stacklevel=4
            )

    # -- tables -----------------------------------------------------------------------------

    @property
    def num_runs(self) -> int:
        """Number of shards the sampler draws from."""
        return len(self._paths)

    @property
    def transitions(self) -> int:
        """Rows over all selected shards."""
        return int(self._rows.sum())

    @property
    def run_paths(self) -> list[str]:
        """Shard path of each run (relative to `root`), in the order `Draw.runs` indexes."""
        return list(self._paths)

    @property
    def run_envs(self) -> np.ndarray:
        """Env index (row of `envs`) of each run."""
        return self._run_env.copy()

    def codec(self, env_index: int) -> SpaceCodec:
        """The codec of env `env_index` (a row of `envs`)."""
        if not 0 <= env_index < self.envs.height:
            raise IndexError(f"env index {env_index} out of range (0..{self.envs.height - 1})")
        return self._codecs[int(self._env_codec[env_index])]

    # -- drawing ----------------------------------------------------------------------------

    def draw(self, step: int, batch_size: int) -> Draw:
        """The runs and start rows of the global batch at `step` (all ranks together)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        rng = np.random.default_rng([self.seed, int(step)])
        runs = np.searchsorted(self._cdf, rng.random(batch_size), side="right")
        runs = np.minimum(runs, len(self._paths) - 1).astype(np.int64)
        last = np.maximum(self._rows[runs] - self.context, 0)
        starts = rng.integers(0, last + 1, dtype=np.int64)
        return Draw(runs=runs, starts=starts)

    def sample(self, step: int, batch_size: int, *, rank: int = 0, world: int = 1) -> Batch:
        """This rank's share of the global batch of `batch_size` windows at `step`.

        Rank `r` gets windows `r * B/world .. (r+1) * B/world - 1` of the global batch, so the
        ranks' batches concatenated equal the `world=1` batch. `image` is present on every rank
        as soon as one window of the global batch is an image resized on the host (64x64x3
        bytes or more), so that the ranks' batches have the same tensors; images at their
        stored size (`image_groups`) are on the ranks whose windows have them. A rank without
        image windows does not run the image encoder either way (the trainer's DDP finds the
        unused parameters).

        Raises:
            ValueError: `batch_size` is not a multiple of `world`, `rank` is out of range, or
                `step` is negative.
        """
        return self.pack(step, batch_size, rank=rank, world=world, compact=False).to_batch()

    def pack(
        self,
        step: int,
        batch_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        compact: bool = True,
    ) -> PackedBatch:
        """`sample()` before `to_batch()`: numpy arrays, `compact` ones unless told otherwise.

        What DataLoader workers return: padding obs to 128 dims and actions to 28 multiplies
        the bytes of a CartPole batch by ~25, and moving them between processes costs more than
        building them; the trainer's process pads (`PackedBatch.to_batch`).
        """
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} does not divide by world {world}")
        drawn = self.draw(step, batch_size)
        share = batch_size // world
        part = slice(rank * share, (rank + 1) * share)
        images = bool(self._codec_full_image[self._run_codec[drawn.runs]].any())
        return self._pack(drawn.runs[part], drawn.starts[part], images=images, compact=compact)

    # -- building ---------------------------------------------------------------------------

    def _shard(self, run: int) -> _OpenShard:
        shard = self._open.get(run)
        if shard is not None:
            self._open.move_to_end(run)
            return shard
        path = self.root / self._paths[run]
        try:
            reader = ShardReader(path, check=self.check_shards, checks=self._checks)
        except FileNotFoundError:
            raise missing_shard(self.root, self._paths[run]) from None
        except CorruptShardError as exc:
            raise corrupt_shard(self.root, self._paths[run], exc) from exc
        if reader.num_rows != self._rows[run] or not reader.has_ref_action:
            found = f"{reader.num_rows} rows" + ("" if reader.has_ref_action else ", no ref_action")
            reader.close()
            raise stale_shard(self.root, self._paths[run], found, int(self._rows[run]))
        shard = _OpenShard(reader)
        self._open[run] = shard
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)[1].close()
        return shard

    def build(self, runs: np.ndarray, starts: np.ndarray, *, images: bool | None = None) -> Batch:
        """The batch of windows starting at `starts[i]` in run `runs[i]`.

        Args:
            runs: int (B,) run indices (into `run_paths`).
            starts: int (B,) first rows.
            images: give an `image` tensor (None: when some window has an image of 64x64x3
                bytes or more; smaller images are in `image_groups` at their stored size).
        """
        return self._pack(runs, starts, images=images, compact=False).to_batch()

    def _pack(
        self, runs: np.ndarray, starts: np.ndarray, *, images: bool | None, compact: bool
    ) -> PackedBatch:
        runs = np.asarray(runs, np.int64)
        starts = np.asarray(starts, np.int64)
        b, t = len(runs), self.context
        codecs = self._run_codec[runs]
        is_image = self._codec_image[codecs]
        full = self._codec_full_image[codecs]  # resized on the host into `image`
        if images is None:
            images = bool(full.any())
        lengths = np.minimum(self._rows[runs] - starts, t)
        if (starts < 0).any() or (lengths < 1).any():
            raise ValueError("a window starts outside its shard")
        if compact:
            obs_width = int(self._obs_dims[codecs].max(initial=0))
            act_width = int(self._act_dims[codecs].max(initial=0))
        else:
            obs_width, act_width = OBS_DIMS, ACT_DIMS
        obs = np.zeros((b, t, obs_width), np.float32)
        prev_action = np.zeros((b, t, act_width), np.float32)
        target = np.zeros((b, t, act_width), np.float32)
        prev_reward = np.zeros((b, t), np.float32)
        prev_done = np.zeros((b, t), np.bool_)
        # where each window's images go: raw into its shape's group, or resized into `image`
        image_dst: list[np.ndarray | None] = [None] * b
        raw_groups: list[RawImages] = []
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for c in np.unique(codecs[is_image & ~full]).tolist():
            shape = self._codecs[c].image_shape
            assert shape is not None
            by_shape.setdefault(shape, []).append(c)
        for shape, members in by_shape.items():
            windows = np.flatnonzero(np.isin(codecs, members))
            group = RawImages(windows, np.zeros((len(windows), t, *shape), np.uint8))
            raw_groups.append(group)
            for j, w in enumerate(windows.tolist()):
                image_dst[w] = group.images[j]
        image = None
        if full.any() or (images and not compact):
            image = np.zeros((b, t, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
            for w in np.flatnonzero(full).tolist():
                image_dst[w] = image[w]
        for i in range(b):
            try:
                self._fill(
                    i,
                    self._shard(int(runs[i])),
                    self._layouts[codecs[i]],
                    int(starts[i]),
                    int(lengths[i]),
                    obs,
                    prev_action,
                    target,
                    prev_reward,
                    prev_done,
                    image_dst[i],
                )
            except CorruptShardError as exc:  # a record batch failed its CRC on first read
                run = int(runs[i])
                shard = self._open.pop(run, None)
                if shard is not None:
                    shard.close()
                raise corrupt_shard(self.root, self._paths[run], exc) from exc
        return PackedBatch(
            obs=obs,
            prev_action=prev_action,
            target=target,
            prev_reward=prev_reward,
            prev_done=prev_done,
            lengths=lengths,
            starts=starts,
            has_image=is_image,
            env_index=self._run_env[runs],
            tables={name: self._tables[name][codecs] for name in _TABLES},
            with_image=images,
            image=image,
            raw_images=raw_groups,
        )

    @staticmethod
    def _fill(
        i: int,
        shard: _OpenShard,
        layout: _Layout,
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
                        _resize_into(raw[s0:s1], layout.image_resize, image[p0:p1])
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

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every open shard (they reopen on demand)."""
        while self._open:
            self._open.popitem(last=False)[1].close()

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy: open memory maps stay behind, they reopen lazily
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        state["_checks"] = {}  # a worker checks what it reads itself (once per process)
        return state

    def __repr__(self) -> str:
        return (
            f"WindowSampler({str(self.root)!r}, context={self.context}, "
            f"weighting={self.weighting!r}, envs={self.envs.height}, runs={self.num_runs}, "
            f"transitions={self.transitions}, skipped={len(self.skipped)})"
        )


__all__ = [
    "ENVS_SCHEMA",
    "WEIGHTINGS",
    "Draw",
    "PackedBatch",
    "RawImages",
    "Weighting",
    "WindowSampler",
]
