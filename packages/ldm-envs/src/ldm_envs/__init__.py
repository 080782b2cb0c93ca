"""ldm-envs: many RL environment libraries, each isolated, behind one batched Gymnasium API.

The names below are what a researcher imports: the plugin registry and manifests, `EnvPool`
and its two vector faces (Gymnasium's `LDMVectorEnv`, SB3's through `make_sb3_vec_env`), the
space models, the library checker, the dataset reader and the errors. They are imported on
first use, so `import ldm_envs` loads neither Gymnasium nor Polars nor SB3: plugins, workers
and every CLI's `--help` import it.

`LDMSB3VecEnv` resolves here too, but stays out of `__all__`: it needs the `ldm-envs[sb3]`
extra, and `from ldm_envs import *` must work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm_envs._lazy import lazy_module

if TYPE_CHECKING:
    from ldm_envs.checker import EnvCheck, LibraryCheck, check_env, check_library
    from ldm_envs.dataset import (
        CorruptIndexError,
        CorruptShardError,
        DatasetError,
        ShardReader,
        read_index,
    )
    from ldm_envs.errors import (
        ActionError,
        BadInputError,
        BuildError,
        EnvRaisedError,
        LDMEnvsError,
        LDMError,
        ManifestError,
        PluginError,
        PoolClosedError,
        SpaceError,
        UnknownEnvError,
        UnknownLibraryError,
        WorkerCrashedError,
        WorkerError,
        WorkerTimeoutError,
    )
    from ldm_envs.manifest import EnvLibrarySpec, EnvSpec, IsolatedEnvironment, read_manifest
    from ldm_envs.plugins import LibraryRegistry, get_library, registry, resolve_library
    from ldm_envs.pool import EnvPool, StepResult
    from ldm_envs.probe_config import ProbeConfig
    from ldm_envs.sb3 import LDMSB3VecEnv as LDMSB3VecEnv  # not in __all__: see above
    from ldm_envs.spaces import (
        MAX_ACTION_DIMS,
        MAX_OBS_DIMS,
        BoxSpace,
        DiscreteSpace,
        MultiBinarySpace,
        MultiDiscreteSpace,
        Space,
        from_gymnasium,
        space_from_dict,
    )
    from ldm_envs.vector import LDMVectorEnv, make_sb3_vec_env, resolve_autoreset_mode

    __version__: str

_EXPORTS = {
    "EnvCheck": "ldm_envs.checker",
    "LibraryCheck": "ldm_envs.checker",
    "check_env": "ldm_envs.checker",
    "ProbeConfig": "ldm_envs.probe_config",
    "check_library": "ldm_envs.checker",
    "CorruptIndexError": "ldm_envs.dataset",
    "CorruptShardError": "ldm_envs.dataset",
    "DatasetError": "ldm_envs.dataset",
    "ShardReader": "ldm_envs.dataset",
    "read_index": "ldm_envs.dataset",
    "ActionError": "ldm_envs.errors",
    "BadInputError": "ldm_envs.errors",
    "BuildError": "ldm_envs.errors",
    "EnvRaisedError": "ldm_envs.errors",
    "LDMEnvsError": "ldm_envs.errors",
    "LDMError": "ldm_envs.errors",
    "ManifestError": "ldm_envs.errors",
    "PluginError": "ldm_envs.errors",
    "PoolClosedError": "ldm_envs.errors",
    "SpaceError": "ldm_envs.errors",
    "UnknownEnvError": "ldm_envs.errors",
    "UnknownLibraryError": "ldm_envs.errors",
    "WorkerCrashedError": "ldm_envs.errors",
    "WorkerError": "ldm_envs.errors",
    "WorkerTimeoutError": "ldm_envs.errors",
    "EnvLibrarySpec": "ldm_envs.manifest",
    "EnvSpec": "ldm_envs.manifest",
    "IsolatedEnvironment": "ldm_envs.manifest",
    "read_manifest": "ldm_envs.manifest",
    "LibraryRegistry": "ldm_envs.plugins",
    "get_library": "ldm_envs.plugins",
    "registry": "ldm_envs.plugins",
    "resolve_library": "ldm_envs.plugins",
    "EnvPool": "ldm_envs.pool",
    "StepResult": "ldm_envs.pool",
    "LDMSB3VecEnv": "ldm_envs.sb3",
    "MAX_ACTION_DIMS": "ldm_envs.spaces",
    "MAX_OBS_DIMS": "ldm_envs.spaces",
    "BoxSpace": "ldm_envs.spaces",
    "DiscreteSpace": "ldm_envs.spaces",
    "MultiBinarySpace": "ldm_envs.spaces",
    "MultiDiscreteSpace": "ldm_envs.spaces",
    "Space": "ldm_envs.spaces",
    "from_gymnasium": "ldm_envs.spaces",
    "space_from_dict": "ldm_envs.spaces",
    "LDMVectorEnv": "ldm_envs.vector",
    "make_sb3_vec_env": "ldm_envs.vector",
    "resolve_autoreset_mode": "ldm_envs.vector",
}

__getattr__, __dir__ = lazy_module(__name__, _EXPORTS, distribution="ldm-envs")
del lazy_module

__all__ = [
    "MAX_ACTION_DIMS",
    "MAX_OBS_DIMS",
    "ActionError",
    "BadInputError",
    "BoxSpace",
    "BuildError",
    "CorruptIndexError",
    "CorruptShardError",
    "DatasetError",
    "DiscreteSpace",
    "EnvCheck",
    "EnvLibrarySpec",
    "EnvPool",
    "EnvRaisedError",
    "EnvSpec",
    "IsolatedEnvironment",
    "LDMEnvsError",
    "LDMError",
    "LDMVectorEnv",
    "LibraryCheck",
    "LibraryRegistry",
    "ManifestError",
    "MultiBinarySpace",
    "MultiDiscreteSpace",
    "PluginError",
    "PoolClosedError",
    "ProbeConfig",
    "ShardReader",
    "Space",
    "SpaceError",
    "StepResult",
    "UnknownEnvError",
    "UnknownLibraryError",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerTimeoutError",
    "check_env",
    "check_library",
    "from_gymnasium",
    "get_library",
    "make_sb3_vec_env",
    "read_index",
    "read_manifest",
    "registry",
    "resolve_autoreset_mode",
    "resolve_library",
    "space_from_dict",
]
