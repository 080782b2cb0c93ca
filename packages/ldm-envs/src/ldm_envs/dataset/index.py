"""The dataset index: Polars tables of runs (one row per shard) and episodes, kept as Parquet.

The index is derived data: `build_index(root)` recomputes it from the `*.arrow` shards under
`root` and their decision sidecars alone, so deleting `root/index` loses nothing.
`write_index` publishes a new index folder atomically (written aside, then renamed in).

Nothing is lost silently: `check_index` compares the published index with the files (shards
gone, shards not indexed, decision sidecars whose shard is gone), and `write_index` says which
indexed shards disappeared since the last index (naming their runs) and removes the orphaned
sidecars. With `on_corrupt="quarantine"` a corrupt shard is moved into `root/quarantine/` with
its reason instead of stopping the build.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import polars as pl
from filelock import FileLock
from pydantic import BaseModel

from ldm_envs.atomic import fsync_file, replace_dir, tmp_sibling
from ldm_envs.dataset.errors import CorruptFileError, CorruptIndexError, CorruptShardError
from ldm_envs.dataset.quarantine import QUARANTINE_DIR, quarantine_shard
from ldm_envs.dataset.shards import (
    DECISION_SUFFIX,
    EPISODE_COLUMNS,
    FORMAT_VERSION,
    SHARD_SUFFIX,
    TMP_MARK,
    ShardReader,
    read_decision,
)
from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiBinarySpace, MultiDiscreteSpace
from ldm_envs.stats import first_last_means

INDEX_DIR = "index"
#: Version of the index tables' layout (bumped when columns change). 2 added the worker-restart
#: columns (`restarted` per episode, `restarted_episodes` per shard); a version-1 index is read
#: with them filled in as "no restart" (`_upgrade`), as the shards it was built from had none.
INDEX_FORMAT_VERSION = 2
RUNS_FILE = "runs.parquet"
EPISODES_FILE = "episodes.parquet"
INFO_FILE = "info.json"

#: Columns of the runs table, one row per shard.
RUNS_SCHEMA: dict[str, pl.DataType] = {
    "library": pl.String(),
    "env_id": pl.String(),
    "candidate": pl.String(),
    "seed": pl.Int64(),
    "run_key": pl.String(),
    "part": pl.Int64(),
    "mlflow_run_id": pl.String(),
    "observation_space": pl.String(),
    "action_space": pl.String(),
    "obs_kind": pl.String(),
    "environment_ref": pl.String(),
    "shard_path": pl.String(),
    "rows": pl.Int64(),
    "episodes": pl.Int64(),
    "mean_return": pl.Float64(),
    "first10_mean": pl.Float64(),
    "last10_mean": pl.Float64(),
    "has_ref_action": pl.Boolean(),
    #: episodes cut by a worker restart: left out of the means above (`ShardReader.episodes`)
    "restarted_episodes": pl.Int64(),
    "kept": pl.Boolean(),
    "reason": pl.String(),
    "stats": pl.String(),
}
#: Columns of the episodes table, one row per episode of every shard.
EPISODES_SCHEMA: dict[str, pl.DataType] = {
    "library": pl.String(),
    "env_id": pl.String(),
    "candidate": pl.String(),
    "seed": pl.Int64(),
    "run_key": pl.String(),
    "shard_path": pl.String(),
    **EPISODE_COLUMNS,  # what ShardReader.episodes() returns, after the identity columns
}


def obs_kind(space: BoxSpace | DiscreteSpace | MultiDiscreteSpace | MultiBinarySpace) -> str:
    """`image` (uint8 HxWxC box), `vector` (other boxes), `discrete`, `multi_discrete`, ..."""
    if isinstance(space, BoxSpace):
        return "image" if space.is_image else "vector"
    return space.type


#: Top-level folders of a data root that hold no live shards.
_NOT_DATA = (INDEX_DIR, QUARANTINE_DIR)


def find_shards(root: Path) -> list[Path]:
    """Every shard under `root`, sorted; skips hidden files, `index/` and `quarantine/`."""
    root = Path(root)
    found = []
    for path in root.rglob(f"*{SHARD_SUFFIX}"):
        rel = path.relative_to(root)
        if rel.parts[0] in _NOT_DATA or any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def clean_temporaries(root: Path, *, older_than_s: float = 3600.0) -> list[Path]:
    """Remove what crashed writers left under `root`: hidden `.*.tmp-*` files and folders.

    Only those untouched for `older_than_s` seconds, so that live writers keep theirs.
    Returns the removed paths.
    """
    root = Path(root)
    now = time.time()
    removed = []
    old_index = f".{INDEX_DIR}.old-"
    for path in sorted(root.rglob(".*")):
        if TMP_MARK not in path.name and not path.name.startswith(old_index):
            continue
        try:
            if now - path.stat().st_mtime < older_than_s:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _edge_means(returns: list[float]) -> tuple[float | None, float | None, float | None]:
    if not returns:
        return None, None, None
    return (sum(returns) / len(returns), *first_last_means(returns))


OnCorrupt = Literal["raise", "skip", "quarantine"]


def build_index(
    root: Path,
    *,
    on_corrupt: OnCorrupt = "raise",
    verify: bool = False,
    report: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Scan every shard under `root` (and its decision sidecar) into (runs, episodes).

    Each shard is opened through its memory map and only its small columns (episode, reward,
    flags) are read, their CRC-32 checked as every read is. `mean_return` averages its
    complete episodes (an episode cut by a worker restart is not complete: it is counted in
    `restarted_episodes` and left out of all three means); `first10_mean` and
    `last10_mean` the first and last ceil(10%) of them (at least one); all three are null when
    the shard has no complete episode. `kept`, `reason` and `stats` (JSON) are null until a
    decision is written.

    Args:
        root: dataset folder.
        on_corrupt: `"raise"` (default) stops at the first corrupt shard or sidecar with an
            error naming it; `"skip"` leaves it out of the index with a warning naming it;
            `"quarantine"` also moves a corrupt shard into `root/quarantine/` with its reason
            (a corrupt sidecar is skipped, as its shard may be fine).
        verify: also run `ShardReader.verify()` (reads every byte, checks CRCs) on each shard.
        report: where warnings go (default: `warnings.warn`).

    Raises:
        CorruptShardError: a shard is unreadable (unless `on_corrupt="skip"`).
        CorruptDecisionError: a decision sidecar is unreadable (unless `on_corrupt="skip"`).
    """
    root = Path(root)
    runs: list[dict[str, Any]] = []
    episode_frames: list[pl.DataFrame] = []
    for path in find_shards(root):
        rel = path.relative_to(root).as_posix()
        try:
            with ShardReader(path) as reader:
                if verify:
                    reader.verify()
                meta = reader.meta
                eps = reader.episodes()
                rows = reader.num_rows
                has_ref = reader.has_ref_action
            decision = read_decision(path)
        except CorruptFileError as exc:
            if on_corrupt == "raise":
                raise
            moved = None
            if on_corrupt == "quarantine" and isinstance(exc, CorruptShardError):
                moved = quarantine_shard(root, path, str(exc), found_by="index")
            where = f": moved to {moved.moved_to}" if moved else ""
            _say(report, f"index: skipping {exc}{where}")
            continue
        returns = eps.filter(pl.col("complete"))["return"].to_list()
        mean, first, last = _edge_means(returns)
        runs.append(
            {
                "library": meta.library,
                "env_id": meta.env_id,
                "candidate": meta.candidate,
                "seed": meta.seed,
                "run_key": meta.run_key,
                "part": meta.part,
                "mlflow_run_id": meta.mlflow_run_id,
                "observation_space": meta.observation_space.model_dump_json(),
                "action_space": meta.action_space.model_dump_json(),
                "obs_kind": obs_kind(meta.observation_space),
                "environment_ref": meta.environment_ref,
                "shard_path": rel,
                "rows": rows,
                "episodes": eps.height,
                "mean_return": mean,
                "first10_mean": first,
                "last10_mean": last,
                "has_ref_action": has_ref,
                "restarted_episodes": int(eps["restarted"].sum()),
                "kept": None if decision is None else decision["kept"],
                "reason": None if decision is None else decision["reason"],
                "stats": None if decision is None else json.dumps(decision["stats"]),
            }
        )
        episode_frames.append(
            eps.with_columns(
                pl.lit(meta.library, pl.String).alias("library"),
                pl.lit(meta.env_id, pl.String).alias("env_id"),
                pl.lit(meta.candidate, pl.String).alias("candidate"),
                pl.lit(meta.seed, pl.Int64).alias("seed"),
                pl.lit(meta.run_key, pl.String).alias("run_key"),
                pl.lit(rel, pl.String).alias("shard_path"),
            ).select(list(EPISODES_SCHEMA))
        )
    runs_df = pl.DataFrame(runs, schema=RUNS_SCHEMA)
    episodes_df = (
        pl.concat(episode_frames, how="vertical")
        if episode_frames
        else pl.DataFrame(schema=EPISODES_SCHEMA)
    )
    return runs_df, episodes_df


def _say(report: Callable[[str], None] | None, message: str) -> None:
    if report is None:
        warnings.warn(message, stacklevel=3)
    else:
        report(message)


class MissingShard(BaseModel):
    """A shard the published index lists but the data root no longer has."""

    shard_path: str
    run_key: str
    rows: int
    kept: bool | None = None


class IndexCheck(BaseModel):
    """The published index against the files of a data root (cheap: no shard is opened)."""

    #: the index could be read (False: none yet, or unreadable: `problem` says which)
    index_found: bool
    problem: str | None = None
    #: indexed shards whose file is gone (deleted, or moved into quarantine/)
    missing: list[MissingShard] = []
    #: shards on disk the index does not list (written since the index was built)
    unindexed: list[str] = []
    #: decision sidecars whose shard is gone, relative to the root
    orphans: list[str] = []

    @property
    def ok(self) -> bool:
        """Index and files agree."""
        return self.index_found and not (self.missing or self.unindexed or self.orphans)


def find_orphans(root: Path) -> list[Path]:
    """Decision sidecars (`<shard>.decision.json`) whose shard is gone, outside quarantine/."""
    root = Path(root)
    orphans = []
    for path in root.rglob(f"*{SHARD_SUFFIX}{DECISION_SUFFIX}"):
        rel = path.relative_to(root)
        if rel.parts[0] in _NOT_DATA or any(part.startswith(".") for part in rel.parts):
            continue
        if not path.with_name(path.name[: -len(DECISION_SUFFIX)]).exists():
            orphans.append(path)
    return sorted(orphans)


def check_index(root: Path) -> IndexCheck:
    """Compare the published index of `root` with the shards and sidecars on disk.

    Costs one `stat` per shard and a directory walk: what `ldm-autorl show` runs before
    trusting the index's totals.
    """
    root = Path(root)
    orphans = [p.relative_to(root).as_posix() for p in find_orphans(root)]
    on_disk = {p.relative_to(root).as_posix() for p in find_shards(root)}
    try:
        runs, _ = read_index(root)
    except (FileNotFoundError, CorruptIndexError) as exc:
        return IndexCheck(index_found=False, problem=str(exc), orphans=orphans)
    indexed = set(runs["shard_path"].to_list())
    missing = [
        MissingShard(
            shard_path=row["shard_path"],
            run_key=row["run_key"],
            rows=row["rows"],
            kept=row["kept"],
        )
        for row in runs.select("shard_path", "run_key", "rows", "kept").iter_rows(named=True)
        if row["shard_path"] not in on_disk
    ]
    return IndexCheck(
        index_found=True,
        missing=missing,
        unindexed=sorted(on_disk - indexed),
        orphans=orphans,
    )


def _write_synced(path: Path, write: Any) -> None:
    write(path)
    fsync_file(path)


def write_index(
    root: Path, *, report: Callable[[str], None] | None = None, **build_kwargs: Any
) -> Path:
    """Build the index and publish it as `root/index/{runs,episodes}.parquet` + `info.json`.

    The three files are written into a hidden sibling folder, then swapped in by renames, so
    readers see either the old index or the new one (a concurrent writer waits on a lock).
    Before that, the previous index is compared with the files: each shard it listed that is
    gone is reported (path, run key, rows), and decision sidecars left without their shard are
    removed (and reported). Keyword arguments go to `build_index`. Returns the index folder.

    Args:
        root: the data root.
        report: where the warnings go (default: `warnings.warn`).
        **build_kwargs: `on_corrupt`, `verify` (see `build_index`).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    index = root / INDEX_DIR
    with FileLock(str(root / f".{INDEX_DIR}.lock")):
        before = check_index(root)
        for gone in before.missing:
            _say(
                report,
                f"index: shard {gone.shard_path} of run {gone.run_key} ({gone.rows:,} rows) "
                "is gone; dropped from the index",
            )
        for orphan in before.orphans:
            (root / orphan).unlink(missing_ok=True)
            _say(report, f"index: removed {orphan}, the decision of a shard that is gone")
        runs, episodes = build_index(root, report=report, **build_kwargs)
        tmp = tmp_sibling(root / INDEX_DIR)
        tmp.mkdir()
        try:
            _write_synced(tmp / RUNS_FILE, runs.write_parquet)
            _write_synced(tmp / EPISODES_FILE, episodes.write_parquet)
            info = {
                "index_format_version": INDEX_FORMAT_VERSION,
                "shard_format_version": FORMAT_VERSION,
                "created": time.time(),
                "shards": runs.height,
                "runs": runs["run_key"].n_unique(),
                "rows": int(runs["rows"].sum()) if runs.height else 0,
                "episodes": episodes.height,
            }
            _write_synced(tmp / INFO_FILE, lambda p: p.write_text(json.dumps(info, indent=1)))
            replace_dir(tmp, index)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return index


def read_index(root: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read (runs, episodes) written by `write_index`.

    Raises:
        FileNotFoundError: there is no index yet (build it with `write_index(root)`).
        CorruptIndexError: a file is missing or unreadable, or counts disagree with info.json.
    """
    root = Path(root)
    index = root / INDEX_DIR
    for attempt in range(20):
        if (index / INFO_FILE).exists():
            break
        # a write_index swapping folders leaves no index for a moment
        if not any(root.glob(f".{INDEX_DIR}.old-*")) or attempt == 19:
            raise FileNotFoundError(f"no index at {index}; build one with write_index({root})")
        time.sleep(0.05)
    try:
        info = json.loads((index / INFO_FILE).read_text())
        runs = pl.read_parquet(index / RUNS_FILE)
        episodes = pl.read_parquet(index / EPISODES_FILE)
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise CorruptIndexError(index, f"{exc}; rebuild with write_index") from exc
    version = info.get("index_format_version")
    if version not in (1, INDEX_FORMAT_VERSION):
        raise CorruptIndexError(
            index, f"index format {version!r}, expected {INDEX_FORMAT_VERSION}; rebuild it"
        )
    if info.get("shards") != runs.height or info.get("episodes") != episodes.height:
        raise CorruptIndexError(index, "row counts differ from info.json; rebuild it")
    if version == 1:
        runs, episodes = _upgrade(runs, episodes)
    return runs, episodes


def _upgrade(runs: pl.DataFrame, episodes: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A version-1 index in today's layout: no episode was marked as cut by a worker restart.

    Version 1 predates the marks, so its shards hold none either: "no restart" is what they
    say, and readers of the index need not care which version they got.
    """
    runs = runs.with_columns(pl.lit(0, pl.Int64).alias("restarted_episodes"))
    episodes = episodes.with_columns(pl.lit(False, pl.Boolean).alias("restarted"))
    return runs.select(list(RUNS_SCHEMA)), episodes.select(list(EPISODES_SCHEMA))
