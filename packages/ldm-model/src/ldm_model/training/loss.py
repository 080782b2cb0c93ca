"""The loss as one module for DDP to wrap, and the AdamW it feeds.

The loss itself is `LDM.loss_terms`: the decoder's 28 x 1024 logits per transition dominate the
cost of a small model, and most envs have one to a few real action dims, so only the rows of
the decoder for the dims that are real somewhere in the batch are applied (the same numbers as
`LDM.loss`, a test checks it, at a fraction of the work). It returns sums, not a mean, so that
the trainer can divide by the *global* count of a DDP step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ldm_model.batch import Batch
from ldm_model.model import LDM
from ldm_model.training.config import TrainConfig

__all__ = ["LossTerms", "make_optimizer", "param_groups"]


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


def make_optimizer(ldm: LDM, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `ldm`'s trainable parameters, as `config` says (a constant rate)."""
    return torch.optim.AdamW(
        param_groups(ldm, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        foreach=None,
    )
