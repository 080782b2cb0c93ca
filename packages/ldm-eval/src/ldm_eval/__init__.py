"""Evaluation of the Large Decision Model (paper sections 4.4 and 5.1).

The protocol (`protocol.run_protocol`) steps policies in isolated envs; `normalize` and
`scores` turn returns into reference-normalized scores; `aggregate` makes threshold curves and
IQM / median with stratified bootstrap CIs; `plots` and `report` draw them; `pipeline.evaluate`
runs it all for a checkpoint and tracks it in MLflow. Names are imported on first use, so
that `import ldm_eval` stays cheap (torch, matplotlib, scipy and MLflow load only when needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm_envs._lazy import lazy_module

if TYPE_CHECKING:
    from ldm_eval.aggregate import (
        fraction_at_least,
        iqm,
        stratified_bootstrap_ci,
        summarize,
        threshold_curve,
    )
    from ldm_eval.checkpoint import CheckpointInfo, CheckpointProvenance, read_checkpoint
    from ldm_eval.errors import LDMEvalError, ModelSizesError, StageError, SuiteError
    from ldm_eval.model_sizes import SizesConfig, compare_sizes, sizes_figure
    from ldm_eval.normalize import normalized_score, reference_runs
    from ldm_eval.pipeline import evaluate, plan_envs, score_policies
    from ldm_eval.plan import EvalPlan, EvaluateConfig, plan_evaluate, plan_evaluation
    from ldm_eval.policies import (
        LDMPolicyFactory,
        Policy,
        PolicyFactory,
        RandomPolicy,
        RandomPolicyFactory,
        SlotInfo,
    )
    from ldm_eval.protocol import EnvTarget, EvalConfig, RolloutResult, run_protocol
    from ldm_eval.report import write_report
    from ldm_eval.results import EvalManifest, EvalRunDir, PlannedEnv
    from ldm_eval.scores import score_envs
    from ldm_eval.tables import EvalTables, compute_tables
    from ldm_eval.training_curve import TrainingEvaluator, curve_figure, overhead, read_curve

    __version__: str

_EXPORTS = {
    "fraction_at_least": "ldm_eval.aggregate",
    "iqm": "ldm_eval.aggregate",
    "stratified_bootstrap_ci": "ldm_eval.aggregate",
    "summarize": "ldm_eval.aggregate",
    "threshold_curve": "ldm_eval.aggregate",
    "CheckpointInfo": "ldm_eval.checkpoint",
    "CheckpointProvenance": "ldm_eval.checkpoint",
    "EvalPlan": "ldm_eval.plan",
    "plan_evaluation": "ldm_eval.plan",
    "EvaluateConfig": "ldm_eval.plan",
    "plan_evaluate": "ldm_eval.plan",
    "read_checkpoint": "ldm_eval.checkpoint",
    "LDMEvalError": "ldm_eval.errors",
    "ModelSizesError": "ldm_eval.errors",
    "StageError": "ldm_eval.errors",
    "SuiteError": "ldm_eval.errors",
    "SizesConfig": "ldm_eval.model_sizes",
    "compare_sizes": "ldm_eval.model_sizes",
    "sizes_figure": "ldm_eval.model_sizes",
    "normalized_score": "ldm_eval.normalize",
    "reference_runs": "ldm_eval.normalize",
    "evaluate": "ldm_eval.pipeline",
    "plan_envs": "ldm_eval.pipeline",
    "score_policies": "ldm_eval.pipeline",
    "LDMPolicyFactory": "ldm_eval.policies",
    "Policy": "ldm_eval.policies",
    "PolicyFactory": "ldm_eval.policies",
    "RandomPolicy": "ldm_eval.policies",
    "RandomPolicyFactory": "ldm_eval.policies",
    "SlotInfo": "ldm_eval.policies",
    "EnvTarget": "ldm_eval.protocol",
    "EvalConfig": "ldm_eval.protocol",
    "RolloutResult": "ldm_eval.protocol",
    "run_protocol": "ldm_eval.protocol",
    "write_report": "ldm_eval.report",
    "EvalManifest": "ldm_eval.results",
    "EvalRunDir": "ldm_eval.results",
    "PlannedEnv": "ldm_eval.results",
    "score_envs": "ldm_eval.scores",
    "EvalTables": "ldm_eval.tables",
    "compute_tables": "ldm_eval.tables",
    "TrainingEvaluator": "ldm_eval.training_curve",
    "curve_figure": "ldm_eval.training_curve",
    "overhead": "ldm_eval.training_curve",
    "read_curve": "ldm_eval.training_curve",
}

__getattr__, __dir__ = lazy_module(__name__, _EXPORTS, distribution="ldm-eval")
del lazy_module

__all__ = [
    "CheckpointInfo",
    "CheckpointProvenance",
    "EnvTarget",
    "EvalConfig",
    "EvalManifest",
    "EvalPlan",
    "EvalRunDir",
    "EvalTables",
    "EvaluateConfig",
    "LDMEvalError",
    "LDMPolicyFactory",
    "ModelSizesError",
    "PlannedEnv",
    "Policy",
    "PolicyFactory",
    "RandomPolicy",
    "RandomPolicyFactory",
    "RolloutResult",
    "SizesConfig",
    "SlotInfo",
    "StageError",
    "SuiteError",
    "TrainingEvaluator",
    "compare_sizes",
    "compute_tables",
    "curve_figure",
    "evaluate",
    "fraction_at_least",
    "iqm",
    "normalized_score",
    "overhead",
    "plan_envs",
    "plan_evaluate",
    "plan_evaluation",
    "read_checkpoint",
    "read_curve",
    "reference_runs",
    "run_protocol",
    "score_envs",
    "score_policies",
    "sizes_figure",
    "stratified_bootstrap_ci",
    "summarize",
    "threshold_curve",
    "write_report",
]
