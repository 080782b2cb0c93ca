"""A run folder on a store URL (`--out s3://bucket/models/run-1`): a local mirror, published.

An object store has no atomic rename, and nodes that share nothing see only the store. So the
trainer writes checkpoints and metrics into a local mirror of the run folder, as it writes any
run folder, and rank 0 publishes each finished step folder with `DataRoot.publish` (its marker
written last: a checkpoint cut short by a crash is never listed) and then the run's small files.
On start every rank pulls the newest *published* checkpoint into its mirror, so a run moved to
other nodes resumes where it stopped; `load_model`/`load_checkpoint` of the URL do the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ldm_model.errors import CheckpointError, CheckpointNotFoundError
from ldm_model.training.checkpoint.record import CHECKPOINTS_DIR, STEP_PREFIX
from ldm_model.training.metrics import LOSS_CURVE_FILE, METRICS_FILE

if TYPE_CHECKING:
    from ldm_envs.store import DataRoot

__all__ = [
    "RUN_FILES",
    "is_store_url",
    "local_run",
    "mirror_dir",
    "publish_checkpoint",
    "publish_run_files",
    "pull_latest",
]

#: The small files of a run folder published next to its checkpoints (those present).
RUN_FILES = ("train_config.json", METRICS_FILE, LOSS_CURVE_FILE)


def is_store_url(value: Path | str | None) -> bool:
    """Whether `value` names a remote store (`s3://`, `gs://`), not a local folder."""
    text = str(value) if value is not None else ""
    return "://" in text and not text.startswith("file://")


def mirror_dir(store: DataRoot) -> Path:
    """`<data home>/stores/<url>`: where this machine keeps its copy of the run folder."""
    return store.local_folder("stores")


def _published_steps(store: DataRoot) -> list[str]:
    """The published step folders' names, oldest first (names sort as steps do)."""
    names = [rel.rsplit("/", 1)[-1] for rel in store.list(CHECKPOINTS_DIR)]
    return sorted(n for n in names if n.startswith(STEP_PREFIX))


def pull_latest(store: DataRoot, mirror: Path, *, with_metrics: bool = False) -> Path | None:
    """Pull the newest published checkpoint into `mirror`; its local folder, or None.

    `with_metrics`: also take the store's `metrics.jsonl` (rank 0, which appends to it), so the
    resumed run's history goes on from the published one.
    """
    from ldm_envs.store import StoreError

    steps = _published_steps(store)
    if not steps:
        return None
    rel = f"{CHECKPOINTS_DIR}/{steps[-1]}"
    try:
        folder = store.pull(rel, mirror, evict_after=False)
        if with_metrics and (data := store.read_bytes(METRICS_FILE)) is not None:
            from ldm_envs.atomic import atomic_path

            with atomic_path(mirror / METRICS_FILE) as tmp:
                tmp.write_bytes(data)
    except StoreError as exc:
        raise CheckpointError(f"cannot pull the run's checkpoint: {exc}") from exc
    return folder


def publish_checkpoint(store: DataRoot, folder: Path) -> None:
    """Publish a finished step folder, then the run's small files next to it."""
    store.publish(folder, f"{CHECKPOINTS_DIR}/{folder.name}")
    publish_run_files(store, folder.parent.parent)


def publish_run_files(store: DataRoot, out: Path) -> None:
    """Publish the run folder's small files (`RUN_FILES`) that exist."""
    for name in RUN_FILES:
        if (out / name).is_file():
            store.publish(out / name, name)


def local_run(url: str) -> Path:
    """The local folder to open for a checkpoint URL: a run folder's newest published one.

    A URL ending in a step folder (`.../checkpoints/step-00000100`) pulls that one.

    Raises:
        CheckpointNotFoundError: nothing published there.
        CheckpointError: the URL is not a store URL, or the pull failed.
    """
    from ldm_envs.store import DataRoot, StoreError

    url = url.rstrip("/")
    parts = url.rsplit("/", 2)
    named_step = (
        len(parts) == 3 and parts[1] == CHECKPOINTS_DIR and parts[2].startswith(STEP_PREFIX)
    )
    try:
        store = DataRoot.parse(parts[0] if named_step else url)
        mirror = mirror_dir(store)
        if named_step:
            rel = f"{CHECKPOINTS_DIR}/{parts[2]}"
            if not store.exists(rel):
                raise CheckpointNotFoundError(f"no checkpoint at {url}: it is not published")
            return store.pull(rel, mirror, evict_after=False)
        folder = pull_latest(store, mirror)
    except StoreError as exc:
        raise CheckpointError(f"cannot open the checkpoint at {url}: {exc}") from exc
    if folder is None:
        raise CheckpointNotFoundError(
            f"no checkpoint at {url}: no published {CHECKPOINTS_DIR}/{STEP_PREFIX}* there"
        )
    return folder
