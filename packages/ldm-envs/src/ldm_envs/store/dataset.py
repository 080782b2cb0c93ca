"""Publishing a dataset built in a local folder to a store, in the order readers rely on."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ldm_envs.store.root import DataRoot


def publish_dataset(local: Path, store: DataRoot | str) -> DataRoot:
    """Publish the shard folders of `local`'s index, then the index itself, last.

    A reader of the store (`ldm-model train --dataset URL`) starts from the published index,
    so every shard it names is already published when it appears.

    Raises:
        FileNotFoundError: `local` has no index (build it with `write_index`).
        StoreError: an upload failed (the message names the URL and the entry).
    """
    from ldm_envs.dataset.index import INDEX_DIR, read_index

    target = DataRoot.parse(store)
    runs, _ = read_index(local)
    for folder in sorted({str(PurePosixPath(p).parent) for p in runs["shard_path"].to_list()}):
        target.publish(local / folder, folder)
    target.publish(local / INDEX_DIR, INDEX_DIR)
    return target
