"""One optimizer step, shared by the training loop and `tools/bench_train.py --device`.

Split from `trainer.py` so that the benchmark times exactly what training runs (model, AdamW,
autocast, attention kernel, `torch.compile`, DDP/FSDP, clipping) without the loop's data,
checkpoint and MLflow machinery.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ldm_model.batch import Batch
from ldm_model.errors import NonFiniteLossError, TrainingError
from ldm_model.model import LDM
from ldm_model.tokenizer import TokenizationError
from ldm_model.training.config import TrainConfig
from ldm_model.training.distributed import (
    DistContext,
    gather_full_state,
    shard_fsdp,
    wrap_ddp,
)
from ldm_model.training.loss import (
    LossTerms,
    attention_context,
    attention_implementation,
    make_optimizer,
)

if TYPE_CHECKING:
    pass

# --------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


# --------------------------------------------------------------------------------------------
# One optimizer step


class TrainStep:
    """The model, its AdamW and one optimizer step: a `Trainer` without data or run folder.

    `Trainer` runs one on the sampler's batches; `tools/bench_train.py --device cuda` builds
    one alone on synthetic batches, so the benchmark measures the step training runs. The
    execution options of the config apply here: bf16 autocast (`precision`, CUDA only), the
    attention implementation and its kernel (`attention`), AdamW's fused kernel
    (`fused_adamw`), `torch.compile` of the backbone (`compile`), and DDP or FSDP
    (`parallel`): under FSDP the model is sharded before AdamW is made, so AdamW holds (and
    updates) each rank's shards only.
    """

    def __init__(self, config: TrainConfig, *, ctx: DistContext, has_images: bool) -> None:
        self.config = config
        self.ctx = ctx
        self.device = ctx.device
        self.autocast = ctx.device.type == "cuda" and config.precision in ("auto", "bf16")
        if config.precision == "bf16" and ctx.device.type != "cuda":
            warnings.warn(
                "bf16 autocast is for CUDA only: training in fp32 on the CPU", stacklevel=3
            )
        if config.attention == "flash" and ctx.device.type == "cuda" and not self.autocast:
            raise TrainingError(
                "attention 'flash' runs in bf16 only (the flash kernel has no fp32): use "
                "precision auto or bf16, or attention sdpa"
            )
        torch.manual_seed(config.seed)
        self.ldm = LDM(
            config.resolved_model(), attention=attention_implementation(config.attention)
        )
        self.num_parameters = self.ldm.num_parameters()
        # fed with inputs_embeds: the backbone's token table never gets a gradient
        self.ldm.backbone.embed_tokens.weight.requires_grad_(False)
        self.ldm.to(self.device)
        #: FSDP shards: parameters, gradients and AdamW's state are split over the ranks.
        self.sharded = config.parallel == "fsdp" and ctx.world > 1
        if self.sharded:
            if has_images:
                raise TrainingError(
                    "parallel 'fsdp' does not train on image envs yet (a rank without an image "
                    "window would skip the image encoder's collectives): use --parallel ddp, "
                    "or leave the image envs out (--library/--env)"
                )
            if config.compile:
                self.ldm.backbone.compile()
            shard_fsdp(self.ldm, ctx)
            self.optimizer = make_optimizer(self.ldm, config, self.device)
            # frozen after AdamW is made, as under DDP (same parameter list, same checkpoint):
            # FSDP would otherwise hand it zero gradients, and AdamW would decay its weights
            self.ldm.image_encoder.requires_grad_(False)
            self.module: torch.nn.Module = LossTerms(self.ldm)
        else:
            self.optimizer = make_optimizer(self.ldm, config, self.device)
            if ctx.world > 1 and not has_images:
                # never used without images: DDP must not wait for its gradients
                self.ldm.image_encoder.requires_grad_(False)
            if config.compile:
                # in place: the state dict keeps its keys, checkpoints stay loadable uncompiled
                self.ldm.backbone.compile()
            self.module = wrap_ddp(LossTerms(self.ldm), ctx, find_unused_parameters=has_images)
        self.params = [p for p in self.ldm.parameters() if p.requires_grad]

    def full_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """FSDP's full weights and AdamW state, on rank 0 (others: empty dicts).

        A collective: every rank calls it. None without FSDP, where the checkpoint reads the
        model and AdamW directly.
        """
        if not self.sharded:
            return None
        return gather_full_state(self.ldm, self.optimizer)

    def __call__(
        self, batch: Batch, *, step: int = 0, env_ids: Callable[[], list[str]] = list
    ) -> dict[str, float]:
        """One optimizer step on this rank's share of the global batch.

        Returns the global sums of the step (`ce_sum`, `hits`, `count`, `transitions`) and
        `loss`, `accuracy`, `grad_norm`.

        The rank's share goes through the model in micro-batches of `config.micro_batch`
        windows (gradients accumulate; DDP synchronizes on the last one only), each backward
        pass scaled by `world / global count`, so the gradient is that of the global batch's
        mean loss whatever the micro-batch and the world size.

        Args:
            batch: this rank's windows.
            step: the step's number, for errors.
            env_ids: the env ids of the step's windows, asked for only to name them in errors.

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
            # wrap_ddp gave a DDP module exactly when the world holds several processes
            sync: contextlib.AbstractContextManager[None] = _nothing()
            if isinstance(self.module, DistributedDataParallel) and not last:
                sync = self.module.no_sync()
            if self.sharded:
                # FSDP's no_sync: reduce-scatter the gradients on the last micro-batch only
                self.ldm.set_requires_gradient_sync(last)  # type: ignore[operator]
            with sync, attention_context(self.config.attention):
                try:
                    with torch.autocast(
                        self.device.type, dtype=torch.bfloat16, enabled=self.autocast
                    ):
                        ce_sum, hits, _ = self.module(part)
                except TokenizationError as exc:
                    raise NonFiniteLossError(step, env_ids(), f"input value ({exc})") from exc
                (ce_sum * scale).backward()
            ce_total += ce_sum.detach().double()
            hits_total += hits.double()
        totals = self.ctx.all_reduce_sum(torch.stack([ce_total, hits_total]))
        g_ce, g_hits = (float(v) for v in totals.tolist())
        loss = g_ce / denom
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(step, env_ids(), "loss", loss)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if self.sharded:
            # a DTensor under FSDP: the norm over every rank's shards
            norm = norm.full_tensor()  # type: ignore[attr-defined]
        grad_norm = float(norm)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(step, env_ids(), "gradient norm", grad_norm)
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


__all__ = ["TrainStep"]
