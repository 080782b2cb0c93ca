"""What the trainer calls while it trains: the `TrainerCallback` protocol and its discovery.

The paper's scaling figure (Fig. 3) needs the evaluation protocol run every K steps during
training, but the protocol lives in ldm-eval, which depends on this package and not the other
way round. So the trainer owns a small protocol instead: every `TrainConfig.eval_every` steps
(and at the last step) rank 0 hands each callback a `TrainingState` (the live model, the step,
the transitions seen, the run's MLflow handle), and logs the metrics the callback returns on the
training's MLflow run at that step. The other DDP ranks wait at a barrier meanwhile.

Callbacks come either from the caller (`train(config, callbacks=[...])`, as the suite does) or,
when the caller passes none and `eval_every` is set, from the `ldm.train_callbacks` entry-point
group: each entry point names a factory `(TrainConfig) -> TrainerCallback | None` (ldm-eval
registers its evaluator there), loaded only then, so `ldm-model train --eval-every 500` works
whenever ldm-eval is installed without this package importing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ldm_envs.plugins import load_entry_point
from ldm_model.errors import CallbackPluginError

if TYPE_CHECKING:
    import torch

    from ldm_envs.tracking import RunHandle
    from ldm_model.model import LDM
    from ldm_model.training.checkpoint import DatasetInfo
    from ldm_model.training.config import TrainConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "CallbackPluginError",
    "TrainerCallback",
    "TrainingState",
    "call_hook",
    "discover_callbacks",
]

#: Entry points whose targets are factories `(TrainConfig) -> TrainerCallback | None`.
ENTRY_POINT_GROUP = "ldm.train_callbacks"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingState:
    """Where a training run stands when the trainer calls its callbacks (rank 0 only).

    Attributes:
        config: the run's configuration (`eval_every`, `eval_episodes` among it).
        out: the run folder (checkpoints, metrics.jsonl; a callback may write files here).
        step: optimizer steps done.
        start_step: the step this call started at (0, or the resumed checkpoint's step).
        transitions: real transitions the model was trained on so far (resumed ones included).
        model: the live model (the DDP-unwrapped module). Use it without gradients and leave
            it as found: training continues with it.
        dataset: the training data (its root and the envs trained on).
        checkpoint: the checkpoint saved at this very step, if one was.
        run: the training's MLflow run (None when tracking is off).
        elapsed_s: wall seconds since this call's loop started (callbacks included).
    """

    config: TrainConfig
    out: Path
    step: int
    start_step: int
    transitions: int
    model: LDM
    dataset: DatasetInfo
    checkpoint: Path | None = None
    run: RunHandle | None = None
    elapsed_s: float = 0.0


@runtime_checkable
class TrainerCallback(Protocol):
    """Called by the trainer on rank 0; an exception stops the training (the run FAILS)."""

    def on_train_start(self, state: TrainingState) -> None:
        """Before the first step of this call (after resuming): `state.step == start_step`."""
        ...

    def on_eval_step(self, state: TrainingState) -> Mapping[str, float] | None:
        """Every `config.eval_every` steps and at the last step.

        Returns:
            Metrics the trainer logs on the training's MLflow run at `state.step`.
        """
        ...

    def on_train_end(self, state: TrainingState) -> None:
        """After the last step of this call (finished, or paused by `stop_after`)."""
        ...


def discover_callbacks(
    config: TrainConfig, eps: Iterable[EntryPoint] | None = None
) -> list[TrainerCallback]:
    """The callbacks of the `ldm.train_callbacks` plugins for `config` (none without `eval_every`).

    A plugin that fails to load or build is logged and skipped, never hiding the others.

    Raises:
        CallbackPluginError: `eval_every` is set but no plugin gave a callback (the message
            names the broken ones and what to install).
    """
    if config.eval_every is None:
        return []
    found: list[TrainerCallback] = []
    broken: dict[str, str] = {}
    for ep in eps if eps is not None else entry_points(group=ENTRY_POINT_GROUP):
        try:
            callback = load_entry_point(ep)(config)  # a hung or exiting import is contained
        except (Exception, SystemExit) as exc:
            broken[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
            logger.warning("skipping training-callback plugin %r: %s", ep.name, broken[ep.name])
            continue
        if callback is not None:
            found.append(callback)
    if not found:
        why = "; ".join(f"plugin {k!r} is broken ({v})" for k, v in broken.items())
        raise CallbackPluginError(
            f"eval_every={config.eval_every} asks for evaluations during training, but no "
            f"`{ENTRY_POINT_GROUP}` plugin provides them"
            + (f": {why}" if why else "; install ldm-eval (it registers the evaluator)")
        )
    return found


def call_hook(
    callbacks: Sequence[TrainerCallback],
    hook: str,
    state: TrainingState,
    *,
    device: torch.device,
    log: Callable[[Mapping[str, float]], None],
) -> None:
    """Call `hook` of every callback with `state`; `log` what `on_eval_step` returns.

    Under a forked RNG: whatever a callback draws (an evaluation's rollouts), the training's
    own draws stay those of a run without callbacks.
    """
    import torch

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for callback in callbacks:
            metrics = getattr(callback, hook)(state)
            if hook == "on_eval_step" and metrics:
                log(metrics)
