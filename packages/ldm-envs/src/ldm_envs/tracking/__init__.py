"""MLflow tracking for ldm: the one module that talks to MLflow, shared by every stage.

It lives in ldm-envs, the package every other one depends on, so that ldm-autorl (ranking,
reference, filter, dataset), ldm-model and ldm-eval all log the same way without depending on
each other. It needs the optional extra `ldm-envs[tracking]` (mlflow, matplotlib); without it,
`import ldm_envs` and even `import ldm_envs.tracking` still work, and the first call that needs
MLflow raises an ImportError that says what to install.

By default everything goes to an embedded store under the data home: a SQLite database at
`<data_home>/mlflow/mlflow.db` and artifacts under `<data_home>/mlflow/artifacts`. Setting
`MLFLOW_TRACKING_URI` (for example `http://head-node:5000`) sends everything to a shared server
instead, which is what a multi-node run wants.

One experiment per stage and library (`ldm-<stage>/<library>`). Every run carries the tags
`ldm.stage`, `ldm.library` and `ldm.run_key`; the run key is what makes a pipeline resumable: a
FINISHED run with that key means the work is done, an unfinished one (RUNNING after a crash,
FAILED, KILLED) is reopened by `tracked_run` rather than duplicated. Finding that run and
creating it when there is none is one atomic step: on the embedded store under a file lock
next to the database, on a server by looking again after creating and keeping only the oldest
run with the key. So two processes opening the same key at once share one run.

Several processes may log to the same SQLite store at once (a local process pool): the store is
created under a file lock, and writes that meet `database is locked` are retried with backoff.

MLflow and matplotlib (slow to import) are imported on first use, so importing this package is
cheap.

One module per concept: `tags` (the names), `store` (URI, setup, clients, retries), `runs`
(experiments, run keys, `tracked_run`), `handle` (`RunHandle`), `values` (MLflow's limits),
`artifacts` (the learning-curve figure, table HTML). Every name is importable from here.
"""

# Private names other modules and tests reach through this package (re-exported on purpose).
from ldm_envs.tracking.artifacts import _learning_curve_figure as _learning_curve_figure
from ldm_envs.tracking.handle import RunHandle, set_run_tags
from ldm_envs.tracking.runs import _experiments as _experiments
from ldm_envs.tracking.runs import experiment_id, find_run, tracked_run
from ldm_envs.tracking.store import TrackingError, artifact_root, setup, tracking_uri
from ldm_envs.tracking.store import _client as _client
from ldm_envs.tracking.store import _retry as _retry
from ldm_envs.tracking.tags import (
    LEARNING_CURVE_FILE,
    LEARNING_CURVE_METRIC,
    MODEL_TRAINING,
    STAGES,
    TAG_BACKEND,
    TAG_CANDIDATE,
    TAG_DECISION,
    TAG_ENV,
    TAG_ERROR,
    TAG_EXPERIMENT_KIND,
    TAG_LIBRARY,
    TAG_REASON,
    TAG_RUN_KEY,
    TAG_SEED,
    TAG_SEEDS,
    TAG_STAGE,
    TAG_TOP_N,
)

__all__ = [
    "LEARNING_CURVE_FILE",
    "LEARNING_CURVE_METRIC",
    "MODEL_TRAINING",
    "STAGES",
    "TAG_BACKEND",
    "TAG_CANDIDATE",
    "TAG_DECISION",
    "TAG_ENV",
    "TAG_ERROR",
    "TAG_EXPERIMENT_KIND",
    "TAG_LIBRARY",
    "TAG_REASON",
    "TAG_RUN_KEY",
    "TAG_SEED",
    "TAG_SEEDS",
    "TAG_STAGE",
    "TAG_TOP_N",
    "RunHandle",
    "TrackingError",
    "artifact_root",
    "experiment_id",
    "find_run",
    "set_run_tags",
    "setup",
    "tracked_run",
    "tracking_uri",
]
