"""ldm-autorl: ranked, recorded, relabeled, filtered reference policies.

The names below are what a researcher imports: the three stages (`rank`, `train`,
`filter_runs`) and their outcome, the `ldm.algorithms` candidate registry (`registry()`, as
`ldm_envs.registry()` is the libraries'), one run's result, the executors, the filter
statistics, the checks and the errors. They are imported on first use, so `import ldm_autorl`
loads neither SB3 nor MLflow nor Ray until one is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm_envs._lazy import lazy_module

if TYPE_CHECKING:
    from ldm_autorl.candidates import (
        CandidateConfig,
        CandidateRegistry,
        compatibility,
        compatibility_table,
        registry,
    )
    from ldm_autorl.config import AutoRLConfig
    from ldm_autorl.errors import (
        CandidateError,
        EmptyRankingError,
        ExportError,
        LDMAutoRLError,
        RestartLimitError,
        UnknownCandidateError,
    )
    from ldm_autorl.executors import (
        Executor,
        LocalExecutor,
        RayExecutor,
        TaskResult,
        TaskSpec,
        make_executor,
    )
    from ldm_autorl.export import ExportedDataset
    from ldm_autorl.jobs import RunResult, load_result, train_run
    from ldm_autorl.pipeline import (
        StageOutcome,
        compatible_pairs,
        filter_runs,
        load_ranking,
        rank,
        train,
    )
    from ldm_autorl.random_baseline import RandomScore, load_random_score, measure_random
    from ldm_autorl.stats import FilterDecision, decide, rank_candidates
    from ldm_autorl.verify import VerifyReport, verify_root
    from ldm_autorl.zoo import ZooScore, zoo_best

    __version__: str

_EXPORTS = {
    "AutoRLConfig": "ldm_autorl.config",
    "CandidateConfig": "ldm_autorl.candidates",
    "CandidateRegistry": "ldm_autorl.candidates",
    "compatibility": "ldm_autorl.candidates",
    "compatibility_table": "ldm_autorl.candidates",
    "registry": "ldm_autorl.candidates",
    "CandidateError": "ldm_autorl.errors",
    "EmptyRankingError": "ldm_autorl.errors",
    "ExportError": "ldm_autorl.errors",
    "LDMAutoRLError": "ldm_autorl.errors",
    "RestartLimitError": "ldm_autorl.errors",
    "UnknownCandidateError": "ldm_autorl.errors",
    "Executor": "ldm_autorl.executors",
    "LocalExecutor": "ldm_autorl.executors",
    "RayExecutor": "ldm_autorl.executors",
    "TaskResult": "ldm_autorl.executors",
    "TaskSpec": "ldm_autorl.executors",
    "make_executor": "ldm_autorl.executors",
    "ExportedDataset": "ldm_autorl.export",
    "RunResult": "ldm_autorl.jobs",
    "load_result": "ldm_autorl.jobs",
    "train_run": "ldm_autorl.jobs",
    "StageOutcome": "ldm_autorl.pipeline",
    "compatible_pairs": "ldm_autorl.pipeline",
    "filter_runs": "ldm_autorl.pipeline",
    "load_ranking": "ldm_autorl.pipeline",
    "rank": "ldm_autorl.pipeline",
    "train": "ldm_autorl.pipeline",
    "RandomScore": "ldm_autorl.random_baseline",
    "load_random_score": "ldm_autorl.random_baseline",
    "measure_random": "ldm_autorl.random_baseline",
    "FilterDecision": "ldm_autorl.stats",
    "decide": "ldm_autorl.stats",
    "rank_candidates": "ldm_autorl.stats",
    "VerifyReport": "ldm_autorl.verify",
    "verify_root": "ldm_autorl.verify",
    "ZooScore": "ldm_autorl.zoo",
    "zoo_best": "ldm_autorl.zoo",
}

__getattr__, __dir__ = lazy_module(__name__, _EXPORTS, distribution="ldm-autorl")
del lazy_module

__all__ = [
    "AutoRLConfig",
    "CandidateConfig",
    "CandidateError",
    "CandidateRegistry",
    "EmptyRankingError",
    "Executor",
    "ExportError",
    "ExportedDataset",
    "FilterDecision",
    "LDMAutoRLError",
    "LocalExecutor",
    "RandomScore",
    "RayExecutor",
    "RestartLimitError",
    "RunResult",
    "StageOutcome",
    "TaskResult",
    "TaskSpec",
    "UnknownCandidateError",
    "VerifyReport",
    "ZooScore",
    "compatibility",
    "compatibility_table",
    "compatible_pairs",
    "decide",
    "filter_runs",
    "load_random_score",
    "load_ranking",
    "load_result",
    "make_executor",
    "measure_random",
    "rank",
    "rank_candidates",
    "registry",
    "train",
    "train_run",
    "verify_root",
    "zoo_best",
]
