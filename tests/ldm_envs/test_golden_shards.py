"""A dataset written by an earlier release still reads: the golden shards and index.

`tests/fixtures/golden/dataset/` was written by `tools/make_golden_fixtures.py` with the code
of its day; these tests read it with today's readers. A failure here means today's code no
longer reads existing datasets: either keep reading the old format (as format-1 shards without
`restarted` still are), or change the format deliberately (bump `FORMAT_VERSION`), regenerate
the fixtures and say so. The expected values are the script's formulas, repeated here.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ldm_envs.dataset import (
    EPISODES_SCHEMA,
    RUNS_SCHEMA,
    ShardReader,
    check_index,
    read_decision,
    read_index,
)
from ldm_envs.spaces import BoxSpace, DiscreteSpace

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "dataset"
VECTOR = Path("golden") / "VecDiscrete-v0" / "run-0.arrow"
IMAGE = Path("golden") / "Image-v0" / "run-0.arrow"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the golden dataset: nothing a reader does can touch the committed files."""
    copy = tmp_path_factory.mktemp("golden") / "dataset"
    shutil.copytree(GOLDEN, copy)
    return copy


def test_the_vector_shard_reads_with_its_metadata(root: Path) -> None:
    with ShardReader(root / VECTOR) as r:
        meta = r.meta
        assert meta.format_version == 2
        assert (meta.library, meta.env_id, meta.candidate, meta.seed) == (
            "golden",
            "VecDiscrete-v0",
            "ppo",
            0,
        )
        assert meta.run_key == "golden/VecDiscrete-v0/ppo/0" and meta.part == 0
        assert meta.environment_ref == "venv-golden" and meta.created == 1_700_000_000.0
        assert meta.observation_space == BoxSpace(shape=(4,), low=-math.inf, high=math.inf)
        assert meta.action_space == DiscreteSpace(n=2)
        assert r.num_rows == 40 and r.num_batches == 3  # batches of 16, 16, 8
        assert r.has_ref_action and r.has_restarted
        r.verify()


def test_the_vector_shard_holds_its_values_in_their_dtypes(root: Path) -> None:
    rows = np.arange(40)
    step, episode = rows % 12, rows // 12
    last = (step == 11) & (rows < 36)
    expected = {
        "obs": (rows[:, None] + np.arange(4)[None] / 4).astype(np.float32),
        "action": rows % 2,
        "ref_action": 1 - rows % 2,
        "reward": (rows % 5 - 1.5).astype(np.float32),
        "terminated": last & (episode % 2 == 0),
        "truncated": last & (episode % 2 == 1),
        "episode": episode,
        "step": step,
        "restarted": rows == 23,
    }
    dtypes = {
        "obs": np.float32,
        "action": np.int64,
        "ref_action": np.int64,
        "reward": np.float32,
        "terminated": np.bool_,
        "truncated": np.bool_,
        "episode": np.int64,
        "step": np.int64,
        "restarted": np.bool_,
    }
    with ShardReader(root / VECTOR) as r:
        for name, want in expected.items():
            got = r.column(name)
            assert got.dtype == dtypes[name], name
            np.testing.assert_array_equal(got, want, err_msg=name)
        # a slice across the first batch boundary reads the same rows
        part = r.rows(14, 18)
        np.testing.assert_array_equal(part["obs"], expected["obs"][14:18])
        np.testing.assert_array_equal(part["action"], expected["action"][14:18])


def test_the_vector_shard_episodes(root: Path) -> None:
    with ShardReader(root / VECTOR) as r:
        episodes = r.episodes()
    assert episodes.to_dicts() == [
        dict(episode=0, start=0, length=12, terminated=True, complete=True, restarted=False)
        | {"return": 3.0},
        dict(episode=1, start=12, length=12, terminated=False, complete=False, restarted=True)
        | {"return": 7.0},
        dict(episode=2, start=24, length=12, terminated=True, complete=True, restarted=False)
        | {"return": 6.0},
        dict(episode=3, start=36, length=4, terminated=False, complete=False, restarted=False)
        | {"return": 4.0},
    ]


def test_the_image_shard_holds_uint8_frames_and_box_actions(root: Path) -> None:
    rows = np.arange(10)
    with ShardReader(root / IMAGE) as r:
        assert r.meta.format_version == 2
        assert r.meta.observation_space == BoxSpace(shape=(7, 7, 3), dtype="uint8", low=0, high=255)
        assert r.meta.action_space == BoxSpace(shape=(2,), low=-1.0, high=1.0)
        assert r.num_rows == 10 and r.num_batches == 1
        obs = r.column("obs")
        assert obs.dtype == np.uint8 and obs.shape == (10, 7, 7, 3)
        np.testing.assert_array_equal(
            obs, ((7 * rows[:, None] + np.arange(147)[None]) % 256).reshape(10, 7, 7, 3)
        )
        action = np.stack([rows / 10, -rows / 10], 1).astype(np.float32)
        assert r.column("action").dtype == np.float32
        np.testing.assert_array_equal(r.column("action"), action)
        np.testing.assert_array_equal(r.column("ref_action"), action / 2)
        np.testing.assert_array_equal(r.column("reward"), (rows / 4).astype(np.float32))
        assert r.column("terminated").tolist() == [False] * 9 + [True]
        assert not r.column("restarted").any()
        r.verify()


def test_the_decisions_read(root: Path) -> None:
    for shard in (VECTOR, IMAGE):
        decision = read_decision(root / shard)
        assert decision is not None
        assert (decision["kept"], decision["reason"]) == (True, "kept")


def test_the_index_reads_with_its_columns_and_values(root: Path) -> None:
    assert check_index(root).ok
    info = json.loads((root / "index" / "info.json").read_text())
    assert info["index_format_version"] == 2 and info["shard_format_version"] == 2
    assert (info["shards"], info["runs"], info["rows"], info["episodes"]) == (2, 2, 50, 5)
    runs, episodes = read_index(root)
    assert runs.schema == pl.Schema(RUNS_SCHEMA)
    assert episodes.schema == pl.Schema(EPISODES_SCHEMA)
    runs = runs.sort("env_id")
    assert runs["env_id"].to_list() == ["Image-v0", "VecDiscrete-v0"]
    assert runs["shard_path"].to_list() == [IMAGE.as_posix(), VECTOR.as_posix()]
    assert runs["rows"].to_list() == [10, 40]
    assert runs["episodes"].to_list() == [1, 4]
    assert runs["obs_kind"].to_list() == ["image", "vector"]
    assert runs["restarted_episodes"].to_list() == [0, 1]
    assert runs["has_ref_action"].all() and runs["kept"].all()
    # the means leave out the restarted and the incomplete episode: (3 + 6) / 2
    assert runs["mean_return"].to_list() == [11.25, 4.5]
    vector = episodes.filter(pl.col("env_id") == "VecDiscrete-v0").sort("episode")
    assert vector["return"].to_list() == [3.0, 7.0, 6.0, 4.0]
    assert vector["restarted"].to_list() == [False, True, False, False]
