"""Publishing shard files: the old home of the temporary-sibling helpers, now `ldm_envs.atomic`.

Kept so that imports of the private names keep working; new code imports `ldm_envs.atomic`.
"""

from __future__ import annotations

from ldm_envs.atomic import fsync_dir as _fsync_dir
from ldm_envs.atomic import fsync_file as _fsync_file
from ldm_envs.atomic import tmp_sibling as _tmp_name

__all__ = ["_fsync_dir", "_fsync_file", "_tmp_name"]
