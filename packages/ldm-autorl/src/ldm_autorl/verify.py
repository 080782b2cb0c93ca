"""Nothing lost, nothing silent: the data root's shards against the index and the run records.

A finished reference run is a result record (`runs/reference/...json`) that names its shard
parts. When a part is gone (deleted by hand, or moved into `quarantine/` because it failed a
CRC check), the run is no longer what its record claims. Rather than keep it "done" with a part
missing (the index silently shrinks, the decision stays "kept"), the run goes back to "to do":
its record is removed, the decisions of its remaining parts too, and the next `train`/`run`
redoes it. Each such reset is said out loud, naming the run.

`reconcile` is that step alone (a `stat` per shard: it runs before `train`, `filter` and
`dataset`); `verify_root` is `ldm-autorl verify`: every shard's CRC, the index against the
files, orphaned sidecars, lost runs; with `repair` it quarantines, cleans, resets and rebuilds
the index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ldm_envs.dataset.errors import CorruptIndexError, CorruptShardError
from ldm_envs.dataset.index import check_index, find_shards, read_index, write_index
from ldm_envs.dataset.quarantine import quarantine_reason, quarantine_shard
from ldm_envs.dataset.shards import ShardReader, decision_path

Say = Callable[[str], None]

ProblemKind = Literal["corrupt", "missing", "lost run", "orphan", "stale index", "no index"]


class _Recorded(BaseModel):
    """The part of a result record (`ldm_autorl.jobs.RunResult`) that names its shards.

    Read on its own so that checking a data root does not import the training stack.
    """

    run_key: str
    library: str
    shards: list[str] = []


class Problem(BaseModel):
    """One thing wrong with a data root, and what `--repair` does (or did) about it."""

    kind: ProblemKind
    #: the file concerned, relative to the data root
    path: str
    run_key: str | None = None
    detail: str
    repair: str


class LostRun(BaseModel):
    """A finished run (a result record) with shard parts that are gone."""

    record: str
    run_key: str
    library: str
    #: its parts that are gone, relative to the root, each with why (deleted / quarantined)
    missing: dict[str, str]


class VerifyReport(BaseModel):
    """What `verify_root` found (and with `repair`, fixed)."""

    root: str
    shards: int
    bytes: int
    seconds: float
    problems: list[Problem]
    repaired: bool

    @property
    def ok(self) -> bool:
        """Nothing was wrong."""
        return not self.problems


def _records(root: Path) -> Iterable[tuple[Path, _Recorded]]:
    """Every result record under `root/runs/` that names shards (recorded runs)."""
    for path in sorted((root / "runs").rglob("*.json")):
        try:
            result = _Recorded.model_validate_json(path.read_text())
        except (OSError, ValueError):
            continue  # not a run record (or a foreign file): nothing to reconcile
        if result.shards:
            yield path, result


def _why_gone(root: Path, shard: str) -> str:
    record = quarantine_reason(root, shard)
    if record is None:
        return "deleted"
    return f"quarantined into {record.moved_to} ({record.reason})"


def lost_runs(root: Path) -> list[LostRun]:
    """Finished recorded runs with at least one shard part gone (one `stat` per part)."""
    root = Path(root)
    lost = []
    for path, result in _records(root):
        gone = [s for s in result.shards if not (root / s).exists()]
        if gone:
            lost.append(
                LostRun(
                    record=path.relative_to(root).as_posix(),
                    run_key=result.run_key,
                    library=result.library,
                    missing={s: _why_gone(root, s) for s in gone},
                )
            )
    return lost


def reset_run(root: Path, lost: LostRun) -> None:
    """Put a lost run back to "to do": remove its record and its remaining parts' decisions.

    The remaining parts stay until the run is redone (`train_run` clears its shard folder
    first); without a decision they count as not kept, so nothing trains on half a run.
    """
    root = Path(root)
    record = root / lost.record
    try:
        shards = _Recorded.model_validate_json(record.read_text()).shards
    except FileNotFoundError:
        return
    for shard in shards:
        decision_path(root / shard).unlink(missing_ok=True)
    record.unlink(missing_ok=True)


def _describe(lost: LostRun) -> str:
    parts = "; ".join(f"{shard} {why}" for shard, why in lost.missing.items())
    return (
        f"run {lost.run_key} lost {len(lost.missing)} shard(s): {parts}. Back to to-do: "
        f"`ldm-autorl train {lost.library}` (or `run`) redoes it"
    )


def reconcile(root: Path, *, say: Say) -> list[LostRun]:
    """Reset every run that lost shards (see `reset_run`), telling `say` about each."""
    lost = lost_runs(root)
    for run in lost:
        reset_run(root, run)
        say(_describe(run))
    return lost


def quarantine_corrupt(root: Path, shards: Iterable[str], *, say: Say, found_by: str) -> list[str]:
    """Read each shard whole (`ShardReader.verify()`); quarantine the corrupt ones.

    Returns the quarantined shards (relative paths). Shards already gone are skipped.
    """
    root = Path(root)
    moved = []
    for shard in shards:
        path = root / shard
        if not path.exists():
            continue
        try:
            with ShardReader(path) as reader:
                reader.verify()
        except CorruptShardError as exc:
            record = quarantine_shard(root, path, exc.reason, found_by=found_by)
            if record is not None:
                moved.append(shard)
                say(f"{exc}: moved to {record.moved_to}")
    return moved


def refresh_index(root: Path, *, say: Say) -> bool:
    """Before trusting the index's totals: reset lost runs, rebuild the index if it is stale.

    Stale means an indexed shard is gone or a decision sidecar lost its shard (a shard written
    since is left for `filter` to index). Cheap: a `stat` per shard. Returns whether the index
    was rebuilt.

    Raises:
        FileNotFoundError: there is no index yet.
    """
    root = Path(root)
    lost = reconcile(root, say=say)
    check = check_index(root)
    if not check.index_found:
        raise FileNotFoundError(check.problem or f"no index under {root}")
    if lost or check.missing or check.orphans:
        write_index(root, on_corrupt="quarantine", report=say)
        return True
    return False


def _indexed(root: Path) -> dict[str, tuple[int, str]]:
    """Rows and run key of each shard the index lists (empty without a readable index)."""
    try:
        runs, _ = read_index(root)
    except (FileNotFoundError, CorruptIndexError):
        return {}
    return {row[0]: (row[1], row[2]) for row in runs.select("shard_path", "rows", "run_key").rows()}


def verify_root(root: Path, *, repair: bool = False, say: Say | None = None) -> VerifyReport:
    """Check a whole data root; with `repair`, fix what is found.

    Checks, in order: every shard read whole (CRC-32 of every column, 0/1 flags, episode
    rules); the index against the files (shards gone, not indexed, row counts that differ);
    decision sidecars without their shard; finished runs whose parts are gone. With `repair`:
    corrupt shards are quarantined, their runs and the runs of deleted shards go back to to-do,
    orphans are removed and the index is rebuilt.

    Args:
        root: the data root.
        repair: fix what is found (otherwise only report).
        say: where repair messages go (default: nowhere; the report lists everything).
    """
    root = Path(root)
    say = say or (lambda _message: None)
    start = time.perf_counter()
    problems: list[Problem] = []
    indexed = _indexed(root)
    shards = find_shards(root)
    size = 0
    quarantined = []
    for path in shards:
        rel = path.relative_to(root).as_posix()
        size += path.stat().st_size
        try:
            with ShardReader(path) as reader:
                reader.verify()
                rows, run_key = reader.num_rows, reader.meta.run_key
        except CorruptShardError as exc:
            problems.append(
                Problem(
                    kind="corrupt",
                    path=rel,
                    run_key=indexed[rel][1] if rel in indexed else None,
                    detail=exc.reason,
                    repair="quarantined; its run back to to-do",
                )
            )
            quarantined.append((path, exc.reason))
            continue
        if rel in indexed and indexed[rel][0] != rows:
            problems.append(
                Problem(
                    kind="stale index",
                    path=rel,
                    run_key=run_key,
                    detail=f"the index says {indexed[rel][0]:,} rows, the shard has {rows:,}",
                    repair="index rebuilt",
                )
            )
    check = check_index(root)
    if not check.index_found:
        problems.append(
            Problem(
                kind="no index",
                path="index",
                detail=check.problem or "no index",
                repair="index built",
            )
        )
    for gone in check.missing:
        problems.append(
            Problem(
                kind="missing",
                path=gone.shard_path,
                run_key=gone.run_key,
                detail=f"indexed ({gone.rows:,} rows) but {_why_gone(root, gone.shard_path)}",
                repair="dropped from the index",
            )
        )
    for shard in check.unindexed:
        problems.append(
            Problem(kind="stale index", path=shard, detail="not in the index", repair="indexed")
        )
    for orphan in check.orphans:
        problems.append(
            Problem(
                kind="orphan",
                path=orphan,
                detail="a decision whose shard is gone",
                repair="removed",
            )
        )
    for run in lost_runs(root):
        problems.append(
            Problem(
                kind="lost run",
                path=run.record,
                run_key=run.run_key,
                detail="; ".join(f"{s} {why}" for s, why in run.missing.items()),
                repair="back to to-do (record and its parts' decisions removed)",
            )
        )
    if repair and problems:
        for path, reason in quarantined:
            record = quarantine_shard(root, path, reason, found_by="verify")
            if record is not None:
                say(f"quarantined {record.shard} into {record.moved_to}: {reason}")
        reconcile(root, say=say)  # the runs of shards gone and of those just quarantined
        write_index(root, on_corrupt="quarantine", report=say)
    return VerifyReport(
        root=str(root),
        shards=len(shards),
        bytes=size,
        seconds=time.perf_counter() - start,
        problems=problems,
        repaired=repair and bool(problems),
    )
