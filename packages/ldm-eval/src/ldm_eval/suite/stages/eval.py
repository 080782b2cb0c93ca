"""The `eval` stage: the paper's protocol on the trained checkpoint, the random baseline beside.

In this process, planned and run exactly as `ldm-eval evaluate` does
(`plan.plan_evaluation`, then `EvalPlan.run`): the protocol already runs every env in its
own worker processes and retries a rollout whose worker died, so the suite gains nothing from
another process but the cost of loading the model twice. The suite only picks the envs (those
of the suite the model trained on) and the run folder (`<suite folder>/eval/<key>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ldm_eval.suite.commands import quote
from ldm_eval.suite.config import Suite
from ldm_eval.suite.context import StageContext, StageFailure
from ldm_eval.suite.stages.train import train_config
from ldm_eval.threads import torch_threads

__all__ = ["run"]


def _eval_targets(
    suite: Suite, trained: Sequence[Any] | None
) -> tuple[list[str], list[str] | None, list[str]]:
    """(libraries, env ids or None for all trained, notes): the suite's envs the model saw.

    An env none of whose reference runs passed the filters is not in the model's data and has
    no reference to normalize against: evaluating it would cost rollouts and score nothing, so
    it is named in a note instead.
    """
    libraries = [lib.name for lib in suite.libraries]
    wanted = suite.env_ids()
    if trained is None:  # an old checkpoint without its envs: evaluate what the suite names
        flat = [e for envs in wanted.values() for e in envs]
        return libraries, flat if suite.restricts_envs() else None, []
    seen = {(t.library, t.env_id) for t in trained}
    missing = [f"{lib}/{e}" for lib, envs in wanted.items() for e in envs if (lib, e) not in seen]
    notes = []
    if missing:
        notes.append(
            "not evaluated (no reference run passed the filters, so the model never trained "
            f"on them): {', '.join(missing)}"
        )
    libraries = [lib for lib in libraries if any(t[0] == lib for t in seen)]
    if not suite.restricts_envs():
        return libraries, None, notes
    return libraries, [e for lib in libraries for e in wanted[lib] if (lib, e) in seen], notes


def run(ctx: StageContext) -> None:
    """The paper's protocol on the trained checkpoint, the random baseline beside it."""
    from ldm_envs.errors import LDMError
    from ldm_eval.checkpoint import read_checkpoint
    from ldm_eval.plan import plan_evaluate
    from ldm_model.training.checkpoint import CheckpointError

    suite, e = ctx.suite, ctx.suite.eval
    model_dir = train_config(suite).out
    assert model_dir is not None  # train_config always names the model's folder
    try:
        info = read_checkpoint(model_dir)
    except CheckpointError as exc:
        raise StageFailure(f"{exc} (did the train stage finish? its folder: {model_dir})") from None
    libraries, env_ids, notes = _eval_targets(suite, info.envs)
    try:
        plan = plan_evaluate(info, e, libraries=libraries, env_ids=env_ids, notes=notes)
    except (LDMError, ValueError) as exc:
        raise StageFailure(str(exc)) from None
    out = suite.folder / "eval" / plan.key[:12]
    args = ["ldm-eval", "evaluate", info.path]
    args += [a for lib in libraries for a in ("-l", lib)]
    args += [a for x in env_ids or () for a in ("--env", x)]
    args += ["--episodes", e.episodes, "--rollouts", e.rollouts, "--seed", e.seed]
    args += ["--backend", e.backend, "--device", e.device, "--retries", e.retries]
    if not e.random_baseline:
        args.append("--no-random-baseline")
    if e.context is not None:
        args += ["--context", e.context]
    args += ["--dataset", suite.dataset_root, "--resamples", e.resamples, "-o", out]
    ctx.console.rule(f"eval: {len(plan.envs)} env(s), {e.rollouts} x {e.episodes} episodes")
    ctx.command(quote(args))
    try:
        with torch_threads(e.torch_threads):
            outcome = plan.run(
                out_dir=out,
                dataset_root=suite.dataset_root,
                track=True,
                resume=True,
                n_resamples=e.resamples,
                console=ctx.console,
            )
    except (LDMError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise StageFailure(str(exc)) from None
    ctx.outputs["eval_dir"] = str(outcome.run_dir.path)
    ctx.outputs["eval_report"] = str(outcome.report)
    if outcome.mlflow_run_id:
        ctx.outputs["mlflow_run_id"] = outcome.mlflow_run_id
