"""The loss as one module for DDP to wrap, and the AdamW it feeds.

The loss itself is `LDM.loss_terms`: the decoder's 28 x 1024 logits per transition dominate the
cost of a small model, and most envs have one to a few real action dims, so only the rows of
the decoder for the dims that are real somewhere in the batch are applied (the same numbers as
`LDM.loss`, a test checks it, at a fraction of the work). It returns sums, not a mean, so that
the trainer can divide by the *global* count of a DDP step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ldm_model.batch import Batch
from ldm_model.model import CAUSAL_SDPA, LDM
from ldm_model.training.config import Attention, TrainConfig

__all__ = [
    "LossTerms",
    "attention_context",
    "attention_implementation",
    "execution_flags_kept",
    "fused_optimizer",
    "make_optimizer",
    "param_groups",
]


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


def param_groups(ldm: LDM, weight_decay: float) -> list[dict[str, Any]]:
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


def fused_optimizer(fused: bool | None, device: torch.device) -> bool:
    """Whether AdamW runs fused: as asked, or (None) on CUDA only, as torch's own default would."""
    return device.type == "cuda" if fused is None else fused


def attention_implementation(attention: Attention) -> str:
    """The backbone's transformers `attn_implementation` for the `attention` option.

    "flash" is SDPA that never gets a mask for a causal window (`model.CAUSAL_SDPA`), so the
    flash kernel can take it, compiled or not; `attention_context` then allows that kernel only.
    """
    return {"auto": "sdpa", "sdpa": "sdpa", "eager": "eager", "flash": CAUSAL_SDPA}[attention]


@contextlib.contextmanager
def attention_context(attention: Attention) -> Iterator[None]:
    """Around a training forward and backward: SDPA limited to the flash kernel for "flash".

    A window the flash kernel cannot take (fp32 on CUDA, a mask) then fails loudly instead of
    running another kernel unnoticed.
    """
    if attention != "flash":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        yield


def make_optimizer(
    ldm: LDM, config: TrainConfig, device: torch.device | None = None
) -> torch.optim.AdamW:
    """AdamW over `ldm`'s trainable parameters, as `config` says (a constant rate).

    `device`: where the parameters live, for `config.fused_adamw` (None: where they are).
    """
    if device is None:
        device = next(ldm.parameters()).device
    fused = fused_optimizer(config.fused_adamw, device)
    return torch.optim.AdamW(
        param_groups(ldm, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        foreach=False if fused else None,
        fused=fused or None,
    )


@contextlib.contextmanager
def execution_flags_kept(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Around `optimizer.load_state_dict`: AdamW's state saved under any `fused` setting loads.

    `load_state_dict` takes every group setting from the saved state, `fused` and `foreach`
    included, so a run resumed with another `fused_adamw` would silently keep the old one:
    they are put back, and the step counters moved where the fused kernel wants them (the
    parameters' device, float32).
    """
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    yield
    for group, saved in zip(optimizer.param_groups, flags, strict=True):
        group.update(saved)
        if not group.get("fused"):
            continue
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
