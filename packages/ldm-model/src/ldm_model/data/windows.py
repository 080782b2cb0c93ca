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
  A corrupt shard is quarantined and sampling stops naming it (`ldm_model.data.integrity`);
  measured cost in the README (`tools/bench_shard_checks.py`).
- Everything random is drawn up front from `np.random.default_rng([seed, step])` for the whole
  global batch, so a batch is a pure function of `(seed, step)`: DDP ranks build their own share
  of the same global batch, DataLoader workers need no seeding, and a resumed run sees the
  batches an uninterrupted one would have seen.

This module selects the runs and draws the windows; the row copy is `data.fill`, the unpadded
batch `data.packed`, and the run probabilities of each `weighting` `data.weighting`.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ldm_envs.dataset import CorruptShardError, ShardReader, read_index
from ldm_envs.paths import dataset_root
from ldm_envs.spaces import space_from_dict
from ldm_model.batch import Batch
from ldm_model.data.fill import OpenShard, fill_window, layout_of, raw_image
from ldm_model.data.integrity import corrupt_shard, missing_shard, stale_shard
from ldm_model.data.packed import PackedBatch, RawImages
from ldm_model.data.store_cache import open_store, pull_index, pull_shards
from ldm_model.data.weighting import WEIGHTINGS, Weighting, run_probabilities
from ldm_model.tokenizer import (
    ACT_DIMS,
    CODEC_TABLES,
    IMAGE_SIZE,
    OBS_DIMS,
    SpaceCodec,
    TokenizationError,
)

#: Schema of `WindowSampler.envs`.
ENVS_SCHEMA: dict[str, pl.DataType] = {
    "index": pl.Int64(),
    "library": pl.String(),
    "env_id": pl.String(),
    "runs": pl.Int64(),
    "transitions": pl.Int64(),
    "weight": pl.Float64(),
}


@dataclass(frozen=True)
class Draw:
    """The random part of a global batch: which run and which start row, per window."""

    #: int64 (B,): index of each window's run in the sampler's run list.
    runs: np.ndarray
    #: int64 (B,): first row of each window in its shard.
    starts: np.ndarray


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
        cache_bytes: int | None = None,
    ) -> None:
        if context < 1:
            raise ValueError(f"context must be at least 1, got {context}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if max_open_shards < 1:
            raise ValueError(f"max_open_shards must be at least 1, got {max_open_shards}")
        #: a store URL (`ldm_envs.store`) is read through a bounded local cache (`store_cache`)
        self.store = open_store(root, cache_bytes) if root is not None else None
        if self.store is not None:
            self.root = pull_index(self.store)
        else:
            self.root = Path(root) if root is not None else dataset_root()
        self.context = int(context)
        self.weighting: Weighting = weighting
        self.seed = int(seed)
        self.max_open_shards = int(max_open_shards)
        self.skipped: list[tuple[str, str]] = []
        self.check_shards = bool(check_shards)
        #: (record batch, column) pairs checked, per file identity: survives LRU reopenings
        self._checks: dict[tuple[int, int, int, int], set[tuple[int, str]]] = {}
        self._open: OrderedDict[int, OpenShard] = OrderedDict()
        runs, _ = read_index(self.root)
        runs = self._select(runs, libraries, env_ids)
        if self.store is not None:
            pull_shards(self.store, self.root, runs["shard_path"].to_list())
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
        prob = run_probabilities(self.weighting, envs, self._run_env, self._rows)
        cdf = np.cumsum(prob)
        cdf[-1] = 1.0  # rng.random() < 1: the last run ends the search
        self._cdf = cdf
        weight = np.bincount(self._run_env, weights=prob, minlength=envs.height)
        self.envs: pl.DataFrame = envs.with_columns(pl.Series("weight", weight)).select(
            list(ENVS_SCHEMA)
        )
        self._layouts = [layout_of(c) for c in self._codecs]
        self._tables = {
            name: np.stack([getattr(c, name) for c in self._codecs]) for name in CODEC_TABLES
        }
        self._codec_image = np.array([c.image_shape is not None for c in self._codecs])
        #: images resized on the host into `Batch.image` (the others travel at stored size)
        self._codec_full_image = np.array(
            [c.image_shape is not None and not raw_image(c.image_shape) for c in self._codecs]
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

    def batch_env_ids(self, step: int, batch_size: int) -> list[str]:
        """Env id of every window of the global batch at `step` (all ranks agree on it)."""
        drawn = self.draw(step, batch_size)
        env_ids = self.envs["env_id"].to_list()
        return [env_ids[int(e)] for e in self._run_env[drawn.runs]]

    # -- building ---------------------------------------------------------------------------

    def _shard(self, run: int) -> OpenShard:
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
        shard = OpenShard(reader)
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
                fill_window(
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
            tables={name: self._tables[name][codecs] for name in CODEC_TABLES},
            with_image=images,
            image=image,
            raw_images=raw_groups,
        )

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
