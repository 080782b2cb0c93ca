"""The data root as a URL, against a real S3-compatible server process (moto_server)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ldm_envs.errors import LDMEnvsError
from ldm_envs.store import DataRoot, StoreError
from tests.ldm_envs.store_server import export_env, make_bucket, moto_server


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def s3root(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> DataRoot:
    export_env(monkeypatch, endpoint)
    return DataRoot.parse(f"s3://{make_bucket(endpoint)}/data")


def _folder(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def test_parse_keeps_paths_local_and_refuses_unknown_schemes(tmp_path: Path) -> None:
    assert DataRoot.parse(tmp_path).is_local
    assert DataRoot.parse(f"file://{tmp_path}").path == tmp_path
    assert not DataRoot.parse("s3://bucket/prefix/").is_local
    assert DataRoot.parse("s3://bucket/prefix/").url == "s3://bucket/prefix"
    with pytest.raises(StoreError, match="unknown scheme 'ftp'"):
        DataRoot.parse("ftp://host/x")
    with pytest.raises(LDMEnvsError, match="names no bucket"):
        DataRoot.parse("s3://")
    with pytest.raises(StoreError, match="relative path"):
        DataRoot.parse(tmp_path).pull("../etc/passwd")


def test_write_and_read_back(s3root: DataRoot, tmp_path: Path) -> None:
    shard = _folder(tmp_path / "src", {"part-0.arrow": b"a" * 100, "sub/part-1.arrow": b"bc"})
    s3root.publish(shard, "shards/lib/env/run")
    s3root.publish_bytes(b'{"ok": 1}', "runs/ranking/lib/env/run.json")

    assert s3root.list("shards/lib/env") == ["shards/lib/env/run"]
    assert s3root.list("runs/ranking/lib/env") == ["runs/ranking/lib/env/run.json"]
    assert s3root.read_bytes("runs/ranking/lib/env/run.json") == b'{"ok": 1}'
    assert s3root.read_bytes("runs/ranking/lib/env/other.json") is None

    got = s3root.pull("shards/lib/env/run", tmp_path / "cache")
    assert (got / "part-0.arrow").read_bytes() == b"a" * 100
    assert (got / "sub/part-1.arrow").read_bytes() == b"bc"

    # a second root object (another node) sees the same entries
    other = DataRoot.parse(s3root.url)
    assert other.exists("shards/lib/env/run") and not other.exists("shards/lib/env/nope")


def test_interrupted_publish_is_invisible_and_resumes(s3root: DataRoot, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", {"part-0.arrow": b"x" * 50, "part-2.arrow": b"z" * 10})
    # a part the writer loses mid-way: the upload fails after part-0 went up
    (src / "part-1.arrow").symlink_to(tmp_path / "missing")
    with pytest.raises(StoreError, match=r"publish s3://.*/shards/lib/env/run"):
        s3root.publish(src, "shards/lib/env/run")

    assert s3root.list("shards/lib/env") == []
    assert not s3root.exists("shards/lib/env/run")
    with pytest.raises(StoreError, match="not published"):
        s3root.pull("shards/lib/env/run", tmp_path / "cache")

    # resume: the writer publishes again, complete this time
    (src / "part-1.arrow").unlink()
    (src / "part-1.arrow").write_bytes(b"y" * 20)
    s3root.publish(src, "shards/lib/env/run")
    assert s3root.list("shards/lib/env") == ["shards/lib/env/run"]
    got = s3root.pull("shards/lib/env/run", tmp_path / "cache")
    assert sorted(p.name for p in got.iterdir()) == ["part-0.arrow", "part-1.arrow", "part-2.arrow"]


def test_republish_hides_the_old_entry_until_complete(s3root: DataRoot, tmp_path: Path) -> None:
    s3root.publish_bytes(b"old", "ranking/lib.json")
    src = _folder(tmp_path / "new", {"a": b"1"})
    (src / "b").symlink_to(tmp_path / "missing")
    with pytest.raises(StoreError):
        s3root.publish(src, "ranking/lib.json")
    # no mix of old and new is ever readable
    assert s3root.read_bytes("ranking/lib.json") is None


def test_cache_bound_is_respected(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    export_env(monkeypatch, endpoint)
    root = DataRoot.parse(f"s3://{make_bucket(endpoint)}/d", cache_bytes=2500)
    for i in range(4):
        root.publish(_folder(tmp_path / f"s{i}", {"part-0.arrow": bytes([i]) * 1000}), f"s/r{i}")
    cache = tmp_path / "cache"
    for i in range(4):
        root.pull(f"s/r{i}", cache)
        time.sleep(0.01)  # distinct mtimes: the LRU clock
        held = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        assert held <= 2500
        assert (cache / f"s/r{i}/part-0.arrow").exists()  # the entry just pulled is kept
    # the two most recently used survive, the older ones were evicted
    assert sorted(p.parent.name for p in cache.rglob("part-0.arrow")) == ["r2", "r3"]

    # a hit refreshes the clock: r2 is used again, so r3 goes when r0 comes back
    root.pull("s/r2", cache)
    time.sleep(0.01)
    root.pull("s/r0", cache)
    assert sorted(p.parent.name for p in cache.rglob("part-0.arrow")) == ["r0", "r2"]

    # files the caller holds open are never evicted, even if the oldest
    root.pull("s/r1", cache, keep=[cache / "s/r0/part-0.arrow"])
    assert (cache / "s/r0/part-0.arrow").exists()

    big = DataRoot.parse(root.url, cache_bytes=500)
    with pytest.raises(StoreError, match="exceed the cache bound"):
        big.pull("s/r0", tmp_path / "cache2")


def test_pull_verifies_sizes(s3root: DataRoot, tmp_path: Path) -> None:
    s3root.publish(_folder(tmp_path / "src", {"p": b"12345"}), "s/r")
    fs, base = s3root._filesystem()
    fs.pipe_file(f"{base}/s/r/p", b"123")  # the object changed behind the manifest
    with pytest.raises(StoreError, match="got 3 bytes, manifest says 5"):
        s3root.pull("s/r", tmp_path / "cache")


def test_local_root_is_the_identity(tmp_path: Path) -> None:
    root = DataRoot.parse(tmp_path / "root")
    inside = _folder(tmp_path / "root" / "shards" / "r", {"p": b"1"})
    root.publish(inside, "shards/r")  # already in place: nothing copied
    assert root.pull("shards/r") == inside
    root.publish(_folder(tmp_path / "elsewhere", {"p": b"2"}), "shards/q")
    root.publish_bytes(b"{}", "runs/x.json")
    (tmp_path / "root" / "shards" / f".q.tmp-{os.getpid()}-dead").mkdir()
    assert root.list("shards") == ["shards/q", "shards/r"]
    assert root.read_bytes("runs/x.json") == b"{}"
    with pytest.raises(StoreError, match="not found"):
        root.pull("shards/none")


def test_list_folders(s3root: DataRoot, tmp_path: Path) -> None:
    s3root.publish_bytes(b"1", "runs/ranking/lib/EnvA/r.json")
    s3root.publish_bytes(b"2", "runs/ranking/lib/EnvB/r.json")
    assert s3root.list_folders("runs/ranking/lib") == ["EnvA", "EnvB"]
    assert s3root.list_folders("runs/reference/lib") == []
    local = DataRoot.parse(tmp_path)
    local.publish_bytes(b"1", "runs/x/EnvA/r.json")
    assert local.list_folders("runs/x") == ["EnvA"]
