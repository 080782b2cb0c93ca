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
from typing import TYPE_CHECKING

from pydantic import Field

from ldm_eval.protocol import EvalConfig

if TYPE_CHECKING:  # the CLI imports this module for `EvaluateConfig`: the rest when planning
    from rich.console import Console

    from ldm_eval.checkpoint import CheckpointInfo
    from ldm_eval.pipeline import EvalOutcome
    from ldm_eval.policies import PolicyFactory
    from ldm_eval.results import PlannedEnv

__all__ = ["EvalPlan", "EvaluateConfig", "plan_evaluate", "plan_evaluation"]


class EvaluateConfig(EvalConfig):
    """The eval stage's config: the protocol (`EvalConfig`) and how `ldm-eval evaluate` runs it.

    `ldm-eval evaluate`'s options are its fields and the suite's `eval:` section embeds it.
    Only the protocol part (`protocol()`) names the evaluation (`eval_key`) and goes to its
    MLflow params: the rest may change when an evaluation resumes, or is only how it runs.
    """

    random_baseline: bool = Field(default=True, description="also score a random policy")
    device: str = Field(default="cpu", description="where the model runs: cpu, cuda, cuda:1")
    context: int | None = Field(
        default=None, gt=0, description="context per env in transitions (default: trained)"
    )
    resamples: int = Field(default=2000, gt=0, description="bootstrap resamples for the CIs")
    torch_threads: int | None = Field(
        default=None,
        gt=0,
        description="torch threads while the model acts (default: torch's; 1 on a busy machine)",
    )

    def protocol(self, episodes: int | None = None) -> EvalConfig:
        """The protocol's settings alone (`episodes` overriding its own)."""
        data = self.model_dump(include=set(EvalConfig.model_fields), by_alias=False)
        if episodes is not None:
            data["episodes"] = episodes
        return EvalConfig(**data)


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
        from ldm_eval.pipeline import eval_key, policy_context

        return eval_key(
            self.checkpoint,
            self.envs,
            list(self.policies),
            self.config,
            context=policy_context(self.policies),
        )

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
        from ldm_eval.pipeline import evaluate

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
    from ldm_eval.pipeline import plan_envs
    from ldm_eval.policies import LDMPolicyFactory, RandomPolicyFactory

    envs, warnings = plan_envs(checkpoint, libraries, env_ids)
    policies: dict[str, PolicyFactory] = {}
    if checkpoint is not None:  # the very folder `checkpoint` describes, fallback included
        policies["ldm"] = LDMPolicyFactory(checkpoint.path, device=device, context=context)
    if random_baseline:
        policies["random"] = RandomPolicyFactory(config.seed)
    return EvalPlan(checkpoint, config, envs, policies, [*notes, *warnings])


def plan_evaluate(
    checkpoint: CheckpointInfo | None,
    config: EvaluateConfig,
    *,
    libraries: Sequence[str] | None = None,
    env_ids: Sequence[str] | None = None,
    notes: Sequence[str] = (),
) -> EvalPlan:
    """`plan_evaluation` from the eval stage's config: `ldm-eval evaluate` and the suite's stage."""
    return plan_evaluation(
        checkpoint,
        config.protocol(),
        libraries=libraries,
        env_ids=env_ids,
        random_baseline=config.random_baseline,
        device=config.device,
        context=config.context,
        notes=notes,
    )
