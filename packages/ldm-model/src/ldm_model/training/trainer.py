"""The training loop: AdamW at a constant rate on windows of the dataset, one process or DDP.

What the loop guarantees, and how:

- **DDP gives the single-process gradient.** Every rank takes its contiguous share of the
  step's global batch (the sampler draws the global batch from `(seed, step)` alone). The loss
  is a sum over real (step, action dim) pairs divided by their number in the *global* batch,
  which one `all_reduce` of the batch's masks gives before the forward pass; each rank
  back-propagates `local_sum / global_count * world`, so DDP's averaging of gradients yields
  exactly the gradient of the global batch's mean loss, and gradient accumulation over
  micro-batches (`micro_batch`) changes nothing either. Clipping then sees the same norm on
  every rank. Rank 0 logs the global loss (a second `all_reduce`, of the loss sums).
- **Resuming repeats nothing and skips nothing.** A checkpoint holds the weights, AdamW's state
  and the number of steps done; sampling is a function of `(seed, step)` and the model has no
  dropout, so a run restarted from step k sees the batches and computes the updates the
  uninterrupted run would have. A checkpoint made under other options, or a dataset whose
  sampled runs changed, is refused rather than silently continued.
- **Evaluation during training goes through callbacks.** Every `eval_every` steps (and at the
  last step) rank 0 calls the `TrainerCallback`s (`training.callbacks`) with the live model,
  under a forked RNG, and logs what they return on the run at that step; the other ranks wait.
  This package never imports ldm-eval: its evaluator comes in as a callback.
- **A diverging run stops at once.** A non-finite loss or gradient norm raises
  `NonFiniteLossError` with the step and the env ids of the batch's windows before the
  optimizer touches the weights; the MLflow run ends FAILED with the error in `ldm.error`.

The pieces live beside it: the loss and AdamW in `training.loss`, resuming in
`training.resume`, `metrics.jsonl` and the progress bar in `training.metrics`, MLflow in
`training.tracking`, DDP set-up in `training.distributed`, checkpoints in `training.checkpoint`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ldm_model.batch import Batch
from ldm_model.errors import NonFiniteLossError, ResumeError, TrainingError
from ldm_model.training.callbacks import (
    CallbackPluginError,
    TrainingState,
    call_hook,
    discover_callbacks,
)
from ldm_model.training.checkpoint import (
    CHECKPOINTS_DIR,
    dataset_info,
    save_checkpoint,
    step_dir_name,
)
from ldm_model.training.checkpoint.store import (
    is_store_url,
    mirror_dir,
    publish_checkpoint,
    publish_run_files,
    pull_latest,
)
from ldm_model.training.config import TrainConfig
from ldm_model.training.distributed import (
    DistContext,
    init_distributed,
    shutdown_distributed,
)
from ldm_model.training.loss import (
    LossTerms,
    execution_flags_kept,
)
from ldm_model.training.metrics import (
    LOSS_CURVE_FILE,
    METRICS_FILE,
    MetricsAccumulator,
    StepProgress,
    append_metrics,
    loss_curve_figure,
    read_metrics,
    truncate_metrics,
)
from ldm_model.training.resume import (
    check_resumable,
    default_out,
    load_resume_state,
    resume_notice,
)
from ldm_model.training.step import TrainStep
from ldm_model.training.tracking import TrainTracking

if TYPE_CHECKING:
    from rich.console import Console

    from ldm_envs.store import DataRoot
    from ldm_model.training.callbacks import TrainerCallback

# --------------------------------------------------------------------------------------------
# Errors and results


class TrainingPaused(BaseException):
    """Raised inside the run when `stop_after` steps are done (marks the MLflow run KILLED)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"paused at step {step}; run the same command again to resume")
        self.step = step


@dataclass
class TrainResult:
    """What a call to `train` did."""

    out: Path
    #: Steps done in total (resumed ones included).
    step: int
    #: Step the call started at (0, or the resumed checkpoint's step).
    start_step: int
    checkpoint: Path | None
    #: Records logged during this call (one per `log_every` steps).
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    #: True when `stop_after` ended the call before `steps`.
    paused: bool = False
    #: Wall seconds of this call's loop, and of them, in the callbacks' `on_eval_step`.
    wall_seconds: float = 0.0
    eval_seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float]:
        """The last logged record (empty when no step ran)."""
        return self.history[-1] if self.history else {}


# --------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One training run in one process (a DDP rank, or the whole run).

    Use `train(config)`; the class exists so that tests and tools can reach the pieces
    (sampler, model, optimizer) of a set-up run.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        ctx: DistContext,
        console: Console | None = None,
        allow_data_change: bool = False,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        from ldm_model.data.windows import WindowSampler

        self.config = config
        self.callbacks = list(callbacks)
        self._t0 = time.perf_counter()
        self.ctx = ctx
        self.console = console
        self.model_config = config.resolved_model()
        self.store: DataRoot | None = None
        if is_store_url(config.out):
            from ldm_envs.store import DataRoot

            # checkpoints are written to a local mirror as to any run folder, then published
            self.store = DataRoot.parse(str(config.out))
            self.out = mirror_dir(self.store)
        else:
            self.out = Path(config.out) if config.out is not None else default_out(config)
        assert config.batch_size is not None  # TrainConfig's validator resolves None
        self.batch_size = config.batch_size
        if config.batch_size % ctx.world:
            raise TrainingError(
                f"batch_size {config.batch_size} does not divide by the {ctx.world} DDP processes"
            )
        try:
            self.sampler = WindowSampler(
                config.data_root,
                context=config.window,
                weighting=config.weighting,
                libraries=config.libraries,
                env_ids=config.env_ids,
                seed=config.seed,
                cache_bytes=int(config.store_cache_gb * 1e9),
            )
        except FileNotFoundError as exc:
            raise TrainingError(
                f"{exc}; build a dataset first (e.g. `ldm-autorl run classic-control`) or pass "
                "--dataset"
            ) from exc
        self.dataset = dataset_info(self.sampler)
        if self.store is not None:  # every rank: nodes that share nothing resume from the store
            pull_latest(self.store, self.out, with_metrics=ctx.is_main)
        self._check_resumable(allow_data_change)
        self.has_images = any(
            self.sampler.codec(i).image_shape is not None for i in range(self.sampler.envs.height)
        )
        self.engine = TrainStep(config, ctx=ctx, has_images=self.has_images)
        self.device = ctx.device
        self.ldm, self.optimizer = self.engine.ldm, self.engine.optimizer
        self.num_parameters = self.engine.num_parameters
        self.start_step = 0
        self.transitions = 0
        self._resume()

    # -- resume -------------------------------------------------------------------------------

    def _check_resumable(self, allow_data_change: bool) -> None:
        """Refuse, before building anything, a run folder this command cannot continue."""
        self.resumed_from: Path | None = check_resumable(
            self.out,
            config=self.config,
            model_config=self.model_config,
            dataset=self.dataset,
            allow_data_change=allow_data_change,
            report=resume_notice(self.console, is_main=self.ctx.is_main),
        )

    def _resume(self) -> None:
        """Load the latest checkpoint's weights and optimizer state; agree on the step."""
        step = 0
        if self.resumed_from is not None:
            with execution_flags_kept(self.optimizer):
                step, self.transitions = load_resume_state(
                    self.resumed_from,
                    self.ldm,
                    self.optimizer,
                    out=self.out,
                    model_config=self.model_config,
                    sharded=self.engine.sharded,
                )
        agreed = self.ctx.all_reduce_max(step)
        if agreed != step:
            raise ResumeError(
                f"rank {self.ctx.rank} found checkpoint step {step} in {self.out} but another "
                f"rank found {agreed}: all ranks must see the same run folder"
            )
        self.start_step = step

    # -- one step -----------------------------------------------------------------------------

    def step(self, step: int, batch: Batch) -> dict[str, float]:
        """One optimizer step on this rank's share of the global batch at `step` (`TrainStep`).

        Raises:
            NonFiniteLossError: NaN/inf loss, gradient norm or input value (weights untouched),
                naming the env ids of the step's windows.
        """
        return self.engine(
            batch,
            step=step,
            env_ids=lambda: self.sampler.batch_env_ids(step, self.batch_size),
        )

    # -- the loop -----------------------------------------------------------------------------

    def save(
        self,
        step: int,
        metrics: dict[str, float],
        run_id: str | None,
        full_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    ) -> Path:
        """Write the checkpoint of `step` (rank 0), publish it to the store URL if `--out` is one.

        `full_state`: FSDP's gathered state.
        """
        folder = save_checkpoint(
            self.out,
            model=self.ldm,
            optimizer=self.optimizer,
            state=full_state,
            train_config=self.config,
            step=step,
            dataset=self.dataset,
            metrics=metrics,
            mlflow_run_id=run_id,
            world_size=self.ctx.world,
            keep=self.config.keep_checkpoints,
            num_parameters=self.num_parameters,
        )
        if self.store is not None:
            publish_checkpoint(self.store, folder)
        return folder

    def run(self, *, stop_after: int | None = None, progress: bool = True) -> TrainResult:
        """Train from `start_step` to `config.steps` (or `stop_after` steps of it)."""
        config, ctx = self.config, self.ctx
        end = config.steps
        if stop_after is not None:
            end = min(end, self.start_step + max(stop_after, 0))
        result = TrainResult(
            out=self.out, step=self.start_step, start_step=self.start_step, checkpoint=None
        )
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(
                config.model_dump_json(indent=1), encoding="utf-8"
            )
            truncate_metrics(self.out, self.start_step)
        if self.start_step >= config.steps:
            result.checkpoint = self.resumed_from
            self._say(
                f"[green]already trained[/]: {self.out} holds step {self.start_step} of "
                f"{config.steps} ({self.resumed_from})"
            )
            return result
        tracking = TrainTracking(config, enabled=ctx.is_main and config.mlflow)
        self._say(self._summary())
        try:
            with tracking.run(
                dataset=self.dataset, num_parameters=self.num_parameters, out=self.out, ctx=ctx
            ):
                result.mlflow_run_id = tracking.run_id
                self._t0 = time.perf_counter()
                self._call_back("on_train_start", self.start_step, tracking, result)
                self._loop(end, tracking, result, progress=progress and ctx.is_main)
                result.wall_seconds = time.perf_counter() - self._t0
                self._call_back("on_train_end", result.step, tracking, result)
                if result.step < config.steps:
                    raise TrainingPaused(result.step)
                if ctx.is_main and result.checkpoint is not None:
                    self._write_curve()
                    if self.store is not None:
                        publish_run_files(self.store, self.out)
                    tracking.finish(self.out, result.checkpoint, self.dataset)
        except TrainingPaused:
            result.paused = True
            tracking.paused(result.step)
            self._say(
                f"[yellow]paused[/] at step {result.step} of {config.steps}; run the same "
                "command again to resume"
            )
            return result
        self._say(
            f"[green]done[/]: step {result.step}, loss {result.metrics.get('loss', math.nan):.4f}, "
            f"accuracy {result.metrics.get('accuracy', math.nan):.3f}; checkpoint "
            f"{result.checkpoint}"
        )
        return result

    def _loop(
        self, end: int, tracking: TrainTracking, result: TrainResult, *, progress: bool
    ) -> None:
        from ldm_model.data.loader import make_loader

        config, ctx = self.config, self.ctx
        loader = make_loader(
            self.sampler,
            batch_size=self.batch_size,
            start_step=self.start_step,
            steps=end - self.start_step,
            rank=ctx.rank,
            world=ctx.world,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        acc = MetricsAccumulator()
        bar = StepProgress(self.console, total=config.steps, done=self.start_step, enabled=progress)
        with bar:
            for step, batch in zip(range(self.start_step, end), loader, strict=True):
                out = self.step(step, batch)
                self.transitions += int(out["transitions"])
                acc.add(out)
                done = step + 1
                result.step = done
                if done % config.log_every == 0 or done == end:
                    record = acc.record(done, config.lr, self.transitions)
                    result.history.append(record)
                    if ctx.is_main:
                        append_metrics(self.out, record)
                        tracking.log(record)
                    bar.update(done, record)
                else:
                    bar.update(done, None)
                if done % config.checkpoint_every == 0 or done == end:
                    full_state = self.engine.full_state()  # every rank: a collective
                    if ctx.is_main:
                        metrics = dict(result.history[-1]) if result.history else {}
                        metrics["transitions"] = float(self.transitions)
                        metrics.pop("step", None)
                        result.checkpoint = self.save(done, metrics, tracking.run_id, full_state)
                        tracking.checkpoint(result.checkpoint)
                    else:
                        result.checkpoint = self.out / CHECKPOINTS_DIR / step_dir_name(done)
                every = config.eval_every
                if every and (done % every == 0 or done == config.steps):
                    # every rank agrees on these steps whatever callbacks it holds (no hang)
                    saved = done % config.checkpoint_every == 0 or done == end
                    self._call_back(
                        "on_eval_step",
                        done,
                        tracking,
                        result,
                        checkpoint=result.checkpoint if saved else None,
                    )
                    ctx.barrier()  # the other ranks wait for rank 0's evaluation
        ctx.barrier()

    def _call_back(
        self,
        hook: str,
        step: int,
        tracking: TrainTracking,
        result: TrainResult,
        *,
        checkpoint: Path | None = None,
    ) -> None:
        """Call `hook` of every callback on rank 0 (`callbacks.call_hook`)."""
        if not (self.callbacks and self.ctx.is_main):
            return
        state = TrainingState(
            config=self.config,
            out=self.out,
            step=step,
            start_step=self.start_step,
            transitions=self.transitions,
            model=self.ldm,
            dataset=self.dataset,
            checkpoint=checkpoint,
            run=tracking.handle,
            elapsed_s=time.perf_counter() - self._t0,
        )
        t0 = time.perf_counter()
        call_hook(
            self.callbacks,
            hook,
            state,
            device=self.device,
            log=lambda metrics: tracking.log({"step": step, **metrics}),
        )
        if hook == "on_eval_step":
            result.eval_seconds += time.perf_counter() - t0

    def _write_curve(self) -> None:
        fig = loss_curve_figure(read_metrics(self.out), f"{self.model_config.name}: training loss")
        fig.savefig(self.out / LOSS_CURVE_FILE)

    def _summary(self) -> str:
        c = self.config
        envs = self.dataset.envs
        resumed = (
            f", resuming at step {self.start_step} from {self.resumed_from}"
            if self.resumed_from
            else ""
        )
        return (
            f"training [bold]{self.model_config.name}[/] ({self.num_parameters:,} parameters) on "
            f"{len(envs)} env(s), {self.dataset.transitions:,} transitions under "
            f"{self.dataset.root}; batch {c.batch_size} x {c.window}, {c.steps} steps, "
            f"{self.ctx.world} process(es) on {self.device}; out {self._out_name()}{resumed}"
        )

    def _out_name(self) -> str:
        return f"{self.store} (local mirror {self.out})" if self.store else str(self.out)

    def _say(self, text: str) -> None:
        if self.ctx.is_main and self.console is not None:
            self.console.print(text)


# --------------------------------------------------------------------------------------------
# Entry point


def train(
    config: TrainConfig,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    console: Console | None = None,
    allow_data_change: bool = False,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> TrainResult:
    """Train (or resume training) as `config` says, in this process or as a `torchrun` rank.

    Args:
        config: the training configuration.
        stop_after: stop after this many steps of this call (checkpointing there); running
            again resumes. The MLflow run stays open (KILLED, tag `ldm.paused_at_step`).
        progress: show a rich progress bar on rank 0.
        console: where rank 0 prints (None: nothing but the progress bar on stderr).
        allow_data_change: resume even when the dataset's sampled runs changed.
        callbacks: called on rank 0 every `config.eval_every` steps (see `training.callbacks`);
            None: those of the `ldm.train_callbacks` plugins when `eval_every` is set.

    Raises:
        TrainingError: no dataset, a run folder holding another run (`ResumeError`), a
            non-finite loss (`NonFiniteLossError`), `eval_every` without a callback plugin.
    """
    if callbacks is None:
        try:
            callbacks = discover_callbacks(config)
        except CallbackPluginError as exc:
            raise TrainingError(str(exc)) from None
    ctx = init_distributed(config.device)
    try:
        trainer = Trainer(
            config,
            ctx=ctx,
            console=console,
            allow_data_change=allow_data_change,
            callbacks=callbacks,
        )
        return trainer.run(stop_after=stop_after, progress=progress)
    finally:
        shutdown_distributed(ctx)


__all__ = [
    "LOSS_CURVE_FILE",
    "METRICS_FILE",
    "LossTerms",
    "NonFiniteLossError",
    "ResumeError",
    "TrainResult",
    "TrainStep",
    "Trainer",
    "TrainingError",
    "TrainingPaused",
    "default_out",
    "loss_curve_figure",
    "read_metrics",
    "train",
]
