import json
import math
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ldm_envs.dataset import (
    FORMAT_VERSION,
    INDEX_DIR,
    CorruptDecisionError,
    CorruptShardError,
    ShardInputError,
    ShardMeta,
    ShardReader,
    ShardWriter,
    build_index,
    clean_temporaries,
    find_shards,
    read_decision,
    read_index,
    space_layout,
    write_decision,
    write_index,
    write_ref_actions,
)
from ldm_envs.errors import LDMEnvsError
from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiBinarySpace, MultiDiscreteSpace

VECTOR = BoxSpace(shape=(4,), low=[-4.8, -math.inf, -0.42, -math.inf], high=math.inf)
IMAGE = BoxSpace(shape=(64, 64, 3), dtype="uint8", low=0, high=255)
DISCRETE = DiscreteSpace(n=15)
BOX_ACTION = BoxSpace(shape=(3,), low=-1.0, high=1.0)


def make_meta(obs=VECTOR, act=DISCRETE, **over):
    fields = dict(
        library="toy",
        env_id="Toy-v0",
        candidate="ppo",
        seed=0,
        run_key="toy/Toy-v0/ppo/0",
        observation_space=obs,
        action_space=act,
        environment_ref="venv-abc123",
        created=1_700_000_000.0,
    )
    fields.update(over)
    return ShardMeta(**fields)


def sample(space, n, rng):
    if isinstance(space, BoxSpace):
        if space.dtype == "uint8":
            return rng.integers(0, 256, (n, *space.shape), dtype=np.uint8)
        return rng.standard_normal((n, *space.shape)).astype(space.dtype)
    if isinstance(space, DiscreteSpace):
        return rng.integers(0, space.n, n)
    if isinstance(space, MultiDiscreteSpace):
        return rng.integers(0, 3, (n, len(space.nvec)))
    return rng.integers(0, 2, (n, space.n)).astype(np.int8)


def episodes_layout(lengths, ends):
    """episode/step/terminated/truncated for consecutive episodes; ends: 'term'|'trunc'|None."""
    episode, step, term, trunc = [], [], [], []
    for ep, (length, end) in enumerate(zip(lengths, ends, strict=True)):
        episode += [ep] * length
        step += list(range(length))
        term += [False] * (length - 1) + [end == "term"]
        trunc += [False] * (length - 1) + [end == "trunc"]
    return (np.array(episode), np.array(step), np.array(term), np.array(trunc))


def make_data(obs_space, act_space, lengths, ends, seed=0):
    rng = np.random.default_rng(seed)
    episode, step, term, trunc = episodes_layout(lengths, ends)
    n = len(episode)
    return {
        "obs": sample(obs_space, n, rng),
        "action": sample(act_space, n, rng),
        "reward": rng.standard_normal(n).astype(np.float32),
        "terminated": term,
        "truncated": trunc,
        "episode": episode,
        "step": step,
    }


def write_shard(path, meta, data, *, batch_rows=8192, chunk=None):
    n = len(data["reward"])
    chunk = chunk or n
    with ShardWriter(path, meta, batch_rows=batch_rows) as writer:
        for lo in range(0, max(n, 1), chunk):
            writer.append(**{k: v[lo : lo + chunk] for k, v in data.items()})
    return path


CASES = {
    "vector-discrete": (VECTOR, DISCRETE),
    "image-discrete": (IMAGE, DISCRETE),
    "vector-box": (VECTOR, BOX_ACTION),
    "multidiscrete-multibinary": (MultiDiscreteSpace(nvec=[3, 3]), MultiBinarySpace(n=5)),
    "discrete-box": (DiscreteSpace(n=6), BOX_ACTION),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch_rows", [8192, 7])
def test_round_trip(tmp_path, case, batch_rows):
    obs_space, act_space = CASES[case]
    meta = make_meta(obs_space, act_space)
    data = make_data(obs_space, act_space, [5, 9, 12, 4], ["term", "trunc", "term", None])
    path = write_shard(tmp_path / "run.arrow", meta, data, batch_rows=batch_rows, chunk=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.arrow"]

    reader = ShardReader(path)
    assert reader.meta == meta and reader.path == path
    assert reader.num_rows == 30 and not reader.has_ref_action
    assert reader.num_batches == (1 if batch_rows == 8192 else 5)
    for name, expected in data.items():
        got = reader.column(name)
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert reader.column("obs").dtype == space_layout(obs_space)[0]
    assert reader.column("action").dtype == space_layout(act_space)[0]
    assert reader.column("reward").dtype == np.float32
    assert reader.column("terminated").dtype == np.bool_
    assert reader.column("episode").dtype == np.int64
    assert reader.column("step").dtype == np.int64
    if isinstance(act_space, DiscreteSpace):
        assert reader.column("action").shape == (30,)
    if batch_rows == 8192:  # one batch: a read-only view of the memory map, no copy
        obs = reader.column("obs")
        assert not obs.flags.writeable and not obs.flags.owndata
    reader.verify()


def test_image_round_trip_dtypes(tmp_path):
    data = make_data(IMAGE, DISCRETE, [3], ["term"])
    path = write_shard(tmp_path / "img.arrow", make_meta(IMAGE, DISCRETE), data)
    obs = ShardReader(path).column("obs")
    assert obs.dtype == np.uint8 and obs.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(obs, data["obs"])


def test_discrete_actions_as_column_vectors_and_casts(tmp_path):
    data = make_data(VECTOR, DISCRETE, [4], ["term"])
    data["action"] = data["action"].reshape(-1, 1).astype(np.int32)
    data["obs"] = data["obs"].astype(np.float64)
    data["terminated"] = data["terminated"].astype(np.int8)
    path = write_shard(tmp_path / "a.arrow", make_meta(), data)
    reader = ShardReader(path)
    assert reader.column("action").shape == (4,)
    assert reader.column("obs").dtype == np.float32
    assert reader.column("terminated").tolist() == [False, False, False, True]


def bad_append(tmp_path, **change):
    data = make_data(VECTOR, DISCRETE, [4, 4], ["term", None])
    data.update(change)
    with (
        pytest.raises(ShardInputError) as info,
        ShardWriter(tmp_path / "x.arrow", make_meta()) as w,
    ):
        w.append(**data)
    assert not list(tmp_path.iterdir())
    return str(info.value)


def test_writer_refuses_bad_input(tmp_path):
    assert "obs has shape (8, 3)" in bad_append(tmp_path, obs=np.zeros((8, 3), np.float32))
    assert "refusing to truncate floats" in bad_append(tmp_path, action=np.zeros(8))
    assert "reward has shape (7,), expected (8,)" in bad_append(
        tmp_path, reward=np.zeros(7, np.float32)
    )
    assert "values other than 0/1" in bad_append(tmp_path, truncated=np.full(8, 2))
    step = np.r_[0:4, 0, 1, 3, 4]
    assert "row 6: step 3 follows step 1 in episode 1" in bad_append(tmp_path, step=step)
    assert "episode 0 reappears" in bad_append(
        tmp_path, episode=np.array([0, 0, 1, 1, 0, 0, 0, 0]), step=np.r_[0:2, 0:2, 0:4]
    )
    term = np.zeros(8, bool)
    term[1] = True
    assert "row 2: episode 0 goes on after" in bad_append(tmp_path, terminated=term)
    with pytest.raises(ShardInputError, match=r"must end with \.arrow"):
        ShardWriter(tmp_path / "x.parquet", make_meta())


def test_episode_rules_span_appends_and_bad_chunk_is_dropped(tmp_path):
    path = tmp_path / "x.arrow"
    data = make_data(VECTOR, DISCRETE, [3, 3], ["term", "term"])
    with ShardWriter(path, make_meta(), batch_rows=2) as writer:
        writer.append(**{k: v[:2] for k, v in data.items()})
        bad = {k: v[2:4] for k, v in data.items()}
        bad["step"] = np.array([5, 0])
        with pytest.raises(ShardInputError, match="row 2: step 5 follows step 1"):
            writer.append(**bad)
        writer.append(**{k: v[2:] for k, v in data.items()})
    np.testing.assert_array_equal(ShardReader(path).column("step"), data["step"])


def test_exception_inside_writer_leaves_no_file(tmp_path):
    data = make_data(VECTOR, DISCRETE, [50], ["term"])
    with (
        pytest.raises(RuntimeError, match="boom"),
        ShardWriter(tmp_path / "run.arrow", make_meta(), batch_rows=8) as writer,
    ):
        writer.append(**data)  # several batches already on disk under the temp name
        assert writer.temp_path.exists() and writer.temp_path.name.startswith(".run.arrow.tmp-")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_shard_is_replaced_only_on_close(tmp_path):
    path = write_shard(
        tmp_path / "run.arrow", make_meta(), make_data(VECTOR, DISCRETE, [3], [None])
    )
    with pytest.raises(RuntimeError), ShardWriter(path, make_meta(seed=9)) as writer:
        writer.append(**make_data(VECTOR, DISCRETE, [5], [None]))
        raise RuntimeError
    assert ShardReader(path).num_rows == 3
    write_shard(path, make_meta(seed=9), make_data(VECTOR, DISCRETE, [5], [None]))
    assert ShardReader(path).meta.seed == 9 and ShardReader(path).num_rows == 5


def test_crash_leaves_only_a_temp_name_that_the_index_ignores(tmp_path):
    write_shard(tmp_path / "good.arrow", make_meta(), make_data(VECTOR, DISCRETE, [4], ["term"]))
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from pathlib import Path
        from ldm_envs.dataset import ShardMeta, ShardWriter
        meta = ShardMeta.model_validate_json({make_meta(seed=1).model_dump_json()!r})
        w = ShardWriter(Path({str(tmp_path / "crashed.arrow")!r}), meta, batch_rows=4)
        n = 10
        w.append(np.zeros((n, 4), np.float32), np.zeros(n, np.int64), np.zeros(n, np.float32),
                 np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, np.int64), np.arange(n))
        os._exit(3)  # killed before close()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith(".crashed.arrow.tmp-") and names[1:] == ["good.arrow"]
    assert find_shards(tmp_path) == [tmp_path / "good.arrow"]
    runs, _ = build_index(tmp_path)
    assert runs["shard_path"].to_list() == ["good.arrow"]
    assert clean_temporaries(tmp_path) == []  # too recent: might be a live writer's
    assert clean_temporaries(tmp_path, older_than_s=0) == [tmp_path / names[0]]
    assert [p.name for p in tmp_path.iterdir()] == ["good.arrow"]


def test_missing_file_is_not_corruption(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard at"):
        ShardReader(tmp_path / "absent.arrow")


def test_truncated_shard_is_named(tmp_path):
    path = write_shard(
        tmp_path / "run.arrow",
        make_meta(),
        make_data(VECTOR, DISCRETE, [40], ["term"]),
        batch_rows=8,
    )
    raw = path.read_bytes()
    for keep in (len(raw) - 1, len(raw) // 2, 10, 0):
        path.write_bytes(raw[:keep])
        with pytest.raises(CorruptShardError, match=r"corrupt shard .*run\.arrow") as info:
            ShardReader(path)
        assert info.value.path == path and isinstance(info.value, LDMEnvsError)


def test_flipped_data_bytes_are_found_by_verify(tmp_path):
    data = make_data(VECTOR, DISCRETE, [40], ["term"])
    data["obs"][17] = np.array([1.5, 2.5, 3.5, 4.5], np.float32)
    path = write_shard(tmp_path / "run.arrow", make_meta(), data, batch_rows=8)
    raw = bytearray(path.read_bytes())
    pos = bytes(raw).index(data["obs"][17].tobytes())
    raw[pos + 5] ^= 0x01
    path.write_bytes(bytes(raw))
    reader = ShardReader(path)  # structure intact: opening is cheap and does not see it
    with pytest.raises(
        CorruptShardError, match=r"run\.arrow: record batch 2 \(rows 16-23\): column 'obs'"
    ):
        reader.verify()


def test_flipped_metadata_bytes_are_found_on_open(tmp_path):
    path = write_shard(
        tmp_path / "run.arrow", make_meta(), make_data(VECTOR, DISCRETE, [4], [None])
    )
    raw = bytearray(path.read_bytes())
    pos = bytes(raw).rindex(b"Toy-v0")
    raw[pos] = ord("B")
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptShardError, match=r"run\.arrow: .*(metadata|structure)"):
        ShardReader(path)


def test_any_flipped_byte_is_detected_or_harmless(tmp_path):
    """Flip every 5th byte of a small shard: open or verify must fail, or the data is intact."""
    data = make_data(VECTOR, DISCRETE, [5, 4], ["term", None])
    path = write_shard(tmp_path / "a.arrow", make_meta(), data, batch_rows=4)
    raw = path.read_bytes()
    flipped = tmp_path / "b.arrow"
    outcomes = {"open": 0, "verify": 0, "harmless": 0}
    for pos in range(0, len(raw), 5):
        bad = bytearray(raw)
        bad[pos] ^= 0xA5
        flipped.write_bytes(bytes(bad))
        try:
            reader = ShardReader(flipped)
        except CorruptShardError as exc:
            assert "b.arrow" in str(exc)
            outcomes["open"] += 1
            continue
        try:
            reader.verify()
        except CorruptShardError as exc:
            assert "b.arrow" in str(exc)
            outcomes["verify"] += 1
            continue
        assert reader.meta == make_meta(), pos
        for name, expected in data.items():
            np.testing.assert_array_equal(reader.column(name), expected, err_msg=f"byte {pos}")
        outcomes["harmless"] += 1  # padding, or the schema copy the footer supersedes
    assert outcomes["open"] and outcomes["verify"]


def test_verify_checks_episode_rules_of_foreign_writes(tmp_path):
    """A shard whose CRCs match but whose steps jump (written by a buggy tool) is refused."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from ldm_envs.dataset import shards

    meta = make_meta()
    data = make_data(VECTOR, DISCRETE, [6], ["term"])
    data["step"] = np.array([0, 1, 2, 4, 5, 6])
    schema = shards.shard_schema(meta)
    arrays = [shards._to_arrow(data[n], schema.field(n).type) for n in shards.COLUMNS]
    crcs = {n: shards._crc(data[n]) for n in shards.COLUMNS}
    path = tmp_path / "foreign.arrow"
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        writer.write_batch(batch, custom_metadata=shards._batch_metadata(6, crcs))
    reader = ShardReader(path)
    with pytest.raises(CorruptShardError, match=r"foreign\.arrow: row 3: step 4 follows step 2"):
        reader.verify()


def test_write_ref_actions(tmp_path):
    for act in (DISCRETE, BOX_ACTION):
        data = make_data(VECTOR, act, [10, 7, 9], ["term", "trunc", None])
        path = write_shard(tmp_path / f"{act.type}.arrow", make_meta(act=act), data, batch_rows=4)
        ref = sample(act, 26, np.random.default_rng(5))
        write_ref_actions(path, ref)
        reader = ShardReader(path)
        assert reader.has_ref_action and reader.meta == make_meta(act=act)
        np.testing.assert_array_equal(reader.column("ref_action"), ref)
        assert reader.column("ref_action").dtype == reader.column("action").dtype
        for name, expected in data.items():
            np.testing.assert_array_equal(reader.column(name), expected)
        assert reader.rows(3, 9)["ref_action"].shape[0] == 6
        reader.verify()
        write_ref_actions(path, ref[::-1].copy())  # relabel again: replaced, not duplicated
        again = ShardReader(path)
        assert again.columns.count("ref_action") == 1
        np.testing.assert_array_equal(again.column("ref_action"), ref[::-1])
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))[:1] == []
    with pytest.raises(ShardInputError, match=r"ref_action has shape \(25,\)"):
        write_ref_actions(path, np.zeros(25, np.float32))
    with pytest.raises(KeyError, match="write_ref_actions"):
        plain = make_data(VECTOR, DISCRETE, [3], [None])
        ShardReader(write_shard(tmp_path / "n.arrow", make_meta(), plain)).column("ref_action")


def test_write_ref_actions_keeps_corruption_visible(tmp_path):
    data = make_data(VECTOR, DISCRETE, [12], ["term"])
    data["reward"][5] = 123.25
    path = write_shard(tmp_path / "run.arrow", make_meta(), data)
    raw = bytearray(path.read_bytes())
    raw[bytes(raw).index(np.float32(123.25).tobytes())] ^= 0x10
    path.write_bytes(bytes(raw))
    write_ref_actions(path, np.zeros(12, np.int64))
    with pytest.raises(CorruptShardError, match="column 'reward'"):
        ShardReader(path).verify()


def test_episodes_with_final_incomplete_episode(tmp_path):
    data = make_data(VECTOR, DISCRETE, [3, 2, 4], ["term", "trunc", None])
    data["reward"] = np.array([1, 1, 1, 0.5, 0.5, 2, 2, 2, 2], np.float32)
    data["episode"] = np.repeat([10, 11, 15], [3, 2, 4])
    path = write_shard(tmp_path / "run.arrow", make_meta(), data, batch_rows=4)
    eps = ShardReader(path).episodes()
    assert eps.drop("restarted").to_dicts() == [
        dict(episode=10, start=0, length=3, terminated=True, complete=True, **{"return": 3.0}),
        dict(episode=11, start=3, length=2, terminated=False, complete=True, **{"return": 1.0}),
        dict(episode=15, start=5, length=4, terminated=False, complete=False, **{"return": 8.0}),
    ]
    assert eps["restarted"].to_list() == [False, False, False]


def test_episodes_of_a_run_part_that_starts_mid_episode(tmp_path):
    data = make_data(VECTOR, DISCRETE, [4, 2], ["term", None])
    data["step"] = np.array([7, 8, 9, 10, 0, 1])  # part 1 of a run: episode 0 began in part 0
    path = write_shard(tmp_path / "p1.arrow", make_meta(part=1), data)
    eps = ShardReader(path).episodes()
    assert eps["length"].to_list() == [4, 2] and eps["complete"].to_list() == [True, False]


def test_empty_shard(tmp_path):
    path = tmp_path / "empty.arrow"
    with ShardWriter(path, make_meta(obs=IMAGE)):
        pass
    reader = ShardReader(path)
    assert reader.num_rows == 0 and reader.column("obs").shape == (0, 64, 64, 3)
    assert reader.rows(0, 0)["action"].shape == (0,)
    assert reader.episodes().height == 0
    reader.verify()


def test_rows_slicing(tmp_path):
    data = make_data(IMAGE, BOX_ACTION, [20, 15, 12], ["term", "trunc", None])
    path = write_shard(tmp_path / "run.arrow", make_meta(IMAGE, BOX_ACTION), data, batch_rows=8)
    reader = ShardReader(path)
    for start, stop in [(0, 47), (0, 8), (3, 5), (6, 10), (7, 33), (40, 47), (47, 47), (16, 16)]:
        window = reader.rows(start, stop)
        assert set(window) == set(data) | {"restarted"}  # written by ShardWriter, format 2 on
        for name, expected in data.items():
            np.testing.assert_array_equal(window[name], expected[start:stop], err_msg=name)
    inside = reader.rows(9, 14)["obs"]
    assert not inside.flags.owndata and not inside.flags.writeable  # a view of the map
    for start, stop in [(-1, 3), (5, 4), (0, 48)]:
        with pytest.raises(IndexError, match="out of range"):
            reader.rows(start, stop)
    starts = [s for s, _ in reader.batches()]
    assert starts == [0, 8, 16, 24, 32, 40]


def test_views_outlive_the_reader(tmp_path):
    data = make_data(VECTOR, DISCRETE, [6], [None])
    reader = ShardReader(write_shard(tmp_path / "run.arrow", make_meta(), data))
    window, steps = reader.rows(1, 4)["obs"], reader.column("step")
    reader.close()
    del reader
    np.testing.assert_array_equal(window, data["obs"][1:4])
    np.testing.assert_array_equal(steps, data["step"])


def test_reader_pickles_by_path(tmp_path):
    path = write_shard(
        tmp_path / "run.arrow", make_meta(), make_data(VECTOR, DISCRETE, [6], [None])
    )
    clone = pickle.loads(pickle.dumps(ShardReader(path)))
    assert clone.path == path and clone.num_rows == 6


def test_decisions(tmp_path):
    path = tmp_path / "run.arrow"
    assert read_decision(path) is None
    write_decision(
        path,
        {"kept": np.bool_(False), "reason": "no improvement", "stats": {"gain": np.float32(0.5)}},
    )
    assert (tmp_path / "run.arrow.decision.json").exists()
    assert read_decision(path) == {
        "kept": False,
        "reason": "no improvement",
        "stats": {"gain": 0.5},
    }
    with pytest.raises(ShardInputError, match="'kept' must be a bool"):
        write_decision(path, {"kept": "yes", "reason": ""})
    (tmp_path / "run.arrow.decision.json").write_text("{not json")
    with pytest.raises(CorruptDecisionError, match=r"run\.arrow\.decision\.json"):
        read_decision(path)


def build_dataset(root):
    """Four shards of three runs (one in two parts) in nested folders; two decisions."""
    specs = [
        ("toy/Toy-v0/ppo/seed0.arrow", dict(seed=0), [4] * 20, ["term"] * 20, 0),
        ("toy/Toy-v0/ppo/seed1-part0.arrow", dict(seed=1, run_key="r1"), [3, 5], ["term", None], 1),
        ("toy/Toy-v0/ppo/seed1-part1.arrow", dict(seed=1, run_key="r1", part=1), [2], [None], 2),
        (
            "img/Img-v0/dqn/seed0.arrow",
            dict(
                library="img",
                env_id="Img-v0",
                candidate="dqn",
                run_key="img/Img-v0/dqn/0",
                observation_space=IMAGE,
            ),
            [6, 6],
            ["trunc", "term"],
            3,
        ),
    ]
    for rel, over, lengths, ends, seed in specs:
        meta = make_meta(**over)
        data = make_data(meta.observation_space, DISCRETE, lengths, ends, seed=seed)
        if rel.endswith("seed0.arrow") and "toy" in rel:
            data["reward"] = np.repeat(np.arange(20, dtype=np.float32), 4)  # returns 0,4,...,76
        write_shard(root / rel, meta, data, batch_rows=16)
    write_decision(root / specs[0][0], {"kept": True, "reason": "improves", "stats": {"auc": 1.5}})
    write_decision(root / specs[3][0], {"kept": False, "reason": "flat", "stats": {}})
    write_ref_actions(root / specs[3][0], np.zeros(12, np.int64))
    return [s[0] for s in specs]


def test_build_index(tmp_path):
    rels = build_dataset(tmp_path)
    runs, episodes = build_index(tmp_path)
    assert runs["shard_path"].to_list() == sorted(rels)
    by_path = {row["shard_path"]: row for row in runs.to_dicts()}
    full = by_path["toy/Toy-v0/ppo/seed0.arrow"]
    assert full["rows"] == 80 and full["episodes"] == 20
    assert full["mean_return"] == pytest.approx(38.0)
    assert full["first10_mean"] == pytest.approx(2.0)  # episodes 0 and 1: 0 and 4
    assert full["last10_mean"] == pytest.approx(74.0)  # 72 and 76
    assert full["kept"] is True and full["reason"] == "improves"
    assert json.loads(full["stats"]) == {"auc": 1.5}
    assert full["obs_kind"] == "vector" and full["environment_ref"] == "venv-abc123"
    assert json.loads(full["action_space"]) == {"type": "discrete", "n": 15, "start": 0}
    assert BoxSpace.model_validate_json(full["observation_space"]) == VECTOR
    part0 = by_path["toy/Toy-v0/ppo/seed1-part0.arrow"]
    assert part0["episodes"] == 2 and part0["first10_mean"] == part0["last10_mean"]
    assert part0["kept"] is None and part0["stats"] is None and not part0["has_ref_action"]
    part1 = by_path["toy/Toy-v0/ppo/seed1-part1.arrow"]
    assert part1["part"] == 1 and part1["mean_return"] is None  # no complete episode
    image = by_path["img/Img-v0/dqn/seed0.arrow"]
    assert image["obs_kind"] == "image" and image["has_ref_action"] and image["kept"] is False

    assert episodes.height == 20 + 2 + 1 + 2
    assert episodes.columns[:6] == [
        "library",
        "env_id",
        "candidate",
        "seed",
        "run_key",
        "shard_path",
    ]
    img_eps = episodes.filter(pl.col("library") == "img")
    assert img_eps["start"].to_list() == [0, 6] and img_eps["terminated"].to_list() == [False, True]


def test_index_round_trip_and_rebuild(tmp_path):
    build_dataset(tmp_path)
    folder = write_index(tmp_path)
    assert folder == tmp_path / INDEX_DIR
    assert sorted(p.name for p in folder.iterdir()) == [
        "episodes.parquet",
        "info.json",
        "runs.parquet",
    ]
    info = json.loads((folder / "info.json").read_text())
    assert info["shards"] == 4 and info["runs"] == 3 and info["episodes"] == 25
    runs, episodes = read_index(tmp_path)
    built_runs, built_episodes = build_index(tmp_path)
    assert runs.equals(built_runs) and episodes.equals(built_episodes)
    # the index is derived data: delete it, rebuild, same frames
    import shutil

    shutil.rmtree(folder)
    with pytest.raises(FileNotFoundError, match="write_index"):
        read_index(tmp_path)
    write_index(tmp_path)
    again_runs, again_episodes = read_index(tmp_path)
    assert again_runs.equals(runs) and again_episodes.equals(episodes)
    # rewriting over an existing index swaps it and leaves no stray folder
    write_decision(tmp_path / "toy/Toy-v0/ppo/seed1-part0.arrow", {"kept": True, "reason": "ok"})
    write_index(tmp_path)
    assert read_index(tmp_path)[0]["kept"].null_count() == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".index.lock")) == [
        "img",
        "index",
        "toy",
    ]


def test_index_of_empty_root(tmp_path):
    runs, episodes = build_index(tmp_path)
    assert runs.height == 0 and episodes.height == 0 and "first10_mean" in runs.columns
    write_index(tmp_path)
    runs2, episodes2 = read_index(tmp_path)
    assert runs2.equals(runs) and episodes2.equals(episodes)


def test_index_names_corrupt_shards_or_skips_them(tmp_path):
    build_dataset(tmp_path)
    bad = tmp_path / "toy/Toy-v0/ppo/seed1-part1.arrow"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CorruptShardError, match=r"seed1-part1\.arrow"):
        build_index(tmp_path)
    with pytest.warns(UserWarning, match=r"seed1-part1\.arrow"):
        runs, _ = build_index(tmp_path, on_corrupt="skip")
    assert runs.height == 3


def test_index_checks_what_it_reads_and_verify_reads_all(tmp_path):
    data = make_data(VECTOR, DISCRETE, [8], ["term"])
    data["reward"][3] = 77.0
    data["obs"][5] = np.array([9.5, 8.5, 7.5, 6.5], np.float32)
    path = write_shard(tmp_path / "run.arrow", make_meta(), data)
    clean = path.read_bytes()
    raw = bytearray(clean)
    raw[bytes(raw).index(data["obs"][5].tobytes()) + 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert build_index(tmp_path)[0].height == 1  # obs is not read by the index: not checked
    with pytest.raises(CorruptShardError, match="column 'obs'"):
        build_index(tmp_path, verify=True)
    raw = bytearray(clean)
    raw[bytes(raw).index(np.float32(77.0).tobytes()) + 1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptShardError, match=r"run\.arrow: .*column 'reward'"):
        build_index(tmp_path)  # the returns come from the rewards: read, so checked


def test_meta_timestamp_and_version(tmp_path):
    meta = make_meta(created=time.time())
    path = write_shard(tmp_path / "run.arrow", meta, make_data(VECTOR, DISCRETE, [2], [None]))
    assert ShardReader(path).meta.format_version == FORMAT_VERSION == 2
    assert Path(path).stat().st_size > 0
