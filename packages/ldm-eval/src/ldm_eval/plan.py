"""An evaluation planned before it runs: the envs, the policies and the warnings.

`ldm-eval evaluate` and the suite's eval stage both plan through `plan_evaluation`, so the
command and the stage cannot drift apart: the same envs (`pipeline.plan_envs`), the same
policies (the checkpoint's LDM, the random baseline seeded with the protocol's seed), the same
key naming the folder and the MLflow run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ldm_eval.checkpoint import CheckpointInfo
from ldm_eval.pipeline import EvalOutcome, eval_key, evaluate, plan_envs
from ldm_eval.policies import LDMPolicyFactory, PolicyFactory, RandomPolicyFactory
from ldm_eval.protocol import EvalConfig
from ldm_eval.results import PlannedEnv

__all__ = ["EvalPlan", "plan_evaluation"]


@dataclass
class EvalPlan:
    """An evaluation planned but not run; `run` runs it (`pipeline.evaluate`)."""

    checkpoint: CheckpointInfo | None
    config: EvalConfig
    envs: list[PlannedEnv]
    policies: dict[str, PolicyFactory]
    warnings: list[str]

    @property
    def key(self) -> str:
        """The evaluation's key (`eval_key`): names its folder and its MLflow run."""
        return eval_key(self.checkpoint, self.envs, list(self.policies), self.config)

    def run(
        self,
        *,
        out_dir: Path | None = None,
        dataset_root: Path | None = None,
        track: bool = True,
        resume: bool = True,
        n_resamples: int = 2000,
        console: Console | None = None,
    ) -> EvalOutcome:
        """`evaluate` on the plan (the arguments are `evaluate`'s)."""
        return evaluate(
            self.envs,
            self.policies,
            self.config,
            out_dir=out_dir,
            checkpoint=self.checkpoint,
            dataset_root=dataset_root,
            warnings=self.warnings,
            track=track,
            resume=resume,
            n_resamples=n_resamples,
            console=console,
        )


def plan_evaluation(
    checkpoint: CheckpointInfo | None,
    config: EvalConfig,
    *,
    libraries: Sequence[str] | None = None,
    env_ids: Sequence[str] | None = None,
    random_baseline: bool = True,
    device: str = "cpu",
    context: int | None = None,
    notes: Sequence[str] = (),
) -> EvalPlan:
    """The envs (`plan_envs`) and policies of an evaluation, as `ldm-eval evaluate` plans it.

    Policies: the LDM of `checkpoint` (when given) and the random baseline seeded with
    `config.seed`. `notes` go before `plan_envs`' warnings.

    Raises:
        LDMError, ValueError: as `plan_envs`.
    """
    envs, warnings = plan_envs(checkpoint, libraries, env_ids)
    policies: dict[str, PolicyFactory] = {}
    if checkpoint is not None:  # the very folder `checkpoint` describes, fallback included
        policies["ldm"] = LDMPolicyFactory(checkpoint.path, device=device, context=context)
    if random_baseline:
        policies["random"] = RandomPolicyFactory(config.seed)
    return EvalPlan(checkpoint, config, envs, policies, [*notes, *warnings])
