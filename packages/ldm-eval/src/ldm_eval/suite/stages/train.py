"""The `train` stage: the LDM on the suite's envs, trained, resumed or extended.

In this process (`ldm_model.training.train`, what `ldm-model train` runs): one long job whose
failure the trainer reports itself as an exception, and which, with `model.eval_every`, calls
the paper's protocol every K steps (`training_curve.TrainingEvaluator`) as a trainer callback
handed over directly, with no plugin lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ldm_eval.suite.commands import quote
from ldm_eval.suite.config import Suite, digest
from ldm_eval.suite.context import StageContext, StageFailure

if TYPE_CHECKING:
    from ldm_eval.training_curve import TrainingEvaluator
    from ldm_model.training import TrainConfig

__all__ = ["model_key", "run", "train_config"]


def train_config(suite: Suite) -> TrainConfig:
    """The `TrainConfig` the stage trains with (and the report finds the model folder by)."""
    from ldm_model.training import TrainConfig

    m = suite.model
    env_ids = None
    if suite.restricts_envs():
        env_ids = [e for envs in suite.env_ids().values() for e in envs]
    return TrainConfig(
        **m.train_fields(),
        data_root=suite.dataset_root,
        libraries=[lib.name for lib in suite.libraries],
        env_ids=env_ids,
        out=suite.folder / "models" / f"{m.config}-{model_key(suite)}",
    )


def model_key(suite: Suite) -> str:
    """The model folder's key: what decides the weights, the step count apart.

    More steps extend the same run; another dataset or config trains a fresh one.
    """
    fields = suite.model.stable_dump()
    for key in ("steps", "device", "num_workers", "eval_every", "eval_episodes"):
        fields.pop(key, None)
    fields["checkpoint_every"] = None
    return digest(
        {"model": fields, "envs": suite.env_ids(), "dataset": suite.fingerprints()["autorl"]}
    )


def run(ctx: StageContext) -> None:
    """The LDM, trained (or resumed, or extended) on the suite's envs, in this process."""
    from ldm_model.training import TrainingError
    from ldm_model.training import train as run_training
    from ldm_model.training.checkpoint import CheckpointError

    config = train_config(ctx.suite)
    args: list[object]  # options and their values (ints, floats, paths) for `quote`
    args = ["ldm-model", "train", "--model", ctx.suite.model.config, "--dataset", config.data_root]
    args += [a for lib in config.libraries or () for a in ("--library", lib)]
    args += [a for e in config.env_ids or () for a in ("--env", e)]
    args += ["--weighting", config.weighting, "--batch-size", config.batch_size]
    if config.context is not None:
        args += ["--context", config.context]
    args += ["--steps", config.steps, "--lr", config.lr, "--seed", config.seed]
    args += ["--checkpoint-every", config.checkpoint_every, "--device", config.device]
    if config.eval_every is not None:
        args += ["--eval-every", config.eval_every]
        if config.eval_episodes is not None:
            args += ["--eval-episodes", config.eval_episodes]
    args += [*_other_options(ctx.suite), "--out", config.out]
    ctx.console.rule(f"train {ctx.suite.model.config} ({config.steps} steps)")
    ctx.command(quote(args))
    callbacks = [_training_evaluator(ctx)] if config.eval_every is not None else []
    try:
        result = run_training(
            config, console=ctx.console, progress=ctx.console.is_terminal, callbacks=callbacks
        )
    except (TrainingError, CheckpointError, ValueError) as exc:
        raise StageFailure(str(exc)) from None
    if callbacks and result.wall_seconds:
        ctx.outputs["eval_during_training"] = (
            f"{result.eval_seconds:.1f} s of {result.wall_seconds:.1f} s "
            f"({100 * result.eval_seconds / result.wall_seconds:.1f}%)"
        )
    if result.checkpoint is None:
        raise StageFailure(f"training ended without a checkpoint in {result.out}")
    ctx.outputs["model_dir"] = str(result.out)
    ctx.outputs["checkpoint"] = str(result.checkpoint)
    ctx.outputs["step"] = str(result.step)
    if result.mlflow_run_id:
        ctx.outputs["mlflow_run_id"] = result.mlflow_run_id


#: The section's fields the shown `ldm-model train` command always spells out.
_SHOWN = {"model", "weighting", "batch_size", "context", "steps", "lr", "seed", "device"}
_SHOWN |= {"checkpoint_every", "eval_every", "eval_episodes"}


def _other_options(suite: Suite) -> list[Any]:
    """The shown command's options for the section's other fields set to non-defaults."""
    from ldm_envs.cli_options import field_default
    from ldm_model.training import TrainConfig

    m, args = suite.model, []
    for name, value in m.train_fields().items():
        if name in _SHOWN or value == field_default(TrainConfig, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else flag.replace("--", "--no-", 1))
        elif isinstance(value, tuple):
            args += [a for v in value for a in (flag, v)]
        else:
            args += [flag, value]
    return args


def _training_evaluator(ctx: StageContext) -> TrainingEvaluator:
    """The paper's protocol every `model.eval_every` steps: the eval section's, fewer episodes."""
    from ldm_eval.training_curve import TrainingEvaluator

    e, m = ctx.suite.eval, ctx.suite.model
    config = e.protocol(episodes=m.eval_episodes)
    return TrainingEvaluator(
        config, copy_to=ctx.suite.folder, torch_threads=e.torch_threads, console=ctx.console
    )
