"""Trajectory shards: one Arrow IPC file per reference run (or part of one), memory-mapped on read.

Layout (format version 2), one record batch per `batch_rows` rows, uncompressed so that every
column of a batch is a plain buffer of the memory map:

| column | Arrow type | `column()` gives |
| --- | --- | --- |
| `obs` | `fixed_size_list<item: D not null>[prod(shape)]` | `(n, *shape)` in the space dtype |
| `action` | same, for the action space | `(n,)` for Discrete, `(n, k)` otherwise |
| `reward` | `float32` | `(n,)` float32 |
| `terminated`, `truncated` | `uint8` (0/1) | `(n,)` bool (a view: numpy bools are bytes) |
| `episode`, `step` | `int64` | `(n,)` int64 |
| `restarted` | `uint8` (0/1); format 2 on | `(n,)` bool; all False for a format-1 shard |
| `ref_action` | as `action`; only once `write_ref_actions` ran | as `action` |

`D` is the space's dtype: Box's own (bool stored as uint8), int64 for Discrete and MultiDiscrete,
int8 for MultiBinary, the same dtypes the worker hands out. Every observation and action column
is a fixed-size list, Discrete included (size 1), so that all rows are flat buffers.

The schema metadata holds the `ShardMeta` JSON (`ldm.shard`) and its CRC-32; each record batch's
custom metadata holds its row count and the CRC-32 of each column's data (`ldm.crc32`).
Opening a shard checks the structure (footer, schema, metadata), which is cheap; every read
then checks what it reads: the first time a reader hands out a column of a record batch, it
recomputes that column's CRC-32 (once per batch and column; readers sharing a `checks` mapping,
such as a sampler reopening shards, share that memory). So flipped bytes are never handed out,
and the error names the file, the batch and the column. `ShardReader.verify()` reads everything
at once, flags and episode rules included.

`restarted` is set on the last row of an episode cut short because its env's worker crashed
or hung and was restarted (the row is also `truncated`: the training algorithm saw the episode
end). Such an episode says nothing about the policy, so `episodes()` reports it as not
`complete`, and every statistic over complete episodes (the index's first/last-10% means, the
evaluation's normalization) leaves it out. Format-1 shards, written before the column existed,
have no restart marked.

Episodes: each episode is one contiguous block of rows whose `step` increases by one;
`terminated`/`truncated` may only be set on a block's last row; a block without either is an
incomplete episode (allowed anywhere, typically the last). Episode ids need not be consecutive
but never come back after another episode. The writer refuses data breaking these rules.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ldm_envs.dataset.errors import (
    CorruptDecisionError,
    CorruptShardError,
    ShardInputError,
)
from ldm_envs.spaces import (
    BoxSpace,
    DiscreteSpace,
    MultiBinarySpace,
    MultiDiscreteSpace,
    Space,
)

#: 2 added the `restarted` column; version-1 shards (without it) are still read.
FORMAT_VERSION = 2
#: Shard file suffix; `build_index` finds shards by it.
SHARD_SUFFIX = ".arrow"
#: Sidecar suffix appended to the shard's file name: `run.arrow` -> `run.arrow.decision.json`.
DECISION_SUFFIX = ".decision.json"
#: Marker in the names of files being written (always hidden: they start with a dot).
TMP_MARK = ".tmp-"
#: Columns every shard has, in file order; `ref_action` follows them once relabeled.
COLUMNS: tuple[str, ...] = (
    "obs",
    "action",
    "reward",
    "terminated",
    "truncated",
    "episode",
    "step",
)
REF_ACTION = "ref_action"
#: Set on the last row of an episode cut by a worker restart (format 2 on; optional on read).
RESTARTED = "restarted"
#: The columns `ShardWriter` writes, in file order.
WRITTEN_COLUMNS: tuple[str, ...] = (*COLUMNS, RESTARTED)

_META_KEY = b"ldm.shard"
_META_CRC_KEY = b"ldm.shard.crc32"
_BATCH_CRC_KEY = b"ldm.crc32"
_LIST_COLUMNS = ("obs", "action", REF_ACTION)
_SCALARS: dict[str, np.dtype] = {
    "reward": np.dtype(np.float32),
    "terminated": np.dtype(np.bool_),
    "truncated": np.dtype(np.bool_),
    "episode": np.dtype(np.int64),
    "step": np.dtype(np.int64),
    RESTARTED: np.dtype(np.bool_),
}

SpaceModel = BoxSpace | DiscreteSpace | MultiDiscreteSpace | MultiBinarySpace


class ShardMeta(BaseModel):
    """What a shard holds; stored as JSON in the Arrow schema metadata."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    format_version: int = FORMAT_VERSION
    library: str
    env_id: str
    candidate: str
    seed: int
    run_key: str
    mlflow_run_id: str | None = None
    observation_space: Space
    action_space: Space
    #: venv hash or docker image tag of the isolated environment that produced the data.
    environment_ref: str = ""
    #: A run may be split into several shards, numbered from 0.
    part: int = Field(default=0, ge=0)
    #: Unix time of creation.
    created: float


def space_layout(space: SpaceModel) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and per-row shape under which a shard stores samples of `space`.

    Box keeps its dtype and shape; Discrete is an int64 scalar `()`, MultiDiscrete int64 `(k,)`,
    MultiBinary int8 `(n,)`, matching what the worker returns.
    """
    if isinstance(space, BoxSpace):
        return np.dtype(space.dtype), tuple(space.shape)
    if isinstance(space, DiscreteSpace):
        return np.dtype(np.int64), ()
    if isinstance(space, MultiDiscreteSpace):
        return np.dtype(np.int64), (len(space.nvec),)
    if isinstance(space, MultiBinarySpace):
        return np.dtype(np.int8), (space.n,)
    raise TypeError(f"not a space model: {space!r}")


def _column_layouts(meta: ShardMeta) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    obs = space_layout(meta.observation_space)
    act = space_layout(meta.action_space)
    layouts = {"obs": obs, "action": act, REF_ACTION: act}
    layouts.update({name: (dt, ()) for name, dt in _SCALARS.items()})
    return layouts


def _storage_type(dtype: np.dtype) -> pa.DataType:
    return pa.uint8() if dtype == np.bool_ else pa.from_numpy_dtype(dtype)


def _arrow_type(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> pa.DataType:
    storage = _storage_type(dtype)
    if name in _LIST_COLUMNS:
        return pa.list_(pa.field("item", storage, nullable=False), math.prod(shape))
    return storage


def shard_schema(
    meta: ShardMeta, *, ref_action: bool = False, restarted: bool = False
) -> pa.Schema:
    """The Arrow schema (with metadata) of a shard described by `meta`.

    Column order: `COLUMNS`, then `restarted` (what `ShardWriter` writes, format 2 on), then
    `ref_action` once relabeled.
    """
    layouts = _column_layouts(meta)
    names = [*COLUMNS, *([RESTARTED] if restarted else []), *([REF_ACTION] if ref_action else [])]
    fields = [pa.field(n, _arrow_type(n, *layouts[n]), nullable=False) for n in names]
    meta_json = meta.model_dump_json().encode()
    metadata = {_META_KEY: meta_json, _META_CRC_KEY: str(zlib.crc32(meta_json)).encode()}
    return pa.schema(fields, metadata=metadata)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)


def _to_arrow(array: np.ndarray, type_: pa.DataType) -> pa.Array:
    """Wrap a C-contiguous block of rows as an Arrow array without copying."""
    flat = array.reshape(-1)
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    if pa.types.is_fixed_size_list(type_):
        values = pa.Array.from_buffers(type_.value_type, flat.size, [None, pa.py_buffer(flat)])
        return pa.FixedSizeListArray.from_arrays(values, type=type_)
    return pa.Array.from_buffers(type_, flat.size, [None, pa.py_buffer(flat)])


class _EpisodeChecker:
    """Incremental check of the episode rules over consecutive chunks of rows.

    Rules: `step` >= 0 and +1 from row to row within an episode; a row that ends an episode
    (terminated or truncated) is the last of its block; an episode id never reappears after
    another episode's rows.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.prev: tuple[int, int, bool] | None = None  # episode, step, done of the last row
        self.seen: set[int] = set()

    def feed(self, episode: np.ndarray, step: np.ndarray, done: np.ndarray) -> str | None:
        """Check a chunk; return what is wrong (naming the row) or None."""
        n = len(episode)
        if n == 0:
            return None
        base = self.rows
        if (step < 0).any():
            i = int(np.argmax(step < 0))
            return f"row {base + i}: negative step {int(step[i])}"
        if self.prev is None:
            prev_ep = np.concatenate([[episode[0] - 1], episode[:-1]])
            prev_step = np.concatenate([[0], step[:-1]])
            prev_done = np.concatenate([[False], done[:-1]])
        else:
            pe, ps, pd = self.prev
            prev_ep = np.concatenate([[pe], episode[:-1]])
            prev_step = np.concatenate([[ps], step[:-1]])
            prev_done = np.concatenate([[pd], done[:-1]])
        new = episode != prev_ep
        if self.prev is None:
            new[0] = True
        cont = ~new
        bad = cont & prev_done
        if bad.any():
            i = int(np.argmax(bad))
            return (
                f"row {base + i}: episode {int(episode[i])} goes on after a terminated/"
                "truncated row"
            )
        bad = cont & (step != prev_step + 1)
        if bad.any():
            i = int(np.argmax(bad))
            return (
                f"row {base + i}: step {int(step[i])} follows step {int(prev_step[i])} "
                f"in episode {int(episode[i])}"
            )
        fresh: set[int] = set()
        for k in np.flatnonzero(new).tolist():
            ep = int(episode[k])
            if ep in self.seen or ep in fresh:
                return (
                    f"row {base + k}: episode {ep} reappears after other episodes "
                    "(an episode must be one contiguous block of rows)"
                )
            fresh.add(ep)
        self.seen.update(fresh)
        self.rows += n
        self.prev = (int(episode[-1]), int(step[-1]), bool(done[-1]))
        return None


class ShardWriter:
    """Write one shard: rows buffered in a batch of `batch_rows`, then streamed to a temp file.

    Memory is one batch of every column whatever the shard's length. `close()` flushes, fsyncs
    and renames the temporary file (a hidden sibling, `.<name>.tmp-<pid>-<rand>`) onto `path`,
    replacing any previous shard there; `abort()` removes it. As a context manager it closes on
    success and aborts on exception, so an interrupted writer never leaves a file under `path`.

    Values are cast to the shard's dtypes; a float given for an integer column, a wrong shape
    or wrong row counts raise `ShardInputError`, as do rows breaking the episode rules (see
    the module docstring) and a `restarted` row that does not end its episode.
    """

    def __init__(self, path: Path, meta: ShardMeta, *, batch_rows: int = 8192) -> None:
        path = Path(path)
        if path.suffix != SHARD_SUFFIX:
            raise ShardInputError(f"shard {path}: the file name must end with {SHARD_SUFFIX}")
        if batch_rows <= 0:
            raise ShardInputError(f"shard {path}: batch_rows must be positive, got {batch_rows}")
        self.path = path
        self.meta = meta
        self.batch_rows = int(batch_rows)
        self.num_rows = 0
        self._schema = shard_schema(meta, restarted=True)
        self._layouts = {n: _column_layouts(meta)[n] for n in WRITTEN_COLUMNS}
        self._types = {f.name: f.type for f in self._schema}
        self._buffers: dict[str, np.ndarray] = {}
        self._fill = 0
        self._checker = _EpisodeChecker()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_name(path)
        self._sink = pa.OSFile(str(self._tmp), "wb")
        try:
            self._writer = ipc.new_file(self._sink, self._schema)
        except BaseException:
            self._sink.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._state = "open"

    @property
    def temp_path(self) -> Path:
        """The hidden temporary file being written (gone after close/abort)."""
        return self._tmp

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _coerce(self, name: str, value: Any, n: int) -> np.ndarray:
        dtype, shape = self._layouts[name]
        arr = np.asarray(value)
        if name in ("action", REF_ACTION) and shape == () and arr.shape == (n, 1):
            arr = arr.reshape(n)
        if arr.shape != (n, *shape):
            raise ShardInputError(
                f"shard {self.path}: {name} has shape {arr.shape}, expected {(n, *shape)}"
            )
        return _cast(arr, dtype, f"shard {self.path}: {name}")

    def append(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        episode: np.ndarray,
        step: np.ndarray,
        restarted: np.ndarray | None = None,
    ) -> None:
        """Append `n` rows at once; `obs` is `(n, *obs_shape)`, the scalars `(n,)`.

        `restarted` (default: all False) marks the last row of an episode cut by a worker
        restart; such a row must end its episode (`terminated` or `truncated`).
        """
        if self._state != "open":
            raise ShardInputError(f"shard {self.path}: append() after {self._state}")
        obs = np.asarray(obs)
        if obs.ndim == 0:
            raise ShardInputError(f"shard {self.path}: obs must have a leading row axis")
        n = obs.shape[0]
        if restarted is None:
            restarted = np.zeros(n, np.bool_)
        values = (obs, action, reward, terminated, truncated, episode, step, restarted)
        cols = {
            name: self._coerce(name, value, n)
            for name, value in zip(WRITTEN_COLUMNS, values, strict=True)
        }
        if n == 0:
            return
        done = cols["terminated"] | cols["truncated"]
        problem = _restart_problem(cols[RESTARTED], done, self._checker.rows)
        if problem is None:
            problem = self._checker.feed(cols["episode"], cols["step"], done)
        if problem is not None:
            # the rows before this chunk stay valid; report with the shard's row numbers
            raise ShardInputError(f"shard {self.path}: {problem}")
        if not self._buffers:
            self._buffers = {
                name: np.empty((self.batch_rows, *shape), dtype)
                for name, (dtype, shape) in self._layouts.items()
            }
        done = 0
        while done < n:
            take = min(n - done, self.batch_rows - self._fill)
            for name, arr in cols.items():
                self._buffers[name][self._fill : self._fill + take] = arr[done : done + take]
            self._fill += take
            done += take
            if self._fill == self.batch_rows:
                self._flush()
        self.num_rows += n

    def _flush(self) -> None:
        if self._fill == 0:
            return
        parts = {name: buf[: self._fill] for name, buf in self._buffers.items()}
        arrays = [_to_arrow(parts[name], self._types[name]) for name in WRITTEN_COLUMNS]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self._schema)
        crcs = {name: _crc(parts[name]) for name in WRITTEN_COLUMNS}
        self._writer.write_batch(batch, custom_metadata=_batch_metadata(self._fill, crcs))
        self._fill = 0

    def close(self) -> Path:
        """Flush, fsync and atomically rename onto `path`; return `path`."""
        if self._state == "closed":
            return self.path
        if self._state != "open":
            raise ShardInputError(f"shard {self.path}: close() after {self._state}")
        try:
            self._flush()
            self._writer.close()
            self._sink.close()
            _fsync_file(self._tmp)
            os.replace(self._tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self._buffers = {}
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (removes the temporary file)."""
        if self._state in ("closed", "aborted"):
            return
        self._state = "aborted"
        self._buffers = {}
        for closer in (self._writer.close, self._sink.close):
            with contextlib.suppress(Exception):  # the file is removed right after
                closer()
        self._tmp.unlink(missing_ok=True)


def _restart_problem(restarted: np.ndarray, done: np.ndarray, base: int) -> str | None:
    """A `restarted` row that does not end its episode (the restart is what ended it)."""
    bad = restarted & ~done
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return f"row {base + i}: restarted is set on a row that ends no episode"


def _cast(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    if arr.dtype == dtype:
        return arr
    if arr.dtype.kind not in "biuf":
        raise ShardInputError(f"{what} has dtype {arr.dtype}, expected {dtype}")
    if arr.dtype.kind == "f" and dtype.kind in "biu":
        raise ShardInputError(
            f"{what} has dtype {arr.dtype}; refusing to truncate floats into {dtype}"
        )
    if dtype == np.bool_ and arr.size and ((arr != 0) & (arr != 1)).any():
        raise ShardInputError(f"{what} holds values other than 0/1")
    if dtype.kind in "iu" and arr.dtype.kind in "iu" and not np.can_cast(arr.dtype, dtype):
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ShardInputError(f"{what} holds values outside the range of {dtype}")
    return arr.astype(dtype)


def _batch_metadata(rows: int, crcs: Mapping[str, int]) -> dict[bytes, bytes]:
    return {_BATCH_CRC_KEY: json.dumps({"rows": rows, "crc32": dict(crcs)}).encode()}


def _view(arr: pa.Array, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-copy numpy view of a column of a batch (read-only when memory-mapped).

    Built from the Arrow buffers directly: `Array.to_numpy` would import pandas (a second).
    """
    if arr.null_count:
        raise ValueError("holds nulls")
    rows = len(arr)
    size = math.prod(shape)
    if pa.types.is_fixed_size_list(arr.type):
        child = arr.values
        if child.null_count:
            raise ValueError("holds nulls")
        first = child.offset + arr.offset * size
        data = child.buffers()[1]
    else:
        first = arr.offset
        data = arr.buffers()[1]
    storage = np.dtype(np.uint8) if dtype == np.bool_ else dtype
    count = rows * size
    if data is None:
        if count:
            raise ValueError("has no data buffer")
        return np.empty((0, *shape), dtype)
    if (first + count) * storage.itemsize > data.size:
        raise ValueError(f"data buffer of {data.size} bytes is too short for {rows} rows")
    flat = np.frombuffer(data, storage, count=count, offset=first * storage.itemsize)
    return flat.view(dtype).reshape((rows, *shape))


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


#: Schema of `ShardReader.episodes()`.
EPISODE_COLUMNS: dict[str, pl.DataType] = {
    "episode": pl.Int64(),
    "start": pl.Int64(),
    "length": pl.Int64(),
    "return": pl.Float64(),
    "terminated": pl.Boolean(),
    "complete": pl.Boolean(),
    "restarted": pl.Boolean(),
}


def _parse_batch_metadata(custom: Mapping[bytes, bytes] | None) -> dict[str, Any] | None:
    if not custom or _BATCH_CRC_KEY not in custom:
        return None
    try:
        info = json.loads(custom[_BATCH_CRC_KEY])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _schema_text(schema: pa.Schema) -> str:
    return "{" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "}"


def write_ref_actions(path: Path, ref_action: np.ndarray) -> None:
    """Atomically rewrite a shard with its `ref_action` column (replaced if already there).

    The shard is streamed batch by batch from its memory map into a temporary sibling, then
    renamed over the original; the existing columns keep their stored CRCs (a corrupt shard is
    not laundered). `ref_action` has one row per shard row, shaped like `column("action")`.
    """
    path = Path(path)
    with ShardReader(path) as reader:
        n = reader.num_rows
        dtype, shape = space_layout(reader.meta.action_space)
        arr = np.asarray(ref_action)
        if shape == () and arr.shape == (n, 1):
            arr = arr.reshape(n)
        if arr.shape != (n, *shape):
            raise ShardInputError(
                f"shard {path}: ref_action has shape {arr.shape}, expected {(n, *shape)}"
            )
        what = f"shard {path}: ref_action"
        if arr.dtype != dtype:
            _cast(arr[:0], dtype, what)  # dtype check only; cast batch by batch below
        schema = shard_schema(reader.meta, ref_action=True, restarted=reader.has_restarted)
        ref_type = schema.field(REF_ACTION).type
        keep = [name for name in reader.columns if name != REF_ACTION]
        tmp = _tmp_name(path)
        try:
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as writer:
                start = 0
                for i in range(reader._reader.num_record_batches):
                    batch, custom = reader._reader.get_batch_with_custom_metadata(i)
                    info = _parse_batch_metadata(custom)
                    if info is None:
                        raise CorruptShardError(path, f"record batch {i}: no CRC metadata")
                    rows = batch.num_rows
                    chunk = _cast(arr[start : start + rows], dtype, what)
                    chunk = np.ascontiguousarray(chunk)
                    arrays = [batch.column(name) for name in keep]
                    arrays.append(_to_arrow(chunk, ref_type))
                    crcs = {name: info.get("crc32", {}).get(name) for name in keep}
                    crcs[REF_ACTION] = _crc(chunk)
                    out = pa.RecordBatch.from_arrays(arrays, schema=schema)
                    writer.write_batch(out, custom_metadata=_batch_metadata(rows, crcs))
                    start += rows
            _fsync_file(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def decision_path(path: Path) -> Path:
    """The filter-decision sidecar of a shard: `<shard>.decision.json`."""
    path = Path(path)
    return path.with_name(path.name + DECISION_SUFFIX)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_decision(path: Path, decision: dict[str, Any]) -> None:
    """Atomically write the filter decision of a shard next to it.

    `decision` is `{"kept": bool, "reason": str, "stats": {...}}` (stats optional, any JSON;
    numpy scalars and arrays are converted). Other keys are kept as given.
    """
    path = Path(path)
    if not isinstance(decision.get("kept"), bool | np.bool_):
        raise ShardInputError(f"decision for {path}: 'kept' must be a bool, got {decision!r}")
    if not isinstance(decision.get("reason"), str):
        raise ShardInputError(f"decision for {path}: 'reason' must be a string")
    stats = decision.get("stats", {})
    if not isinstance(stats, Mapping):
        raise ShardInputError(f"decision for {path}: 'stats' must be a mapping")
    payload = {**decision, "kept": bool(decision["kept"]), "stats": dict(stats)}
    text = json.dumps(payload, sort_keys=True, indent=1, default=_json_default)
    target = decision_path(path)
    tmp = _tmp_name(target)
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def read_decision(path: Path) -> dict[str, Any] | None:
    """The shard's filter decision, or None when it has none yet.

    Raises:
        CorruptDecisionError: the sidecar is not JSON or lacks `kept`/`reason`.
    """
    target = decision_path(path)
    try:
        text = target.read_text()
    except FileNotFoundError:
        return None
    try:
        decision = json.loads(text)
    except ValueError as exc:
        raise CorruptDecisionError(target, f"not JSON ({exc})") from exc
    if (
        not isinstance(decision, dict)
        or not isinstance(decision.get("kept"), bool)
        or not isinstance(decision.get("reason"), str)
        or not isinstance(decision.get("stats", {}), dict)
    ):
        raise CorruptDecisionError(target, "expected {'kept': bool, 'reason': str, 'stats': {}}")
    decision.setdefault("stats", {})
    return decision


def new_meta(**fields: Any) -> ShardMeta:
    """Build a `ShardMeta` with `created` set to now unless given."""
    fields.setdefault("created", time.time())
    return ShardMeta(**fields)
