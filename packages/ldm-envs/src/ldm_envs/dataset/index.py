"""The dataset index: Polars tables of runs (one row per shard) and episodes, kept as Parquet.

The index is derived data: `build_index(root)` recomputes it from the `*.arrow` shards under
`root` and their decision sidecars alone, so deleting `root/index` loses nothing.
`write_index` publishes a new index folder atomically (written aside, then renamed in).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Literal

import polars as pl
from filelock import FileLock

from ldm_envs.atomic import replace_dir
from ldm_envs.dataset.errors import CorruptFileError, CorruptIndexError
from ldm_envs.dataset.shards import (
    EPISODE_COLUMNS,
    FORMAT_VERSION,
    SHARD_SUFFIX,
    TMP_MARK,
    ShardReader,
    read_decision,
)
from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiBinarySpace, MultiDiscreteSpace

INDEX_DIR = "index"
#: Version of the index tables' layout (bumped when columns change).
INDEX_FORMAT_VERSION = 1
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


def find_shards(root: Path) -> list[Path]:
    """Every shard under `root`, sorted; hidden files (temporaries) and `root/index` skipped."""
    root = Path(root)
    found = []
    for path in root.rglob(f"*{SHARD_SUFFIX}"):
        rel = path.relative_to(root)
        if rel.parts[0] == INDEX_DIR or any(part.startswith(".") for part in rel.parts):
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
    k = max(1, math.ceil(len(returns) / 10))
    return (
        sum(returns) / len(returns),
        sum(returns[:k]) / k,
        sum(returns[-k:]) / k,
    )


def build_index(
    root: Path, *, on_corrupt: Literal["raise", "skip"] = "raise", verify: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Scan every shard under `root` (and its decision sidecar) into (runs, episodes).

    Each shard is opened through its memory map and only its small columns (episode, reward,
    flags) are read. `mean_return` averages its complete episodes; `first10_mean` and
    `last10_mean` the first and last ceil(10%) of them (at least one); all three are null when
    the shard has no complete episode. `kept`, `reason` and `stats` (JSON) are null until a
    decision is written.

    Args:
        root: dataset folder.
        on_corrupt: `"raise"` (default) stops at the first corrupt shard or sidecar with an
            error naming it; `"skip"` leaves it out of the index with a warning naming it.
        verify: also run `ShardReader.verify()` (reads every byte, checks CRCs) on each shard.

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
            warnings.warn(f"index: skipping {exc}", stacklevel=2)
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


def _write_synced(path: Path, write: Any) -> None:
    write(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index(root: Path, **build_kwargs: Any) -> Path:
    """Build the index and publish it as `root/index/{runs,episodes}.parquet` + `info.json`.

    The three files are written into a hidden sibling folder, then swapped in by renames, so
    readers see either the old index or the new one (a concurrent writer waits on a lock).
    Keyword arguments go to `build_index`. Returns the index folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    index = root / INDEX_DIR
    with FileLock(str(root / f".{INDEX_DIR}.lock")):
        runs, episodes = build_index(root, **build_kwargs)
        tmp = root / f".{INDEX_DIR}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
    if version != INDEX_FORMAT_VERSION:
        raise CorruptIndexError(
            index, f"index format {version!r}, expected {INDEX_FORMAT_VERSION}; rebuild it"
        )
    if info.get("shards") != runs.height or info.get("episodes") != episodes.height:
        raise CorruptIndexError(index, "row counts differ from info.json; rebuild it")
    return runs, episodes
