"""Reading shards: `ShardReader`, memory-mapped, checking the CRC-32 of what it hands out."""

from __future__ import annotations

import bisect
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
from pydantic import ValidationError

from ldm_envs.dataset.errors import CorruptShardError
from ldm_envs.dataset.shards.episodes import _EpisodeChecker, _restart_problem
from ldm_envs.dataset.shards.format import (
    _META_CRC_KEY,
    _META_KEY,
    EPISODE_COLUMNS,
    FORMAT_VERSION,
    REF_ACTION,
    RESTARTED,
    ShardMeta,
    _column_layouts,
    _crc,
    _parse_batch_metadata,
    _schema_text,
    _view,
    shard_schema,
)

#: What a reader remembers it has checked: `(record batch, column)` pairs per file identity.
ReadChecks = dict[tuple[int, int, int, int], set[tuple[int, str]]]


class ShardReader:
    """Read a shard through a memory map; columns and row slices are views of the map.

    Opening checks the structure (complete IPC file, expected schema for the stored spaces,
    metadata and its CRC, per-batch row counts) and raises `CorruptShardError` naming the file
    otherwise. Reads check what they read: a column of a record batch has its CRC-32 recomputed
    the first time it is handed out (`check=False` turns that off, for benchmarks). The cost is
    one pass over the bytes actually read, ~6 GB/s with zlib's CRC-32, once. `verify()` reads
    everything and checks the data's CRCs, flags and episode rules.

    Args:
        path: the shard file.
        check: check the CRC-32 of each (record batch, column) on its first read.
        checks: where to remember what was checked, keyed by the file's identity (device,
            inode, size, mtime): pass the same mapping to readers that reopen the same files
            (an LRU of open shards) so that a batch is checked once, not at every reopen.
            A file replaced or rewritten has another identity and is checked again.
    Arrays handed out are read-only views of the map whenever they lie in one record batch
    (`rows()` within a batch, `column()` of a one-batch shard); spanning batches costs a copy
    of just the rows asked for. A reader pickles by path (e.g. into DataLoader workers).
    """

    meta: ShardMeta
    num_rows: int
    path: Path
    has_ref_action: bool
    has_restarted: bool

    def __init__(self, path: Path, *, check: bool = True, checks: ReadChecks | None = None) -> None:
        self.path = Path(path)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no shard at {self.path}") from None
        #: (device, inode, size, mtime in ns): what `checks` remembers a file by.
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.check = check
        self._checked = set() if checks is None else checks.setdefault(self.identity, set())
        try:
            self._source = pa.memory_map(str(self.path), "r")
        except (OSError, pa.ArrowException) as exc:
            raise CorruptShardError(self.path, f"cannot be memory-mapped ({exc})") from exc
        try:
            self._open()
        except CorruptShardError:
            self._source.close()
            raise
        except Exception as exc:  # any failure to parse the structure means corruption
            self._source.close()
            raise self._corrupt(f"unreadable structure ({type(exc).__name__}: {exc})") from exc
        except BaseException:
            self._source.close()
            raise
        self._views: dict[int, dict[str, np.ndarray]] = {}
        self._episodes: pl.DataFrame | None = None

    def _corrupt(self, reason: str) -> CorruptShardError:
        return CorruptShardError(self.path, reason)

    def _open(self) -> None:
        try:
            self._reader = ipc.open_file(self._source)
            schema = self._reader.schema
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise self._corrupt(
                f"not a complete Arrow IPC file, truncated or overwritten ({exc})"
            ) from exc
        metadata = schema.metadata or {}
        raw = metadata.get(_META_KEY)
        if raw is None:
            raise self._corrupt("no ldm shard metadata in the Arrow schema (not an ldm shard?)")
        crc = metadata.get(_META_CRC_KEY, b"")
        if crc != str(zlib.crc32(raw)).encode():
            raise self._corrupt("shard metadata does not match its CRC-32 (flipped bytes?)")
        try:
            probe = json.loads(raw)
        except ValueError as exc:
            raise self._corrupt(f"shard metadata is not JSON ({exc})") from exc
        version = probe.get("format_version") if isinstance(probe, dict) else None
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise self._corrupt(
                f"format version {version!r}; this ldm reads versions 1 to {FORMAT_VERSION}"
            )
        try:
            self.meta = ShardMeta.model_validate_json(raw)
        except ValidationError as exc:
            raise self._corrupt(f"invalid shard metadata: {exc}") from exc
        names = schema.names
        self.has_ref_action = REF_ACTION in names
        self.has_restarted = RESTARTED in names  # format 1: no column, no restart marked
        expected = shard_schema(
            self.meta, ref_action=self.has_ref_action, restarted=self.has_restarted
        )
        if not schema.remove_metadata().equals(expected.remove_metadata()):
            raise self._corrupt(
                f"schema {_schema_text(schema)} differs from the one its spaces imply: "
                f"{_schema_text(expected)}"
            )
        self.columns: tuple[str, ...] = tuple(names)
        layouts = _column_layouts(self.meta)
        self._layouts = {n: layouts[n] for n in names}
        self._batches: list[int] = []
        self._starts: list[int] = []
        self._crcs: list[dict[str, Any]] = []
        total = 0
        try:
            count = self._reader.num_record_batches
            for i in range(count):
                batch, custom = self._reader.get_batch_with_custom_metadata(i)
                rows = batch.num_rows
                info = _parse_batch_metadata(custom)
                if info is None or info.get("rows") != rows:
                    raise self._corrupt(f"record batch {i}: row count or CRC metadata is wrong")
                if rows:
                    crcs = info.get("crc32")
                    self._batches.append(i)
                    self._starts.append(total)
                    self._crcs.append(crcs if isinstance(crcs, dict) else {})
                    total += rows
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise self._corrupt(f"unreadable record batch structure ({exc})") from exc
        self._ends = [*self._starts[1:], total]
        self.num_rows = total

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the memory map (views handed out keep their buffers alive)."""
        self._views.clear()
        self._source.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.path, self.check))

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"ShardReader({str(self.path)!r}, {m.library}/{m.env_id} {m.candidate} "
            f"seed={m.seed} part={m.part}, rows={self.num_rows})"
        )

    # -- access -----------------------------------------------------------------------------

    @property
    def num_batches(self) -> int:
        """Number of (non-empty) record batches."""
        return len(self._batches)

    def _batch_views(self, k: int, name: str | None = None) -> dict[str, np.ndarray]:
        """Views of record batch `k`; the column `name` (None: all) checked before use."""
        views = self._views.get(k)
        if views is None:
            i = self._batches[k]
            try:
                batch = self._reader.get_batch(i)
                views = {
                    name: _view(batch.column(j), *self._layouts[name])
                    for j, name in enumerate(self.columns)
                }
            except Exception as exc:  # any failure to read the data means corruption
                raise self._corrupt(f"record batch {i}: {type(exc).__name__}: {exc}") from exc
            self._views[k] = views
        if self.check:
            for col in self.columns if name is None else (name,):
                if (k, col) not in self._checked:
                    self._check_column(k, col, views[col])
        return views

    def _check_column(self, k: int, name: str, view: np.ndarray) -> None:
        """Compare a column of batch `k` with its stored CRC-32; remember it when it matches."""
        if self._crcs[k].get(name) != _crc(view):
            start = self._starts[k]
            raise self._corrupt(
                f"record batch {self._batches[k]} (rows {start}-{start + len(view) - 1}): "
                f"column {name!r} does not match its CRC-32 (flipped bytes?)"
            )
        self._checked.add((k, name))

    def batches(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield `(first_row, columns)` per record batch: stream a shard in bounded memory."""
        for k, start in enumerate(self._starts):
            yield start, self._batch_views(k)

    def _empty(self, name: str) -> np.ndarray:
        dtype, shape = self._layouts[name]
        return np.empty((0, *shape), dtype)

    def _check_name(self, name: str) -> None:
        if name not in self._layouts:
            hint = " (run write_ref_actions first)" if name == REF_ACTION else ""
            raise KeyError(f"shard {self.path} has no column {name!r}{hint}; has {self.columns}")

    def column_layout(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """The dtype and per-row shape of a column (what `column(name)[i]` is)."""
        self._check_name(name)
        return self._layouts[name]

    def column(self, name: str) -> np.ndarray:
        """A whole column: a view of the map for a one-batch shard, else one concatenated copy.

        Prefer `rows()` or `batches()` over a large multi-batch shard. `restarted` of a
        format-1 shard, which has no such column, is all False (no restart was marked then).
        """
        if name == RESTARTED and not self.has_restarted:
            return np.zeros(self.num_rows, np.bool_)
        self._check_name(name)
        if not self._batches:
            return self._empty(name)
        if len(self._batches) == 1:
            return self._batch_views(0, name)[name]
        return np.concatenate([self._batch_views(k, name)[name] for k in range(len(self._batches))])

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows `[start, stop)` of every column, touching only the batches that hold them."""
        if not 0 <= start <= stop <= self.num_rows:
            raise IndexError(
                f"rows [{start}, {stop}) out of range for shard {self.path} "
                f"with {self.num_rows} rows"
            )
        if start == stop:
            return {name: self._empty(name) for name in self.columns}
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_right(self._starts, stop - 1) - 1
        if first == last:
            offset = self._starts[first]
            views = self._batch_views(first)
            return {name: a[start - offset : stop - offset] for name, a in views.items()}
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in self.columns}
        for k in range(first, last + 1):
            lo = max(start, self._starts[k]) - self._starts[k]
            hi = min(stop, self._ends[k]) - self._starts[k]
            for name, a in self._batch_views(k).items():
                pieces[name].append(a[lo:hi])
        return {name: np.concatenate(p) for name, p in pieces.items()}

    def episodes(self) -> pl.DataFrame:
        """One row per episode, in row order.

        Columns: `episode`, `start` (row offset), `length`, `return` (float64 sum of rewards),
        `terminated` (its last row is terminated), `complete` (its last row is terminated or
        truncated, and not by a worker restart; an episode cut by the end of the shard or of
        the run, or by a restart, is not complete), `restarted` (cut by a worker restart).
        """
        if self._episodes is None:
            episode = self.column("episode")
            if len(episode) == 0:
                starts = np.empty(0, np.int64)
            else:
                starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
            lengths = np.diff(np.r_[starts, len(episode)])
            last = starts + lengths - 1
            if len(starts):
                reward = self.column("reward").astype(np.float64)
                returns = np.add.reduceat(reward, starts)
                term = self.column("terminated")[last]
                trunc = self.column("truncated")[last]
                cut = self.column(RESTARTED)[last]
            else:
                returns = np.empty(0, np.float64)
                term = trunc = cut = np.empty(0, np.bool_)
            self._episodes = pl.DataFrame(
                {
                    "episode": episode[starts].astype(np.int64),
                    "start": starts.astype(np.int64),
                    "length": lengths.astype(np.int64),
                    "return": returns,
                    "terminated": term.astype(np.bool_),
                    "complete": ((term | trunc) & ~cut).astype(np.bool_),
                    "restarted": cut.astype(np.bool_),
                },
                schema=EPISODE_COLUMNS,
            )
        return self._episodes

    def verify(self) -> None:
        """Read everything: data CRCs, 0/1 flags, row counts and episode rules.

        Raises:
            CorruptShardError: naming the file, the record batch or row, and what is wrong.
        """
        checker = _EpisodeChecker()
        total = 0
        try:
            count = self._reader.num_record_batches
            for i in range(count):
                batch, custom = self._reader.get_batch_with_custom_metadata(i)
                info = _parse_batch_metadata(custom)
                if info is None or info.get("rows") != batch.num_rows:
                    raise self._corrupt(f"record batch {i}: row count or CRC metadata is wrong")
                if batch.num_rows == 0:
                    continue
                crcs = info.get("crc32", {})
                views = {
                    name: _view(batch.column(j), *self._layouts[name])
                    for j, name in enumerate(self.columns)
                }
                for name, arr in views.items():
                    if crcs.get(name) != _crc(arr):
                        raise self._corrupt(
                            f"record batch {i} (rows {total}-{total + len(arr) - 1}): column "
                            f"{name!r} does not match its CRC-32 (flipped bytes?)"
                        )
                flags = ("terminated", "truncated", RESTARTED)
                for name in (f for f in flags if f in views):
                    raw = views[name].view(np.uint8)
                    if (raw > 1).any():
                        raise self._corrupt(f"record batch {i}: {name} holds values beyond 0/1")
                done = views["terminated"] | views["truncated"]
                problem = checker.feed(views["episode"], views["step"], done)
                if problem is None and RESTARTED in views:
                    problem = _restart_problem(views[RESTARTED], done, total)
                if problem is not None:
                    raise self._corrupt(problem)
                total += batch.num_rows
        except CorruptShardError:
            raise
        except Exception as exc:  # any failure to read the data means corruption
            raise self._corrupt(f"unreadable data ({type(exc).__name__}: {exc})") from exc
        if total != self.num_rows:
            raise self._corrupt(f"{total} rows read, {self.num_rows} expected")
        self._checked.update((k, name) for k in range(len(self._batches)) for name in self.columns)


def _reopen(path: Path, check: bool) -> ShardReader:
    """Unpickle a reader: open the file again (a memory map does not travel)."""
    return ShardReader(path, check=check)
