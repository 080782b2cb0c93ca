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

The loss itself is computed here rather than through `LDM.loss`: the decoder's 28 x 1024
logits per transition dominate the cost of a small model, and most envs have one to a few real
action dims, so only the rows of the decoder for the dims that are real somewhere in the batch
are applied (the same numbers as `LDM.loss`, a test checks it, at a fraction of the work).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ldm_model.batch import Batch
from ldm_model.errors import NonFiniteLossError, ResumeError, TrainingError
from ldm_model.model import LDM
from ldm_model.tokenizer import TokenizationError
from ldm_model.training.callbacks import CallbackPluginError, TrainingState, discover_callbacks
from ldm_model.training.checkpoint import (
    CHECKPOINTS_DIR,
    CheckpointConfigError,
    CheckpointError,
    CheckpointFallbackWarning,
    DatasetInfo,
    check_model_config,
    dataset_info,
    index_files,
    latest_checkpoint,
    load_checkpoint,
    optimizer_param_names,
    read_info,
    save_checkpoint,
    step_dir_name,
    valid_checkpoint,
)
from ldm_model.training.config import EXECUTION_FIELDS, TrainConfig
from ldm_model.training.distributed import DistContext, init_distributed, shutdown_distributed

if TYPE_CHECKING:
    from rich.console import Console

    from ldm_envs.tracking import RunHandle
    from ldm_model.data.windows import WindowSampler
    from ldm_model.training.callbacks import TrainerCallback

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
TAG_CHECKPOINT = "ldm.checkpoint"
TAG_DATASET = "ldm.dataset"
TAG_INDEX_SHA = "ldm.dataset.index_sha256"
TAG_ERROR = "ldm.error"
TAG_PAUSED = "ldm.paused_at_step"


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
# The loss


class LossTerms(nn.Module):
    """`LDM` plus its loss as one forward pass, so DDP sees the whole computation.

    `forward(batch)` returns float32 scalars `(ce_sum, hits, count)`: the cross-entropy summed
    over real (step, action dim) pairs, how many of them the masked argmax gets right, and
    their number.
    """

    def __init__(self, ldm: LDM) -> None:
        super().__init__()
        self.ldm = ldm

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ldm.loss_terms(batch)


def _param_groups(ldm: LDM, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on linear and conv weights only (see `training.config`)."""
    decay, rest = [], []
    for module in ldm.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "weight" and isinstance(module, (nn.Linear, nn.Conv2d)):
                decay.append(p)
            else:
                rest.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


# --------------------------------------------------------------------------------------------
# Helpers


def default_out(config: TrainConfig) -> Path:
    """`<data_home>/models/<model>-<hash>`: the same command (steps apart) finds its run."""
    import hashlib

    from ldm_envs.paths import data_home

    blob = json.dumps(config.identity(with_steps=False), sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return data_home() / "models" / f"{config.resolved_model().name}-{digest}"


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _batch_env_ids(sampler: WindowSampler, step: int, batch_size: int) -> list[str]:
    """Env id of every window of the global batch at `step` (all ranks agree on it)."""
    drawn = sampler.draw(step, batch_size)
    env_ids = sampler.envs["env_id"].to_list()
    runs_env = sampler.run_envs[drawn.runs]
    return [env_ids[int(e)] for e in runs_env]


def read_metrics(out: Path) -> list[dict[str, float]]:
    """The records of `out/metrics.jsonl` (one per logged step)."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def _truncate_metrics(out: Path, step: int) -> None:
    """Forget records past `step` (they will be logged again by the resumed run)."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(out) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)


def loss_curve_figure(records: list[dict[str, float]], title: str) -> Any:
    """Loss (log scale) and accuracy against step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    if records:
        ax.plot(steps, [r["loss"] for r in records], color="tab:blue", lw=1.2, label="loss")
        ax.set_yscale("log")
        acc = ax.twinx()
        acc.plot(
            steps, [r["accuracy"] for r in records], color="tab:orange", lw=1.0, label="accuracy"
        )
        acc.set_ylim(0, 1)
        acc.set_ylabel("accuracy")
        lines = ax.get_lines() + acc.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    else:
        ax.text(0.5, 0.5, "no step logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# MLflow (rank 0)


class _Tracking:
    """The MLflow side of a run; every method is a no-op when tracking is off."""

    def __init__(self, config: TrainConfig, enabled: bool) -> None:
        self.config = config
        self.enabled = enabled
        self.handle: RunHandle | None = None

    @contextlib.contextmanager
    def run(
        self, *, dataset: DatasetInfo, num_parameters: int, out: Path, ctx: DistContext
    ) -> Iterator[_Tracking]:
        if not self.enabled:
            yield self
            return
        from ldm_envs import tracking

        config = self.config
        model = config.resolved_model()
        # how the run is carried out may change on resume: tags, not (immutable) params
        params = {k: v for k, v in config.flat_params().items() if k not in EXECUTION_FIELDS}
        params["num_parameters"] = num_parameters
        # the dataset may change under --allow-data-change: tags, which may change
        tags = {
            "ldm.dataset.envs": str(len(dataset.envs)),
            "ldm.dataset.transitions": str(dataset.transitions),
            "ldm.model": model.name,
            TAG_DATASET: dataset.root,
            TAG_INDEX_SHA: dataset.index_sha256 or "",
            "ldm.dataset.runs_sha256": dataset.runs_sha256,
            "ldm.out": str(out),
            "ldm.world_size": str(ctx.world),
            "ldm.device": str(ctx.device),
        }
        name = f"{model.name}-{config.library_label()}-{config.run_key()[-8:]}"
        with tracking.tracked_run(
            "model",
            config.library_label(),
            config.run_key(),
            name=name,
            tags=tags,
            params=params,
        ) as handle:
            self.handle = handle
            if handle.resumed:
                self._clear_tags(TAG_ERROR, TAG_PAUSED)
            yield self

    @property
    def run_id(self) -> str | None:
        return self.handle.run_id if self.handle else None

    def _clear_tags(self, *keys: str) -> None:
        from mlflow.tracking import MlflowClient

        from ldm_envs.tracking import tracking_uri

        if self.handle is None:
            return
        client = MlflowClient(tracking_uri())
        have = client.get_run(self.handle.run_id).data.tags
        for key in keys:
            if key in have:
                with contextlib.suppress(Exception):
                    client.delete_tag(self.handle.run_id, key)

    def log(self, record: dict[str, float]) -> None:
        if self.handle is not None:
            metrics = {k: v for k, v in record.items() if k != "step"}
            self.handle.log_metrics(metrics, step=int(record["step"]))

    def checkpoint(self, path: Path) -> None:
        if self.handle is not None:
            self.handle.set_tags({TAG_CHECKPOINT: str(path)})

    def finish(self, out: Path, checkpoint: Path, dataset: DatasetInfo) -> None:
        if self.handle is None:
            return
        records = read_metrics(out)
        fig = loss_curve_figure(records, f"{self.config.resolved_model().name}: training loss")
        self.handle.log_figure(fig, LOSS_CURVE_FILE)
        self.handle.log_artifact(checkpoint, "checkpoint")
        for file in index_files(Path(dataset.root)):
            self.handle.log_artifact(file, "dataset_index")
        self.handle.set_tags({TAG_CHECKPOINT: str(checkpoint)})


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
        self.out = Path(config.out) if config.out is not None else default_out(config)
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
            )
        except FileNotFoundError as exc:
            raise TrainingError(
                f"{exc}; build a dataset first (e.g. `ldm-autorl run classic-control`) or pass "
                "--root"
            ) from exc
        self.dataset = dataset_info(self.sampler)
        self._check_resumable(allow_data_change)
        self.has_images = any(
            self.sampler.codec(i).image_shape is not None for i in range(self.sampler.envs.height)
        )
        self.device = ctx.device
        self.autocast = ctx.device.type == "cuda" and config.precision in ("auto", "bf16")
        if config.precision == "bf16" and ctx.device.type != "cuda":
            warnings.warn(
                "bf16 autocast is for CUDA only: training in fp32 on the CPU", stacklevel=2
            )

        torch.manual_seed(config.seed)
        self.ldm = LDM(self.model_config)
        self.num_parameters = self.ldm.num_parameters()
        # fed with inputs_embeds: the backbone's token table never gets a gradient
        self.ldm.backbone.embed_tokens.weight.requires_grad_(False)
        self.ldm.to(self.device)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.ldm, config.weight_decay),
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            foreach=None,
        )
        self.start_step = 0
        self.transitions = 0
        self._resume()
        self.module: nn.Module = LossTerms(self.ldm)
        if ctx.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if not self.has_images:
                # never used without images: DDP must not wait for its gradients
                self.ldm.image_encoder.requires_grad_(False)
            self.module = DDP(
                self.module,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=self.has_images,
            )
        self.params = [p for p in self.ldm.parameters() if p.requires_grad]

    # -- resume -------------------------------------------------------------------------------

    def _check_resumable(self, allow_data_change: bool) -> None:
        """Refuse, before building anything, a run folder this command cannot continue.

        Resumes from the newest *valid* checkpoint: newer ones that are corrupt (checked by
        their recorded hashes) are skipped, and the console (else a warning) says which.
        """
        self.resumed_from: Path | None = None
        if latest_checkpoint(self.out) is None:
            return
        try:
            latest = valid_checkpoint(self.out, report=self._fallback_notice)
            self.resumed_from = latest
            info = read_info(latest)
            check_model_config(latest, info.model, self.model_config)
        except CheckpointConfigError as exc:
            raise ResumeError(
                f"{exc}: rerun with the same options to resume that run, or train into "
                "another --out"
            ) from exc
        except CheckpointError as exc:
            raise ResumeError(
                f"cannot resume the run in {self.out}: {exc}; no checkpoint of it is valid. "
                f"Delete {self.out / CHECKPOINTS_DIR} to start over, or train into another --out"
            ) from exc
        diffs = info.train.resume_differences(self.config)
        if diffs:
            detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items())
            raise ResumeError(
                f"{self.out} holds a run trained under other options ({detail}; last "
                f"checkpoint {latest}): rerun with the same options to resume it, or train "
                "into another --out"
            )
        if info.dataset.runs_sha256 != self.dataset.runs_sha256 and not allow_data_change:
            raise ResumeError(
                f"the dataset under {self.dataset.root} changed since {latest} was saved "
                "(its sampled runs differ), so the resumed run would not see the batches of "
                "the interrupted one; train into another --out, or pass "
                "--allow-data-change to continue anyway"
            )

    def _resume(self) -> None:
        """Load the latest checkpoint's weights and optimizer state; agree on the step."""
        step = 0
        latest = self.resumed_from
        if latest is not None:
            try:
                # its files' hashes were checked when `_check_resumable` chose it
                ckpt = load_checkpoint(latest, expected_config=self.model_config, verify=False)
                ckpt.load_into(self.ldm)
                names = optimizer_param_names(self.ldm, self.optimizer)
                self.optimizer.load_state_dict(ckpt.optimizer_state(names))
            except (CheckpointError, ValueError, KeyError) as exc:
                raise ResumeError(
                    f"cannot resume the run in {self.out}: {exc}. Delete {latest} to resume "
                    "from the previous checkpoint, or train into another --out"
                ) from exc
            step = ckpt.info.step
            self.transitions = int(ckpt.info.metrics.get("transitions", 0))
        agreed = self.ctx.all_reduce_max(step)
        if agreed != step:
            raise ResumeError(
                f"rank {self.ctx.rank} found checkpoint step {step} in {self.out} but another "
                f"rank found {agreed}: all ranks must see the same run folder"
            )
        self.start_step = step

    # -- one step -----------------------------------------------------------------------------

    def step(self, step: int, batch: Batch) -> dict[str, float]:
        """One optimizer step on this rank's share of the global batch at `step`.

        Returns the global sums of the step (`ce_sum`, `hits`, `count`, `transitions`) and
        `loss`, `accuracy`, `grad_norm`.

        The rank's share goes through the model in micro-batches of `config.micro_batch`
        windows (gradients accumulate; DDP synchronizes on the last one only), each backward
        pass scaled by `world / global count`, so the gradient is that of the global batch's
        mean loss whatever the micro-batch and the world size.

        Raises:
            NonFiniteLossError: NaN/inf loss, gradient norm or input value (weights untouched).
        """
        batch = batch.to(self.device, non_blocking=True)
        # the global number of real (step, dim) pairs first: it scales every backward pass
        b, t = batch.shape
        pairs = batch.act_mask[:, None, :].expand(b, t, -1)
        if batch.loss_mask is not None:
            pairs = pairs & batch.loss_mask[:, :, None]
        real = pairs.any(dim=-1).sum()
        sizes = torch.stack([pairs.sum(), real]).double()
        g_count, g_real = (float(v) for v in self.ctx.all_reduce_sum(sizes).tolist())
        denom = max(g_count, 1.0)
        scale = self.ctx.world / denom
        share = b
        micro = self.config.micro_batch or share
        ce_total = torch.zeros((), dtype=torch.float64, device=self.device)
        hits_total = torch.zeros((), dtype=torch.float64, device=self.device)
        for first in range(0, share, micro):
            part = batch if micro >= share else batch.select(slice(first, first + micro))
            last = first + micro >= share
            sync = self.module.no_sync() if (self.ctx.world > 1 and not last) else _nothing()
            with sync:
                try:
                    with torch.autocast(
                        self.device.type, dtype=torch.bfloat16, enabled=self.autocast
                    ):
                        ce_sum, hits, _ = self.module(part)
                except TokenizationError as exc:
                    env_ids = _batch_env_ids(self.sampler, step, self.config.batch_size)
                    raise NonFiniteLossError(step, env_ids, f"input value ({exc})") from exc
                (ce_sum * scale).backward()
            ce_total += ce_sum.detach().double()
            hits_total += hits.double()
        totals = self.ctx.all_reduce_sum(torch.stack([ce_total, hits_total]))
        g_ce, g_hits = (float(v) for v in totals.tolist())
        loss = g_ce / denom
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            env_ids = _batch_env_ids(self.sampler, step, self.config.batch_size)
            raise NonFiniteLossError(step, env_ids, "loss", loss)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            env_ids = _batch_env_ids(self.sampler, step, self.config.batch_size)
            raise NonFiniteLossError(step, env_ids, "gradient norm", grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "ce_sum": g_ce,
            "hits": g_hits,
            "count": g_count,
            "transitions": g_real,
            "loss": loss,
            "accuracy": g_hits / denom,
            "grad_norm": grad_norm,
        }

    # -- the loop -----------------------------------------------------------------------------

    def save(self, step: int, metrics: dict[str, float], run_id: str | None) -> Path:
        return save_checkpoint(
            self.out,
            model=self.ldm,
            optimizer=self.optimizer,
            train_config=self.config,
            step=step,
            dataset=self.dataset,
            metrics=metrics,
            mlflow_run_id=run_id,
            world_size=self.ctx.world,
            keep=self.config.keep_checkpoints,
            num_parameters=self.num_parameters,
        )

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
            _truncate_metrics(self.out, self.start_step)
        if self.start_step >= config.steps:
            result.checkpoint = self.resumed_from
            self._say(
                f"[green]already trained[/]: {self.out} holds step {self.start_step} of "
                f"{config.steps} ({self.resumed_from})"
            )
            return result
        tracking = _Tracking(config, enabled=ctx.is_main and config.mlflow)
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
                    tracking.finish(self.out, result.checkpoint, self.dataset)
        except TrainingPaused:
            result.paused = True
            if tracking.handle is not None:
                tracking._clear_tags(TAG_ERROR)
                tracking.handle.set_tags({TAG_PAUSED: str(result.step)})
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

    def _loop(self, end: int, tracking: _Tracking, result: TrainResult, *, progress: bool) -> None:
        from ldm_model.data.loader import make_loader

        config, ctx = self.config, self.ctx
        loader = make_loader(
            self.sampler,
            batch_size=config.batch_size,
            start_step=self.start_step,
            steps=end - self.start_step,
            rank=ctx.rank,
            world=ctx.world,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        acc = _Accumulator()
        bar = _Progress(self.console, total=config.steps, done=self.start_step, enabled=progress)
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
                        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as fh:
                            fh.write(json.dumps(record) + "\n")
                        tracking.log(record)
                    bar.update(done, record)
                else:
                    bar.update(done, None)
                if done % config.checkpoint_every == 0 or done == end:
                    if ctx.is_main:
                        metrics = dict(result.history[-1]) if result.history else {}
                        metrics["transitions"] = float(self.transitions)
                        metrics.pop("step", None)
                        result.checkpoint = self.save(done, metrics, tracking.run_id)
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
        tracking: _Tracking,
        result: TrainResult,
        *,
        checkpoint: Path | None = None,
    ) -> None:
        """Call `hook` of every callback on rank 0 (RNG forked: training draws stay the same)."""
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
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for callback in self.callbacks:
                metrics = getattr(callback, hook)(state)
                if hook == "on_eval_step" and metrics:
                    tracking.log({"step": step, **metrics})
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
            f"{self.ctx.world} process(es) on {self.device}; out {self.out}{resumed}"
        )

    def _say(self, text: str) -> None:
        if self.ctx.is_main and self.console is not None:
            self.console.print(text)

    def _fallback_notice(self, message: str) -> None:
        """Say (rank 0 only) that the resume skips corrupt checkpoints, and which."""
        if not self.ctx.is_main:
            return
        if self.console is not None:
            self.console.print(f"[yellow]warning:[/] resuming: {message}", highlight=False)
        else:
            warnings.warn(f"resuming: {message}", CheckpointFallbackWarning, stacklevel=2)


class _Accumulator:
    """Sums of the steps since the last log record."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.ce = self.hits = self.count = self.real = self.grad = 0.0
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, out: dict[str, float]) -> None:
        self.ce += out["ce_sum"]
        self.hits += out["hits"]
        self.count += out["count"]
        self.real += out["transitions"]
        self.grad += out["grad_norm"]
        self.steps += 1

    def record(self, step: int, lr: float, transitions: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        denom = max(self.count, 1.0)
        rec = {
            "step": step,
            "loss": self.ce / denom,
            "accuracy": self.hits / denom,
            "lr": lr,
            "grad_norm": self.grad / max(self.steps, 1),
            "transitions_per_s": self.real / elapsed,
            "transitions": float(transitions),
        }
        self._reset()
        return rec


class _Progress:
    """A rich progress bar (steps, loss, transitions/s) on rank 0; nothing elsewhere."""

    def __init__(self, console: Console | None, *, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("{task.fields[tps]} transitions/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.bar.add_task(
            "train", total=total, completed=done, loss="-", acc="-", tps="-"
        )

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int, record: dict[str, float] | None) -> None:
        if self.bar is None:
            return
        fields: dict[str, Any] = {}
        if record is not None:
            fields = {
                "loss": f"{record['loss']:.4f}",
                "acc": f"{record['accuracy']:.3f}",
                "tps": f"{record['transitions_per_s']:,.0f}",
            }
        self.bar.update(self.task, completed=done, **fields)


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
    "Trainer",
    "TrainingError",
    "TrainingPaused",
    "default_out",
    "loss_curve_figure",
    "read_metrics",
    "train",
]
