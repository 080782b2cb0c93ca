"""Imported once by the local executor's fork server, so every training task forks warm.

Importing torch, SB3, SB3-Contrib and MLflow and validating the candidate registry costs ~10 s
per process; paid once here, a task starts in well under a second.
"""

import matplotlib

matplotlib.use("Agg")

import mlflow
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the embedded store's SQL layer)
import sb3_contrib  # noqa: F401
import stable_baselines3  # noqa: F401
import torch._dynamo  # noqa: F401  (imported lazily by the first torch optimizer: ~1-4 s a task)

from ldm_autorl import jobs  # noqa: F401
from ldm_autorl.candidates import registry
from ldm_envs.plugins import registry as env_libraries

registry()  # validate the plugins' candidates once; forked tasks inherit the cache
env_libraries()  # and read the env-library manifests once (~0.5 s of YAML a task otherwise)
