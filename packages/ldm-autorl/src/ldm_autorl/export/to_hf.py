"""Writing one env's kept transitions as a Hugging Face `datasets` folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from ldm_autorl import layout
from ldm_autorl.export.source import (
    _SHARD_COLUMN,
    ExportedDataset,
    ShardSpace,
    _description,
    _EnvGroup,
    _import,
)
from ldm_envs.atomic import replace_dir
from ldm_envs.dataset.shards import ShardReader, space_layout


def hf_path(out: Path, library: str, env_id: str, actions: str) -> Path:
    """`<out>/<library>/<env>/<actions>`, the env id made path-safe as the data root does."""
    return Path(out) / layout.safe(library) / layout.safe(env_id) / actions


def _arrow_column(values: np.ndarray, shape: tuple[int, ...]) -> pa.Array:
    """`(n, *shape)` values as fixed-size lists nested to `shape` (a plain array for `()`)."""
    array = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(shape):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def _arrow_type(space: ShardSpace) -> pa.DataType:
    dtype, shape = space_layout(space)
    type_ = pa.from_numpy_dtype(dtype)
    for size in reversed(shape):
        type_ = pa.list_(pa.field("item", type_), size)
    return type_


def _hf_schema(group: _EnvGroup) -> pa.Schema:
    return pa.schema(
        [
            ("episode", pa.int64()),
            ("step", pa.int64()),
            ("obs", _arrow_type(group.observation_space)),
            ("action", _arrow_type(group.action_space)),
            ("reward", pa.float32()),
            ("terminated", pa.bool_()),
            ("truncated", pa.bool_()),
            ("run_key", pa.string()),
            ("candidate", pa.string()),
            ("seed", pa.int64()),
            ("part", pa.int64()),
            ("shard_episode", pa.int64()),
        ]
    )


def _write_hf(root: Path, out: Path, tmp: Path, group: _EnvGroup, actions: str) -> ExportedDataset:
    datasets = _import("datasets")
    column = _SHARD_COLUMN[actions]
    schema = _hf_schema(group)
    _, obs_shape = space_layout(group.observation_space)
    _, act_shape = space_layout(group.action_space)
    stream = tmp / "rows.arrow"
    episodes = steps = 0
    # rows are streamed shard by shard, record batch by record batch, into one Arrow stream
    # that `datasets` memory-maps: memory stays one record batch whatever the env's size
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for row in group.shards.iter_rows(named=True):
            with ShardReader(root / row["shard_path"]) as reader:
                eps = reader.episodes()
                starts = eps["start"].to_numpy()
                ids = eps["episode"].to_numpy()
                for first, cols in reader.batches():
                    n = len(cols["reward"])
                    k = np.searchsorted(starts, np.arange(first, first + n), side="right") - 1
                    batch = pa.RecordBatch.from_arrays(
                        [
                            pa.array(episodes + k),
                            pa.array(cols["step"]),
                            _arrow_column(cols["obs"], obs_shape),
                            _arrow_column(cols[column], act_shape),
                            pa.array(cols["reward"]),
                            pa.array(cols["terminated"]),
                            pa.array(cols["truncated"]),
                            pa.array([row["run_key"]] * n, pa.string()),
                            pa.array([row["candidate"]] * n, pa.string()),
                            pa.array(np.full(n, row["seed"], np.int64)),
                            pa.array(np.full(n, row["part"], np.int64)),
                            pa.array(ids[k]),
                        ],
                        schema=schema,
                    )
                    writer.write_batch(batch)
                    steps += n
                episodes += eps.height
    description = {
        "description": _description(group, actions, "hf"),
        "library": group.library,
        "env_id": group.env_id,
        "actions": actions,
        "observation_space": group.observation_space.model_dump(mode="json"),
        "action_space": group.action_space.model_dump(mode="json"),
        "runs": group.runs,
    }
    info = datasets.DatasetInfo(description=json.dumps(description))
    dataset = datasets.Dataset.from_file(str(stream), info=info)
    folder = tmp / "dataset"
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # the CLI prints its own table; a bar per env is noise
    try:
        dataset.save_to_disk(str(folder))
    finally:
        if not quiet:
            enable_progress_bars()
    del dataset  # release the memory map of the stream before it is removed with tmp
    final = hf_path(out, group.library, group.env_id, actions)
    final.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(folder, final)
    return ExportedDataset(
        format="hf",
        library=group.library,
        env_id=group.env_id,
        actions=actions,
        path=str(final),
        runs=len(group.runs),
        shards=group.shards.height,
        episodes=episodes,
        steps=steps,
    )
