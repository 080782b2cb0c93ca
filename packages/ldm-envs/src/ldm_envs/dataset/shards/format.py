"""The shard format on disk: columns, Arrow types, the `ShardMeta` header and the CRC-32s.

See the package docstring for the layout table. Everything that decides what bytes a shard holds
lives here, so that the writer and the reader cannot disagree.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from ldm_envs.atomic import TMP_MARK  # noqa: F401  (re-exported: its old home)
from ldm_envs.dataset.errors import ShardInputError
from ldm_envs.spaces import (
    BoxSpace,
    DiscreteSpace,
    MultiBinarySpace,
    MultiDiscreteSpace,
    Space,
    SpaceModel,
)

#: 2 added the `restarted` column; version-1 shards (without it) are still read.
FORMAT_VERSION = 2
#: Shard file suffix; `build_index` finds shards by it.
SHARD_SUFFIX = ".arrow"
#: Sidecar suffix appended to the shard's file name: `run.arrow` -> `run.arrow.decision.json`.
DECISION_SUFFIX = ".decision.json"
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


def new_meta(**fields: Any) -> ShardMeta:
    """Build a `ShardMeta` with `created` set to now unless given."""
    fields.setdefault("created", time.time())
    return ShardMeta(**fields)
