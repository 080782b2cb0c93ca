"""The `restarted` mark of shards (format 2) and the index, and data written before it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from ldm_envs.dataset import shards
from ldm_envs.dataset.index import INDEX_DIR, INFO_FILE, read_index, write_index
from ldm_envs.dataset.shards import ShardInputError, ShardReader, ShardWriter, write_ref_actions
from tests.ldm_envs.test_dataset import DISCRETE, VECTOR, make_data, make_meta


def _with_cut(data: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
    """Mark `rows` (episode ends) as cut by a worker restart, as the recorder does."""
    restarted = np.zeros(len(data["reward"]), np.bool_)
    restarted[rows] = True
    return {**data, "restarted": restarted}


def test_cut_episodes_are_marked_and_not_complete(tmp_path):
    # episodes of 3, 2 (cut by a restart), 4 (cut), 3 steps; the cut ones end truncated
    data = make_data(VECTOR, DISCRETE, [3, 2, 4, 3], ["term", "trunc", "trunc", "term"])
    data["reward"] = np.ones(12, np.float32)
    path = tmp_path / "run.arrow"
    with ShardWriter(path, make_meta(), batch_rows=5) as writer:
        writer.append(**_with_cut(data, [4, 8]))
    reader = ShardReader(path)
    assert reader.has_restarted and reader.meta.format_version == shards.FORMAT_VERSION
    eps = reader.episodes()
    assert eps["restarted"].to_list() == [False, True, True, False]
    assert eps["complete"].to_list() == [True, False, False, True]
    reader.verify()
    # relabeling keeps the marks
    write_ref_actions(path, np.zeros(12, np.int64))
    again = ShardReader(path)
    assert again.has_ref_action and again.column("restarted").nonzero()[0].tolist() == [4, 8]
    # the index leaves them out of the means and counts them
    write_index(tmp_path)
    runs, episodes = read_index(tmp_path)
    assert runs["restarted_episodes"].to_list() == [2]
    assert runs["mean_return"].to_list() == [3.0]  # the two complete episodes of 3 steps
    assert episodes["restarted"].sum() == 2


def test_a_restart_mark_must_end_its_episode(tmp_path):
    data = make_data(VECTOR, DISCRETE, [3, 3], ["term", None])
    with (
        pytest.raises(ShardInputError, match="row 1: restarted is set on a row that ends no"),
        ShardWriter(tmp_path / "bad.arrow", make_meta()) as writer,
    ):
        writer.append(**_with_cut(data, [1]))
    assert not (tmp_path / "bad.arrow").exists()


def _format1_shard(path, data):
    """A shard as ldm wrote it before the `restarted` column (format 1)."""
    meta = make_meta(format_version=1)
    schema = shards.shard_schema(meta)
    arrays = [shards._to_arrow(data[n], schema.field(n).type) for n in shards.COLUMNS]
    crcs = {n: shards._crc(data[n]) for n in shards.COLUMNS}
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        writer.write_batch(batch, custom_metadata=shards._batch_metadata(len(arrays[0]), crcs))
    return path


def test_data_written_before_the_marks_reads_as_no_restart(tmp_path):
    data = make_data(VECTOR, DISCRETE, [3, 2, 4], ["term", "trunc", None])
    path = _format1_shard(tmp_path / "old.arrow", data)
    reader = ShardReader(path)
    assert reader.meta.format_version == 1 and not reader.has_restarted
    assert reader.column("restarted").tolist() == [False] * 9
    eps = reader.episodes()
    assert eps["restarted"].to_list() == [False] * 3
    assert eps["complete"].to_list() == [True, True, False]
    reader.verify()
    write_ref_actions(path, np.zeros(9, np.int64))  # relabeling keeps it format 1
    assert not ShardReader(path).has_restarted and ShardReader(path).has_ref_action

    # an index of format 1 (no restart columns) is read as "no restart"
    write_index(tmp_path)
    index = tmp_path / INDEX_DIR
    runs, episodes = read_index(tmp_path)
    runs.drop("restarted_episodes").write_parquet(index / "runs.parquet")
    episodes.drop("restarted").write_parquet(index / "episodes.parquet")
    info = json.loads((index / INFO_FILE).read_text())
    (index / INFO_FILE).write_text(json.dumps({**info, "index_format_version": 1}))
    old_runs, old_episodes = read_index(tmp_path)
    assert old_runs.columns == runs.columns and old_episodes.columns == episodes.columns
    assert old_runs["restarted_episodes"].to_list() == [0]
    assert not old_episodes["restarted"].any()
    assert old_runs.drop("restarted_episodes").equals(runs.drop("restarted_episodes"))
