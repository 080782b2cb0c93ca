"""The policy's KV cache: a ring of `context` slots per layer, and the attention that reads it.

`LDMPolicy` (`ldm_model.policy`) steps every env one token at a time; this module is the
storage those steps write to and the attention over it, apart from the policy's bookkeeping
(per-env masks, positions, cache modes). Design choices (DESIGN.md, "Inference"):

* **A ring buffer, not `DynamicCache`.** `DynamicCache.update` appends by `torch.cat`, which
  copies the whole cache of every layer at every step, and dropping the oldest entry once the
  context is full is one more copy. Both are O(context) memory traffic per step and per layer,
  which is what made a context of 2048 cost several times a context of 64. Here each layer
  (`RingLayer`, a transformers `CacheLayerMixin`) preallocates `context` slots of keys and
  values for every env once and writes the new step's into the slot of the oldest one, in
  place. Attention is a sum over keys, so their order in the buffer does not matter; which
  slots an env may see is said by the attention mask alone.
* **The window slides by one transition per step, at no copy cost.** Once the ring is full,
  every step overwrites exactly the oldest slot: the model always sees the last `context`
  transitions (never fewer, as it would when dropping a chunk at a time, and never more, so the
  cache never holds more than `context` transitions). Dropping a chunk of `k` with a contiguous
  cache would cost one O(context) copy every `k` steps and leave the window between
  `context - k` and `context` long; the ring has neither cost. As with any sliding KV cache
  (Transformer-XL, Mistral's rolling buffer), the keys of layers above the first were computed
  when older transitions were still visible, so they carry some of what slid out: the result
  is not a forward over the last `context` transitions alone (it is, exactly, for one layer:
  a test checks it), and recomputing that window at every step is what `tools/bench_inference.py`
  times as the naive baseline.
* **A decoding attention over a transposed ring.** With one query per env, attention is two
  batched matrix-vector products over the whole cache: memory-bound, the one cost that grows
  with the context (at 16 envs x 2048 slots, the tiny model streams 32 MB of keys and values
  per step). The ring stores keys and values as `(B, heads, head_dim, context)` and hands the
  attention the usual `(..., context, head_dim)` views; `ring_decode_attention` (registered
  with transformers' `AttentionInterface`, switched on the backbone's config for the step and
  restored after, so training keeps its own implementation) then reads them by contiguous
  rows, and skips the per-score work eager attention does (scaling, mask add, a second
  buffer for the softmax). Measured on CPU for one layer at 16 envs x 2048 slots x 4 heads x
  16 dims: about 1.2-1.5 ms against 2.2 ms for torch's SDPA (its CPU flash kernel) on the
  usual layout, and 8 ms for SDPA on the transposed one (it copies the cache).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["RING_ATTENTION", "RingCache", "RingLayer", "ring_decode_attention"]


#: Name under which `ring_decode_attention` is registered with transformers.
RING_ATTENTION = "ldm_ring_decode"


def ring_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one query per env over a ring's slots (transformers attention interface).

    Eager attention's math, with the memory traffic of a decoding step in mind: the scaling
    goes on the query (heads x head_dim values, not heads x context scores), the mask is added
    in place and skipped when None (no slot hidden: the steady state), the softmax runs in
    place, and with grouped KV heads the query heads of a group are stacked against their
    shared keys instead of `repeat_kv` copying the whole cache. Both products read the ring's
    transposed storage by contiguous rows (see `RingLayer.lazy_initialization`).

    Args:
        module: the calling attention module (unused: its settings come as arguments).
        query: `(B, heads, 1, head_dim)`, RoPE applied.
        key: `(B, kv_heads, slots, head_dim)`, a view of the ring.
        value: `(B, kv_heads, slots, head_dim)`, a view of the ring.
        attention_mask: additive `(B, 1, 1, slots)`, or None when every slot is visible.
        scaling: the score scale, `head_dim ** -0.5`.
        dropout: must be 0 (inference).
        **kwargs: the rest of transformers' attention arguments (unused).
    """
    if dropout:
        raise ValueError("ring_decode_attention is for inference: dropout must be 0")
    b, h, q, d = query.shape
    kv_heads = key.shape[1]
    grouped = (query * scaling).reshape(b, kv_heads, (h // kv_heads) * q, d)
    scores = torch.matmul(grouped, key.transpose(2, 3))  # (B, kv_heads, group * q, slots)
    if attention_mask is not None:
        scores.add_(attention_mask)
    # softmax in place: no second (B, heads, slots) buffer to allocate and fault in each layer
    scores = scores.float()
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    scores.div_(scores.sum(dim=-1, keepdim=True))
    out = torch.matmul(scores.to(query.dtype), value).reshape(b, h, q, -1)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(RING_ATTENTION, ring_decode_attention)


class _Ring:
    """Write position shared by all layers of a `RingCache` (they all store the same steps)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: slot the current step writes into
        self.slot = 0
        #: slots holding a step (the first `filled` ones, as the ring fills in order)
        self.filled = 0


class RingLayer(CacheLayerMixin):
    """One layer's keys and values in a fixed ring of `capacity` slots, written in place.

    Only single-token steps (`T = 1`) go through `update`: that is all the policy does, and a
    longer update would have to wrap around the ring's end. `fill` rewrites the first slots at
    once (the refill of the `exact` and `chunked` modes).
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, ring: _Ring) -> None:
        super().__init__()
        self.ring = ring

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate the ring, stored transposed: `(B, heads, head_dim, capacity)`.

        `self.keys` and `self.values` are the usual `(B, heads, capacity, head_dim)` views of
        that storage, so both products of eager attention (`query @ keys^T`, `weights @
        values`) run over contiguous rows of `capacity` values: matrix-vector products that
        stream the cache (see the module docstring).
        """
        b, h, _, dk = key_states.shape
        cap = self.ring.capacity
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros((b, h, dk, cap)).transpose(2, 3)
        self.values = value_states.new_zeros((b, h, value_states.shape[-1], cap)).transpose(2, 3)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's keys/values into the current slot; return the filled slots (views)."""
        if key_states.shape[-2] != 1:
            raise ValueError(f"a RingLayer takes one token per step, got {key_states.shape[-2]}")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None
        slot, n = self.ring.slot, self.ring.filled
        self.keys[:, :, slot] = key_states[:, :, 0]
        self.values[:, :, slot] = value_states[:, :, 0]
        return self.keys[:, :, :n], self.values[:, :, :n]

    def fill(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Write `(B, heads, T, head_dim)` keys and values into slots `[0, T)`."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None
        t = key_states.shape[-2]
        self.keys[:, :, :t] = key_states
        self.values[:, :, :t] = value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.ring.filled, 0

    def get_seq_length(self) -> int:
        return self.ring.filled

    def get_max_length(self) -> int:
        return self.ring.capacity

    def reset(self) -> None:
        """Nothing to clear: the policy's mask hides slots that no longer belong to a context."""


class RingCache(Cache):
    """A transformers `Cache` of `RingLayer`s sharing one write position."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        self.ring = _Ring(capacity)
        super().__init__(layers=[RingLayer(self.ring) for _ in range(num_layers)])

    @property
    def capacity(self) -> int:
        return self.ring.capacity
