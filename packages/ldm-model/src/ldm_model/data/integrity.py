"""What the sampler does when a shard cannot be trusted: quarantine it, stop, name it.

The sampler reads shards through `ShardReader`, which checks the CRC-32 of every record batch
column the first time it hands it out. A corrupt shard is moved into the data root's
`quarantine/` folder (with the reason) and training stops with `ShardUnavailableError`
naming the file: its bad rows are never put in a batch. A shard the index lists but the disk
no longer has stops training the same way. Either way the index is stale: `ldm-autorl show`
(or `verify --repair`) rebuilds it and puts the shard's run back to to-do.

Stopping rather than skipping: a batch is a pure function of `(seed, step)` over the index's
runs, so silently dropping a run would change what every later step (and every DDP rank) sees.
"""

from __future__ import annotations

from pathlib import Path

from ldm_envs.dataset import CorruptShardError, quarantine_reason, quarantine_shard
from ldm_model.errors import ShardUnavailableError


def _rebuild_hint(root: Path) -> str:
    return (
        f"rebuild the index and put its run back to to-do with `ldm-autorl show --dataset "
        f"{root}` (or `ldm-autorl verify --dataset {root} --repair`), then redo the run"
    )


def missing_shard(root: Path, shard: str) -> ShardUnavailableError:
    """The error for a shard the index lists but `root` no longer has (saying why if known)."""
    record = quarantine_reason(root, shard)
    why = (
        "deleted"
        if record is None
        else f"quarantined into {root / record.moved_to} ({record.reason})"
    )
    return ShardUnavailableError(
        f"shard {root / shard} is missing: {why}; the index is stale: {_rebuild_hint(root)}"
    )


def corrupt_shard(root: Path, shard: str, exc: CorruptShardError) -> ShardUnavailableError:
    """Quarantine a shard that failed a check; the error that names it and where it went."""
    record = quarantine_shard(root, root / shard, exc.reason, found_by="window sampler")
    where = (
        f"moved to {root / record.moved_to}"
        if record is not None
        else "already moved aside by another process"
    )
    return ShardUnavailableError(
        f"{exc}; {where}, its bad rows never reached a batch; {_rebuild_hint(root)}"
    )


def stale_shard(root: Path, shard: str, found: str, indexed: int) -> ShardUnavailableError:
    """The error for a shard whose rows differ from what the index says."""
    return ShardUnavailableError(
        f"shard {root / shard} has {found} but the index of {root} says {indexed} rows with "
        f"reference actions: the index is stale: {_rebuild_hint(root)}"
    )


__all__ = ["ShardUnavailableError", "corrupt_shard", "missing_shard", "stale_shard"]
