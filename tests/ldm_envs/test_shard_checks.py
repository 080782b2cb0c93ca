"""Every read of a shard is checked; corrupt shards are quarantined; lost shards are told.

Real shards from the real writer, corrupted on disk as a failing disk or a stray `rm` would.
"""

import json
import os
import shutil

import numpy as np
import pytest

from ldm_envs.dataset import (
    QUARANTINE_DIR,
    CorruptShardError,
    ShardReader,
    build_index,
    check_index,
    decision_path,
    find_shards,
    quarantine_reason,
    quarantine_shard,
    quarantined,
    read_index,
    write_decision,
    write_index,
)
from tests.ldm_envs.test_dataset import DISCRETE, VECTOR, make_data, make_meta, write_shard

MARK = np.array([9.25, 8.25, 7.25, 6.25], np.float32)


def flipped_shard(path, *, row=13, batch_rows=8):
    """A 40-row shard in batches of 8 whose obs at `row` has one flipped bit on disk."""
    data = make_data(VECTOR, DISCRETE, [40], ["term"])
    data["obs"][row] = MARK
    write_shard(path, make_meta(), data, batch_rows=batch_rows)
    flip(path)
    return data


def flip(path, marker=MARK.tobytes(), offset=2):
    raw = bytearray(path.read_bytes())
    raw[bytes(raw).index(marker) + offset] ^= 0x04
    path.write_bytes(bytes(raw))


def test_reads_check_what_they_read(tmp_path):
    path = tmp_path / "run.arrow"
    data = flipped_shard(path)
    reader = ShardReader(path)
    # the other record batches, and the columns not flipped, read fine
    np.testing.assert_array_equal(reader.rows(0, 8)["obs"], data["obs"][:8])
    np.testing.assert_array_equal(reader.column("reward"), data["reward"])
    pattern = r"corrupt shard .*run\.arrow: record batch 1 \(rows 8-15\): column 'obs'"
    with pytest.raises(CorruptShardError, match=pattern):
        reader.rows(10, 12)
    with pytest.raises(CorruptShardError, match=pattern):
        reader.column("obs")
    with pytest.raises(CorruptShardError, match=pattern):
        list(reader.batches())
    # without the check (what the benchmark compares against) the bad bytes come through
    unchecked = ShardReader(path, check=False)
    assert not np.array_equal(unchecked.rows(13, 14)["obs"][0], MARK)


def test_shared_checks_remember_per_file_identity(tmp_path):
    path = tmp_path / "run.arrow"
    data = make_data(VECTOR, DISCRETE, [40], ["term"])
    data["obs"][13] = MARK
    write_shard(path, make_meta(), data, batch_rows=8)
    checks: dict = {}
    with ShardReader(path, checks=checks) as reader:
        reader.rows(0, 40)
    assert len(checks) == 1 and len(next(iter(checks.values()))) == 5 * 8  # batches x columns
    # a replaced file (new inode) is another identity: checked again, not trusted
    bad = tmp_path / "bad.arrow"
    shutil.copy(path, bad)
    flip(bad)
    os.replace(bad, path)
    with pytest.raises(CorruptShardError, match="column 'obs'"):
        ShardReader(path, checks=checks).rows(8, 16)


def test_quarantine_moves_shard_and_decision_with_reason(tmp_path):
    path = tmp_path / "lib" / "Env-v0" / "run.arrow"
    path.parent.mkdir(parents=True)
    flipped_shard(path)
    write_decision(path, {"kept": True, "reason": "kept"})
    try:
        ShardReader(path).verify()
    except CorruptShardError as exc:
        record = quarantine_shard(tmp_path, path, exc.reason, found_by="test", run_key="k")
    assert record is not None and record.shard == "lib/Env-v0/run.arrow"
    moved = tmp_path / record.moved_to
    assert moved == tmp_path / QUARANTINE_DIR / "lib/Env-v0/run.arrow" and moved.exists()
    assert not path.exists() and not decision_path(path).exists()
    assert decision_path(moved).exists()
    reason = json.loads(moved.with_name("run.arrow.reason.json").read_text())
    assert "column 'obs'" in reason["reason"] and reason["found_by"] == "test"
    assert quarantine_reason(tmp_path, "lib/Env-v0/run.arrow") == record
    assert find_shards(tmp_path) == []  # never read again
    # a second process finding the same shard: already gone, nothing happens
    assert quarantine_shard(tmp_path, path, "again") is None
    # the same path quarantined again later (a redone run broke again) keeps both
    flipped_shard(path)
    again = quarantine_shard(tmp_path, path, "second time")
    assert again is not None and again.moved_to != record.moved_to
    assert [r.reason for r in quarantined(tmp_path)][-1] == "second time"


def two_runs(root):
    paths = []
    for run in ("a", "b"):
        for part in range(2):
            path = root / "lib" / "Env-v0" / run / f"part-{part}.arrow"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = make_data(VECTOR, DISCRETE, [10], ["term"], seed=part)
            data["obs"][4] = MARK
            write_shard(path, make_meta(run_key=f"reference/lib/{run}", part=part), data)
            write_decision(path, {"kept": True, "reason": "kept"})
            paths.append(path)
    write_index(root)
    return paths


def test_index_build_tells_about_deleted_shards_and_cleans_orphans(tmp_path):
    paths = two_runs(tmp_path)
    paths[1].unlink()  # run a, part 1: gone; its decision stays behind
    check = check_index(tmp_path)
    assert [m.shard_path for m in check.missing] == ["lib/Env-v0/a/part-1.arrow"]
    assert check.missing[0].run_key == "reference/lib/a" and check.missing[0].rows == 10
    assert check.orphans == ["lib/Env-v0/a/part-1.arrow.decision.json"] and not check.ok
    said = []
    write_index(tmp_path, report=said.append)
    assert any(
        "lib/Env-v0/a/part-1.arrow of run reference/lib/a (10 rows) is gone" in m for m in said
    )
    assert any("removed lib/Env-v0/a/part-1.arrow.decision.json" in m for m in said)
    assert not decision_path(paths[1]).exists()
    assert read_index(tmp_path)[0].height == 3 and check_index(tmp_path).ok
    # without a report function, the same goes out as a warning
    paths[3].unlink()
    with pytest.warns(UserWarning) as caught:
        write_index(tmp_path)
    messages = [str(w.message) for w in caught]
    assert any("b/part-1.arrow of run reference/lib/b" in m for m in messages), messages
    assert any("removed lib/Env-v0/b/part-1.arrow.decision.json" in m for m in messages)


def test_index_build_quarantines_corrupt_shards(tmp_path):
    paths = two_runs(tmp_path)
    flip(paths[2], marker=_reward_bytes(paths[2]), offset=1)
    said = []
    write_index(tmp_path, on_corrupt="quarantine", report=said.append)
    assert not paths[2].exists()
    assert (tmp_path / QUARANTINE_DIR / "lib/Env-v0/b/part-0.arrow").exists()
    assert any("b/part-0.arrow" in m and "moved to quarantine/" in m for m in said)
    assert "lib/Env-v0/b/part-0.arrow" not in read_index(tmp_path)[0]["shard_path"].to_list()
    with pytest.raises(CorruptShardError):  # the default still stops, naming the shard
        shutil.copy(tmp_path / QUARANTINE_DIR / "lib/Env-v0/b/part-0.arrow", paths[2])
        build_index(tmp_path)


def _reward_bytes(path):
    """The bytes of the shard's 4th reward, a column the index reads (returns)."""
    with ShardReader(path, check=False) as reader:
        return reader.column("reward")[3].tobytes()
