"""Trajectory shards and the Polars index (the dataset format lives in ldm-envs).

See `ldm_envs.dataset.shards` for the file layout and `ldm_envs.dataset.index` for the tables.
"""

from ldm_envs.dataset.errors import (
    CorruptDecisionError,
    CorruptFileError,
    CorruptIndexError,
    CorruptShardError,
    DatasetError,
    ShardInputError,
)
from ldm_envs.dataset.index import (
    EPISODES_SCHEMA,
    INDEX_DIR,
    RUNS_SCHEMA,
    build_index,
    clean_temporaries,
    find_shards,
    obs_kind,
    read_index,
    write_index,
)
from ldm_envs.dataset.shards import (
    COLUMNS,
    FORMAT_VERSION,
    ShardMeta,
    ShardReader,
    ShardWriter,
    decision_path,
    new_meta,
    read_decision,
    space_layout,
    write_decision,
    write_ref_actions,
)

__all__ = [
    "COLUMNS",
    "EPISODES_SCHEMA",
    "FORMAT_VERSION",
    "INDEX_DIR",
    "RUNS_SCHEMA",
    "CorruptDecisionError",
    "CorruptFileError",
    "CorruptIndexError",
    "CorruptShardError",
    "DatasetError",
    "ShardInputError",
    "ShardMeta",
    "ShardReader",
    "ShardWriter",
    "build_index",
    "clean_temporaries",
    "decision_path",
    "find_shards",
    "new_meta",
    "obs_kind",
    "read_decision",
    "read_index",
    "space_layout",
    "write_decision",
    "write_index",
    "write_ref_actions",
]
