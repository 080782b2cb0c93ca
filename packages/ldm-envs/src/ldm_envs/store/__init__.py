"""The data root as a URL: a local folder (the default), `file://`, `s3://` or `gs://`.

A local root is the identity: the Path-based code reads and writes it in place, as always, and
`publish`/`pull` copy nothing. A remote root (an object store, reached through fsspec; s3fs
with the `ldm-envs[s3]` extra, gcsfs for `gs://`) has no atomic rename, so publishing is:

1. delete the entry's marker `<rel>.done`, if any (a re-publish is invisible until complete),
2. upload the file or every file of the folder under `<rel>`,
3. write the marker `<rel>.done` LAST: a small manifest of the entry's files and sizes.

Readers (`list`, `exists`, `read_bytes`, `pull`) only see entries with a marker and only the
files the manifest names, so an interrupted publish leaves nothing visible and publishing again
completes it. `pull` copies an entry into a local cache bounded in bytes (least recently used
files not in use are evicted), verifying every size against the manifest.
"""

from ldm_envs.store.dataset import publish_dataset
from ldm_envs.store.root import (
    DEFAULT_CACHE_BYTES,
    MARKER_SUFFIX,
    DataRoot,
    StoreError,
    evict,
)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "MARKER_SUFFIX",
    "DataRoot",
    "StoreError",
    "evict",
    "publish_dataset",
]
