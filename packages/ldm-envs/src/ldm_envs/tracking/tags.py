"""The names ldm writes into the tracking store: tags, stages, metric and artifact names.

Every stage, and every reader of the store (the suite, the eval CLI, tests), spells them from here.
"""

from __future__ import annotations

TAG_STAGE = "ldm.stage"
TAG_LIBRARY = "ldm.library"
TAG_ENV = "ldm.env_id"
TAG_CANDIDATE = "ldm.candidate"
TAG_SEED = "ldm.seed"
TAG_RUN_KEY = "ldm.run_key"
#: The isolation backend a run used (last): a tag, not a param, so another backend can resume it.
TAG_BACKEND = "ldm.backend"
#: On a stage's parent run: every seed its child runs used so far ("0,1"), grown by each call.
TAG_SEEDS = "ldm.seeds"
#: On the reference stage's parent run: every top-N it was called with.
TAG_TOP_N = "ldm.top_n"
#: Marks an experiment as model training (MLflow 3.17's UI does not yet pick its view from it).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
TAG_DECISION = "ldm.filter.decision"
TAG_REASON = "ldm.filter.reason"
TAG_ERROR = "ldm.error"
"""Set on a run that ended with an exception: the exception's type and message (truncated)."""

STAGES = ("ranking", "reference", "filter", "dataset", "model", "eval")
"""The pipeline stages; each has one experiment per library."""

LEARNING_CURVE_METRIC = "episode_return"
LEARNING_CURVE_FILE = "learning_curve.png"
