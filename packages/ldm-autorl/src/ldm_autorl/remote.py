"""The stages on a remote data root (`--dataset s3://bucket/prefix`, see `ldm_envs.store`).

The stages keep working on local folders, as on a local root; a remote root is reached at
the edges only:

- the driver works in a local mirror (`<data home>/stores/<url>`): before a stage it pulls the
  published run records and rankings it reads (resume = the published records), and after the
  ranking it publishes `ranking/<library>.json`;
- each task (`train_run_to_store`, on whichever node runs it) trains into a scratch folder of
  its own, then publishes the run's shard folder and model, and its record LAST: a record in
  the store means the run and everything it names are there;
- `filter_on_store` pulls a library's records and shards, filters in the mirror, and
  publishes the decisions, the random-policy scores and the index back.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ldm_autorl import layout
from ldm_autorl.jobs import RunResult, load_result, train_run
from ldm_envs.dataset.index import INDEX_DIR
from ldm_envs.paths import data_home
from ldm_envs.store import DataRoot

#: The task target of a run on a remote root (`TASK_TARGET`'s counterpart).
STORE_TASK_TARGET = "ldm_autorl.remote:train_run_to_store"


def open_root(root: Path | str | DataRoot) -> tuple[Path, DataRoot | None]:
    """The local folder a stage works in and, for a remote root, the store behind it."""
    store = DataRoot.parse(root)
    if store.is_local:
        return store.path, None
    return mirror_dir(store), store


def mirror_dir(store: DataRoot) -> Path:
    """The driver's local working copy of a remote root, one per URL."""
    return store.local_folder("stores")


def pull_records(store: DataRoot, mirror: Path, library: str, stages: Iterable[str]) -> int:
    """Copy the published run records of `library`'s `stages` and its ranking into `mirror`.

    Records the store does not hold (any more) are removed from the mirror, so the stages'
    resume sees exactly what is published. Returns how many records were pulled.
    """
    pulled = 0
    for stage in stages:
        folder = f"runs/{stage}/{library}"
        published = {
            rel for env in store.list_folders(folder) for rel in store.list(f"{folder}/{env}")
        }
        local = mirror / folder
        for path in local.rglob("*.json") if local.is_dir() else ():
            if path.relative_to(mirror).as_posix() not in published:
                path.unlink()
        for rel in sorted(published):
            data = store.read_bytes(rel)
            if data is not None:
                _write(mirror / rel, data)
                pulled += 1
    ranking = f"ranking/{library}.json"
    data = store.read_bytes(ranking)
    if data is not None:
        _write(mirror / ranking, data)
    return pulled


def publish_ranking(store: DataRoot, mirror: Path, library: str) -> None:
    """Publish the ranking the driver wrote into its mirror."""
    path = layout.ranking_path(mirror, library)
    store.publish(path, path.relative_to(mirror).as_posix())


def train_run_to_store(*, store: str, root: str | None = None, **run: Any) -> dict[str, Any]:
    """`jobs.train_run` into a scratch folder, then its shards, model and record published.

    A task retried after its first attempt published (or a run published by an earlier
    stage call) is not redone: the published record is returned.
    """
    del root  # the driver's mirror: never written by a task
    target = DataRoot.parse(store)
    rid = layout.RunId(run["library"], run["env_id"], run["candidate"], run["seed"], run["budget"])
    rel = _rel(rid.result_path(Path("."), run["stage"]))
    done = target.read_bytes(rel)
    if done is not None:
        return RunResult.model_validate_json(done).model_dump()
    scratch = Path(tempfile.mkdtemp(prefix="ldm-run-", dir=_scratch_home()))
    try:
        value = train_run(root=str(scratch), **run)
        result = load_result(rid.result_path(scratch, run["stage"]))
        assert result is not None  # train_run writes its record before returning
        shard_dirs = sorted({str(Path(s).parent) for s in result.shards})
        for shard_dir in shard_dirs:
            target.publish(scratch / shard_dir, _rel(Path(shard_dir)))
        if result.model:
            target.publish(scratch / result.model, _rel(Path(result.model)))
        target.publish(rid.result_path(scratch, run["stage"]), rel)  # last: the run is done
        return value
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pull_for_filter(store: DataRoot, mirror: Path, library: str) -> int:
    """Copy what the filter reads into the mirror: records, random scores, every shard.

    Every library's shards, not only `library`'s: the index the filter rebuilds covers the
    whole root. Files the mirror holds at the published size are not downloaded again.
    Returns how many shard folders are in the mirror.
    """
    pull_records(store, mirror, library, ["reference"])
    unbounded = store.model_copy(update={"cache_bytes": 2**62})
    for rel in store.list(f"random/{library}"):
        unbounded.pull(rel, mirror, evict_after=False)
    count = 0
    for lib in store.list_folders("shards"):
        for env in store.list_folders(f"shards/{lib}"):
            for rel in store.list(f"shards/{lib}/{env}"):
                unbounded.pull(rel, mirror, evict_after=False)
                count += 1
    return count


def publish_filter(store: DataRoot, mirror: Path, library: str) -> None:
    """Publish what the filter wrote: shard folders (with decisions), random scores, index."""
    for folder in sorted({p.parent for p in (mirror / "shards" / library).rglob("*.arrow")}):
        store.publish(folder, folder.relative_to(mirror).as_posix())
    for path in sorted((mirror / "random" / library).glob("*.json")):
        store.publish(path, path.relative_to(mirror).as_posix())
    if (mirror / INDEX_DIR).is_dir():
        store.publish(mirror / INDEX_DIR, INDEX_DIR)


def _scratch_home() -> Path:
    path = data_home() / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rel(path: Path) -> str:
    return path.as_posix().removeprefix("./")


def _write(path: Path, data: bytes) -> None:
    from ldm_envs.atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
