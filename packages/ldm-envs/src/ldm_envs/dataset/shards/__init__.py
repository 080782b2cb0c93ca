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

One module per concept: `format` (columns, Arrow types, metadata, CRCs), `episodes` (the episode
rules), `writer`, `reader`, `decisions` (the filter-decision sidecar) and `files` (publishing a
file atomically). Every name is importable from here, as before the split.
"""

from ldm_envs.dataset.errors import CorruptDecisionError, CorruptShardError, ShardInputError
from ldm_envs.dataset.shards.decisions import decision_path, read_decision, write_decision
from ldm_envs.dataset.shards.format import (
    COLUMNS,
    DECISION_SUFFIX,
    EPISODE_COLUMNS,
    FORMAT_VERSION,
    REF_ACTION,
    RESTARTED,
    SHARD_SUFFIX,
    TMP_MARK,
    WRITTEN_COLUMNS,
    ShardMeta,
    SpaceModel,
    new_meta,
    shard_schema,
    space_layout,
)

# Private names tests reach through this package (re-exported on purpose: they build shards
# byte by byte to test the reader).
from ldm_envs.dataset.shards.format import _batch_metadata as _batch_metadata
from ldm_envs.dataset.shards.format import _crc as _crc
from ldm_envs.dataset.shards.format import _to_arrow as _to_arrow
from ldm_envs.dataset.shards.reader import ReadChecks, ShardReader
from ldm_envs.dataset.shards.writer import ShardWriter, write_ref_actions

__all__ = [
    "COLUMNS",
    "DECISION_SUFFIX",
    "EPISODE_COLUMNS",
    "FORMAT_VERSION",
    "REF_ACTION",
    "RESTARTED",
    "SHARD_SUFFIX",
    "TMP_MARK",
    "WRITTEN_COLUMNS",
    "CorruptDecisionError",
    "CorruptShardError",
    "ReadChecks",
    "ShardInputError",
    "ShardMeta",
    "ShardReader",
    "ShardWriter",
    "SpaceModel",
    "decision_path",
    "new_meta",
    "read_decision",
    "shard_schema",
    "space_layout",
    "write_decision",
    "write_ref_actions",
]
