"""The Large Decision Model: meta-token encoder, Llama backbone, per-dimension action decoder.

One transition is one token. Its embedding merges, by one linear layer, the embeddings of
observation t (each real dim looked up in the bin table or the discrete table; an image through
the convolutional encoder) with those of action, reward and termination of t-1 (zero where there
is no previous transition). Images smaller than 64x64x3 arrive at their stored size
(`Batch.image_groups`) and are resized here, on the model's device, right before the encoder.
The backbone is `transformers.LlamaModel` fed with `inputs_embeds`, so attention, RoPE and the
KV cache are the well-kept implementation's; the decoder is one linear layer giving `n_bins`
logits for each of the 28 action dims.

The backbone's attention implementation is transformers' `attn_implementation`: `sdpa` (the
default), `eager`, or `CAUSAL_SDPA`, registered here: transformers' SDPA that never receives a
mask for a plain causal sequence, so that PyTorch's flash kernel can run it even under
`torch.compile` (where transformers before torch 2.14 materializes the causal mask, which the
flash kernel refuses). The training option `attention` picks one (`training.loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, LlamaConfig, LlamaModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ldm_model.batch import Batch
from ldm_model.config import ModelConfig
from ldm_model.tokenizer import value_bins

#: Attention implementation name of `causal_sdpa_attention` (transformers' `AttentionInterface`).
CAUSAL_SDPA = "ldm_causal_sdpa"
#: What `LDM(attention=...)` accepts: transformers' names, and ours.
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", CAUSAL_SDPA)


def causal_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers' SDPA attention, for an implementation name that has no mask function.

    Transformers builds no mask for such a name, so a causal sequence reaches SDPA as
    `is_causal=True` with no mask: the flash kernel's case. A mask given by the caller (4D,
    as the policy's prefill passes one) goes through unchanged. Queries that do not start the
    keys (a cache holding earlier steps) with no mask cannot be told from a fresh sequence
    here: refused rather than attended upper-left.

    Raises:
        ValueError: several queries against a longer key sequence, without a mask.
    """
    q, k = query.shape[2], key.shape[2]
    if attention_mask is None and q not in (1, k):
        raise ValueError(
            f"{CAUSAL_SDPA}: {q} queries against {k} cached keys need an attention mask"
        )
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(CAUSAL_SDPA, causal_sdpa_attention)


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour resize of uint8 `(..., H, W, C)` to `(..., size, size, 3)` on its device.

    The same pixels as `ldm_model.tokenizer.resize_images` (source row `i * H // size`, column
    `j * W // size`, channel `k % C`): columns and channels first (the small array), then rows.
    """
    h, w, c = frames.shape[-3:]
    if (h, w, c) == (size, size, 3):
        return frames
    dev = frames.device
    out = frames.index_select(-2, torch.arange(size, device=dev) * w // size)
    if c != 3:
        out = out.index_select(-1, torch.arange(3, device=dev) % c)
    return out.index_select(-3, torch.arange(size, device=dev) * h // size)


class ImageEncoder(nn.Module):
    """Nature-CNN-style encoder of a 64x64x3 uint8 image into `image_dim` features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        side = ((config.image_size - 8) // 4 + 1 - 4) // 2 + 1 - 2
        self.proj = nn.Linear(64 * side * side, config.image_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(N, H, W, 3)` -> `(N, image_dim)`."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        return self.proj(self.net(x))


@dataclass
class ModelOutput:
    """Logits over classes for every action dim, and the backbone's cache when asked."""

    #: (B, T, act_dims, n_bins)
    logits: torch.Tensor
    past_key_values: Any = None


@dataclass
class LossOutput:
    """The training objective with what the trainer logs beside it."""

    loss: torch.Tensor
    #: Share of real (step, dim) pairs where the masked argmax equals the target class.
    accuracy: torch.Tensor
    #: Number of real (step, dim) pairs the loss averages over.
    count: torch.Tensor


class LDM(nn.Module):
    """Decoder-only transformer policy over transitions of any supported env."""

    def __init__(self, config: ModelConfig, *, attention: str = "sdpa") -> None:
        """`attention`: the backbone's implementation, one of `ATTENTION_IMPLEMENTATIONS`.

        Not part of the weights: a checkpoint loads under any of them.
        """
        super().__init__()
        if attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attention implementation {attention!r}; give one of "
                f"{', '.join(ATTENTION_IMPLEMENTATIONS)}"
            )
        self.config = config
        c = config
        #: rows [0, n_bins) embed continuous bins, rows [n_bins, n_bins + discrete_vocab) discrete
        #: categories: two tables in one matrix so a dim's lookup is one gather.
        self.values = nn.Embedding(c.n_bins + c.discrete_vocab, c.token_dim)
        self.done = nn.Embedding(2, c.token_dim)
        self.image_encoder = ImageEncoder(c)
        merged = (c.obs_dims + c.act_dims + 2) * c.token_dim + c.image_dim
        self.merge = nn.Linear(merged, c.hidden_size)
        self.backbone = LlamaModel(
            LlamaConfig(
                vocab_size=1,  # fed with inputs_embeds; its 1-row token table is unused
                hidden_size=c.hidden_size,
                intermediate_size=c.intermediate_size,
                num_hidden_layers=c.num_layers,
                num_attention_heads=c.num_heads,
                num_key_value_heads=c.num_kv_heads or c.num_heads,
                max_position_embeddings=c.context,
                rms_norm_eps=c.rms_norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                attention_dropout=0.0,
                use_cache=False,
                pad_token_id=None,
                bos_token_id=None,
                eos_token_id=None,
                # PreTrainedConfig takes it; the strict dataclass signature does not list it
                attn_implementation=attention,  # type: ignore[call-arg]
            )
        )
        self.decoder = nn.Linear(c.hidden_size, c.act_dims * c.n_bins)

    # -- parameters -----------------------------------------------------------------------------

    def num_parameters(self) -> int:
        """Trainable parameters, the backbone's unused 1-row token table excluded."""
        unused = self.backbone.embed_tokens.weight.numel()
        return sum(p.numel() for p in self.parameters() if p.requires_grad) - unused

    # -- tokens ---------------------------------------------------------------------------------

    def value_ids(self, values: torch.Tensor, discrete: torch.Tensor) -> torch.Tensor:
        """Row of `self.values` for each raw value: its bin, or n_bins + its category."""
        c = self.config
        category = values.round().long().clamp(0, c.discrete_vocab - 1) + c.n_bins
        return torch.where(discrete, category, value_bins(values, c.n_bins))

    def target_classes(self, values: torch.Tensor, discrete: torch.Tensor) -> torch.Tensor:
        """Class per action dim: the bin of a continuous value, the category of a discrete one."""
        c = self.config
        category = values.round().long().clamp(0, c.n_bins - 1)
        return torch.where(discrete, category, value_bins(values, c.n_bins))

    def embed(self, batch: Batch) -> torch.Tensor:
        """One meta-token per transition: `(B, T, hidden_size)`."""
        c = self.config
        b, t = batch.shape
        dtype = self.merge.weight.dtype
        obs_ids = self.value_ids(batch.obs, batch.obs_discrete[:, None, :].expand(b, t, -1))
        obs = self.values(obs_ids) * batch.obs_mask[:, None, :, None].to(dtype)
        prev = batch.prev_valid[:, :, None].to(dtype)  # (B, T, 1)
        act_ids = self.value_ids(batch.prev_action, batch.act_discrete[:, None, :].expand(b, t, -1))
        act = self.values(act_ids) * (batch.act_mask[:, None, :, None].to(dtype) * prev[..., None])
        reward = self.values(value_bins(batch.prev_reward, c.n_bins)) * prev
        done = self.done(batch.prev_done.long()) * prev
        image = self.embed_images(batch, dtype)
        merged = torch.cat(
            [obs.reshape(b, t, -1), act.reshape(b, t, -1), reward, done, image], dim=-1
        )
        return self.merge(merged)

    def embed_images(self, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
        """Image features `(B, T, image_dim)`, zero for windows without an image.

        The frames of the image windows (`batch.image`'s rows, and the `image_groups` resized
        here) go through the encoder in one call, in window order: the features equal those of
        the same images resized on the host. A batch without image windows does not run the
        encoder (under DDP, the trainer's `find_unused_parameters` covers such a rank).
        """
        c = self.config
        b, t = batch.shape
        image = torch.zeros(b, t, c.image_dim, dtype=dtype, device=batch.obs.device)
        # (windows, frames at image_size) of each source of images
        sources: list[tuple[torch.Tensor, torch.Tensor]] = []
        if batch.image is not None and batch.has_image is not None:
            full = batch.has_image  # windows whose image is in `batch.image`
            if batch.image_groups:
                full = full.clone()
                for g in batch.image_groups:
                    full[g.windows] = False
            if bool(full.any()):
                rows = full.nonzero(as_tuple=True)[0]
                sources.append((rows, batch.image[rows]))
        for g in batch.image_groups:
            sources.append((g.windows, resize_frames(g.frames, c.image_size)))
        if not sources:
            return image
        if len(sources) == 1:
            rows, frames = sources[0]
        else:
            rows = torch.cat([w for w, _ in sources]).sort().values
            frames = torch.empty(
                (len(rows), *sources[0][1].shape[1:]), dtype=torch.uint8, device=image.device
            )
            for windows, part in sources:
                frames[torch.searchsorted(rows, windows)] = part
        features = self.image_encoder(frames.reshape(-1, *frames.shape[2:]))
        image[rows] = features.reshape(len(rows), t, -1).to(dtype)
        return image

    # -- forward --------------------------------------------------------------------------------

    def forward(
        self,
        batch: Batch,
        *,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        """Logits for every transition of the batch (causal: step t sees steps <= t).

        `past_key_values`, `attention_mask` (B, past + T) and `position_ids` are handed to the
        Llama backbone unchanged.
        """
        out = self.backbone(
            inputs_embeds=self.embed(batch),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        return ModelOutput(
            logits=self.decode(out.last_hidden_state), past_key_values=out.past_key_values
        )

    def decode(self, hidden: torch.Tensor, dims: torch.Tensor | int | None = None) -> torch.Tensor:
        """Logits `(..., len(dims), n_bins)` of the action dims `dims` (all 28 when None).

        `dims` may be an index tensor or an int `k` for the first `k` dims. Decoding only the
        dims that are real somewhere in the batch matters: the decoder (28 x n_bins outputs) is
        the largest layer of a small model, and most envs have one to a few action dims.
        """
        c = self.config
        weight = self.decoder.weight.view(c.act_dims, c.n_bins, -1)
        bias = self.decoder.bias.view(c.act_dims, c.n_bins)
        if dims is None:
            dims = c.act_dims
        if isinstance(dims, int):
            weight, bias = weight[:dims], bias[:dims]
        else:
            weight, bias = weight[dims], bias[dims]
        logits = F.linear(hidden, weight.reshape(-1, weight.shape[-1]), bias.reshape(-1))
        return logits.view(*hidden.shape[:-1], weight.shape[0], c.n_bins)

    def forbidden(self, act_low: torch.Tensor, act_high: torch.Tensor) -> torch.Tensor:
        """Classes outside each dim's allowed range: bool `(*act_low.shape, n_bins)`."""
        classes = torch.arange(self.config.n_bins, device=act_low.device)
        return (classes < act_low[..., None]) | (classes > act_high[..., None])

    def act_classes(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Deterministic argmax over the allowed classes: int64 `(B, T, dims)`.

        `logits` may cover the first `dims <= act_dims` action dims only.
        """
        k = logits.shape[-2]
        banned = self.forbidden(batch.act_low[:, None, :k], batch.act_high[:, None, :k])
        return logits.masked_fill(banned, float("-inf")).argmax(dim=-1)

    def loss_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass to `(ce_sum, hits, count)` over real (step, action dim) pairs.

        Sums rather than a mean so that data-parallel ranks can divide by the global count
        (the trainer does): the update then equals one process's on the whole batch. `hits`
        counts the pairs where the masked argmax equals the target class.
        """
        if batch.target is None:
            raise ValueError("the batch has no target actions: cannot compute a loss")
        b, t = batch.shape
        dims = batch.act_mask.any(dim=0).nonzero().squeeze(1)  # real somewhere in the batch
        hidden = self.backbone(inputs_embeds=self.embed(batch), use_cache=False).last_hidden_state
        logits = self.decode(hidden, dims).float()
        discrete = batch.act_discrete[:, None, dims].expand(b, t, -1)
        target = self.target_classes(batch.target[:, :, dims], discrete)
        weight = batch.act_mask[:, None, dims].expand(b, t, -1)
        if batch.loss_mask is not None:
            weight = weight & batch.loss_mask[:, :, None]
        w = weight.float()
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
        ).view(b, t, -1)
        with torch.no_grad():
            banned = self.forbidden(batch.act_low[:, None, dims], batch.act_high[:, None, dims])
            pred = logits.detach().masked_fill(banned, float("-inf")).argmax(dim=-1)
            hits = ((pred == target).float() * w).sum()
        return (ce * w).sum(), hits, w.sum()

    def loss(self, batch: Batch) -> LossOutput:
        """Cross-entropy on the reference actions over real action dims and real steps only."""
        ce_sum, hits, count = self.loss_terms(batch)
        denom = count.clamp_min(1.0)
        return LossOutput(loss=ce_sum / denom, accuracy=hits / denom, count=count)
