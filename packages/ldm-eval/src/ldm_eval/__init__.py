"""Evaluation of the Large Decision Model (paper sections 4.4 and 5.1).

The protocol (`protocol.run_protocol`) steps policies in isolated envs; `normalize` and
`scores` turn returns into reference-normalized scores; `aggregate` makes threshold curves and
IQM / median with stratified bootstrap CIs; `plots` and `report` draw them; `pipeline.evaluate`
runs it all for a checkpoint and tracks it in MLflow. Names are imported on first use, so
that `import ldm_eval` stays cheap (matplotlib, scipy and MLflow load only when needed).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EnvTarget": "ldm_eval.protocol",
    "EvalConfig": "ldm_eval.protocol",
    "RolloutResult": "ldm_eval.protocol",
    "run_protocol": "ldm_eval.protocol",
    "Policy": "ldm_eval.policies",
    "PolicyFactory": "ldm_eval.policies",
    "SlotInfo": "ldm_eval.policies",
    "RandomPolicy": "ldm_eval.policies",
    "RandomPolicyFactory": "ldm_eval.policies",
    "LDMPolicyFactory": "ldm_eval.policies",
    "reference_runs": "ldm_eval.normalize",
    "normalized_score": "ldm_eval.normalize",
    "score_envs": "ldm_eval.scores",
    "threshold_curve": "ldm_eval.aggregate",
    "summarize": "ldm_eval.aggregate",
    "iqm": "ldm_eval.aggregate",
    "stratified_bootstrap_ci": "ldm_eval.aggregate",
    "fraction_at_least": "ldm_eval.aggregate",
    "CheckpointInfo": "ldm_eval.checkpoint",
    "CheckpointProvenance": "ldm_eval.checkpoint",
    "read_checkpoint": "ldm_eval.checkpoint",
    "EvalRunDir": "ldm_eval.results",
    "EvalManifest": "ldm_eval.results",
    "PlannedEnv": "ldm_eval.results",
    "EvalTables": "ldm_eval.tables",
    "compute_tables": "ldm_eval.tables",
    "write_report": "ldm_eval.report",
    "evaluate": "ldm_eval.pipeline",
    "plan_envs": "ldm_eval.pipeline",
    "score_policies": "ldm_eval.pipeline",
    "EvalPlan": "ldm_eval.plan",
    "plan_evaluation": "ldm_eval.plan",
    "SizesConfig": "ldm_eval.model_sizes",
    "compare_sizes": "ldm_eval.model_sizes",
    "TrainingEvaluator": "ldm_eval.training_curve",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ldm_eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
