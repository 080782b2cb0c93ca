"""Imported once by the local executor's fork server, so every training task forks warm.

Importing torch, SB3, SB3-Contrib and MLflow and validating the candidate registry costs ~10 s
per process; paid once here, a task starts in well under a second.
"""

import matplotlib

matplotlib.use("Agg")

import mlflow  # noqa: F401
import sb3_contrib  # noqa: F401
import stable_baselines3  # noqa: F401

from ldm_autorl import jobs  # noqa: F401
from ldm_autorl.candidates import registry

registry()  # validate the plugins' candidates once; forked tasks inherit the cache
