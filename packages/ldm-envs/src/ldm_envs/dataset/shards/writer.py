"""Writing shards: `ShardWriter` (a new shard) and `write_ref_actions` (relabel one in place)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ldm_envs.atomic import atomic_path, publish, tmp_sibling
from ldm_envs.dataset.errors import CorruptShardError, ShardInputError
from ldm_envs.dataset.shards.episodes import _EpisodeChecker, _restart_problem
from ldm_envs.dataset.shards.format import (
    REF_ACTION,
    RESTARTED,
    SHARD_SUFFIX,
    WRITTEN_COLUMNS,
    ShardMeta,
    _batch_metadata,
    _cast,
    _column_layouts,
    _crc,
    _parse_batch_metadata,
    _to_arrow,
    shard_schema,
    space_layout,
)
from ldm_envs.dataset.shards.reader import ShardReader


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
        self._tmp = tmp_sibling(path)
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
            publish(self._tmp, self.path)
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


def write_ref_actions(path: Path, ref_action: np.ndarray) -> None:
    """Atomically rewrite a shard with its `ref_action` column (replaced if already there).

    The shard is streamed batch by batch from its memory map into a temporary sibling, then
    renamed over the original; the existing columns keep their stored CRCs (a corrupt shard is
    not laundered). `ref_action` has one row per shard row, shaped like `column("action")`.
    """
    path = Path(path)
    # the temporary sibling is published once the reader has closed the original
    with atomic_path(path) as tmp, ShardReader(path) as reader:
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
