"""Sampling from a store URL: the index and the shards a training uses, in a bounded local cache.

The sampler memory-maps shards, which needs local files; a remote root's (`ldm_envs.store`)
published index and the shard folders of the selected runs are pulled into
`<data home>/cache/<url>` once (a file already there at its published size is not fetched
again), so sampling runs at local-disk speed after that warm-up. The cache holds at most
`cache_bytes`: least recently used files of other trainings are evicted, and a selection that
alone exceeds the bound is refused before any step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ldm_envs.dataset.index import INDEX_DIR
from ldm_envs.store import DataRoot, evict
from ldm_model.errors import TrainingError


def open_store(root: Path | str, cache_bytes: int | None) -> DataRoot | None:
    """The store behind a URL root, or None for a local folder (read in place)."""
    store = DataRoot.parse(root, **({"cache_bytes": cache_bytes} if cache_bytes else {}))
    return None if store.is_local else store


def cache_dir(store: DataRoot) -> Path:
    """The local cache of a store's shards, one per URL."""
    return store.local_folder("cache")


def pull_index(store: DataRoot) -> Path:
    """Pull the published index into the cache; the cache folder (the sampler's root)."""
    root = cache_dir(store)
    store.pull(INDEX_DIR, root)
    return root


def pull_shards(store: DataRoot, root: Path, shard_paths: Sequence[str]) -> int:
    """Pull the shard folders holding `shard_paths` (relative to the root); their bytes.

    Raises:
        TrainingError: the selected shards alone exceed the cache bound (naming both sizes).
    """
    folders = sorted({str(PurePosixPath(p).parent) for p in shard_paths})
    in_use: list[Path] = [p for p in (root / INDEX_DIR).rglob("*") if p.is_file()]
    for folder in folders:
        local = store.pull(folder, root, evict_after=False)
        in_use += [p for p in local.rglob("*") if p.is_file()]
    evict(root, store.cache_bytes, in_use=in_use)  # once: each eviction walks the cache
    held = sum(p.stat().st_size for p in in_use)
    if held > store.cache_bytes:
        raise TrainingError(
            f"the {len(folders)} shard folder(s) this training samples from {store.url} hold "
            f"{held:,} bytes, more than the cache bound of {store.cache_bytes:,}: raise "
            "--store-cache-gb or select fewer runs (--library, --env)"
        )
    return held
