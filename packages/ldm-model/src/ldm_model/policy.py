"""Batched, KV-cached inference: the LDM acting in many envs at once, one step at a time.

`LDMPolicy` keeps one transformers `Cache` for all `num_envs` envs. Every `act()` call is one
forward of `T = 1` meta-token per env through the Llama backbone; the keys and values of the
earlier steps are read from the cache, so a step costs one token of compute plus attention over
at most `context` cached tokens, however long the rollout has run.

Design choices (DESIGN.md, "Inference"):

* **A ring KV cache, written in place, read by a decoding attention** (`ldm_model.ring_cache`):
  the window slides by one transition per step at no copy cost, and each step is two batched
  matrix-vector products over the cache.
* **Per-env state through the mask and the positions, shared storage.** All envs write the same
  slot at the same step. `reset(envs=[i])` moves env `i`'s start to the current step: the 4D
  additive attention mask (built here and handed to the backbone, which passes a 4D mask
  through unchanged) hides every older slot from env `i`, while the others keep theirs.
  `position_ids` are per env, counted from that env's reset, so an env that was reset computes
  exactly what a fresh policy would (RoPE makes attention depend only on position differences,
  but same positions also mean the same rounding).
* **Bounded positions.** The context is kept across episodes, so a rollout's step count grows
  without limit, and RoPE angles of large positions lose float32 precision. When an env's next
  position reaches `2 * context`, its cached keys are rotated back by `context` positions (RoPE
  rotations compose: R(p - d) = R(-d) R(p)) and its position counter drops by `context`. That
  is one O(context) pass over the env's keys every `context` steps, O(1) per step on average,
  and positions stay in [0, 2 * context).
* **Only the real action dims are decoded.** The decoder's `28 x n_bins` outputs are the
  largest layer of a small model; the step computes the first `act_dims` dims (the widest
  action space of the batch) and masks and argmaxes those.

Long horizons: three cache modes (`LDMPolicy(cache=...)`). Training windows start at position 0
and every transition of a window sees only the window's earlier ones, so the model was trained on
exactly "a forward over the last `context` transitions". Episodes run far past the context
(CartPole 500 steps, LunarLander 1,000, the context is kept across episodes), and once the
window slides the modes differ:

* `"ring"` (default): the ring (`ldm_model.ring_cache`). Per step O(1) compute plus one pass
  over the cache. Past the context it is not the window's forward: layer l's cached keys and
  values were computed when their transition still saw up to `context - 1` earlier ones, so
  the receptive field grows to `num_layers * (context - 1)` transitions, an input training
  never produced. (RoPE is not a difference: attention sees only position differences, all
  below `context`.)
* `"exact"`: every step equals a from-scratch forward over the last `context` transitions
  (positions 0 .. context-1, as in training): the cache is re-filled at every step from the
  kept meta-tokens of the last `context - 1` transitions (one prefill through the backbone),
  then the step decodes against it. O(context) tokens and O(context^2) attention per step.
* `"chunked"` (stride S = `refresh`): exact windows, recomputed every S steps. The cache is
  appended to without sliding; when it is full, it is re-filled from the last `context - S`
  transitions, and the next S steps append to it. Every step is then exactly a from-scratch
  forward over its last L transitions, `context - S < L <= context`, never an input unlike
  training's. The refill costs a prefill of `context - S` tokens every S steps: on average
  about `(context - S) / S` token-forwards per step, paid in one step (a latency spike).
  `"exact"` is `"chunked"` with S = 1.

Within the first `context` steps after a reset (nothing has slid out yet) the three modes run
the same code and give the same logits, bit for bit (test). Measured on real envs with a
trained model (tools/bench_long_horizon.py, figures in packages/ldm-model/README.md, "Long
horizons"): no mode scored measurably better, the ring is the cheapest at the trained context
and has no refill spikes, so it stays the default; `exact` fails the latency bar (64x).

Evaluation protocol (paper): per env, two fresh rollouts of 10 episodes; `reset()` at the start
of each rollout, and never at episode ends: a `done` passed to `act()` is an input of the next
meta-token (the model sees the episode boundary), not a cache reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers.cache_utils import CacheLayerMixin, DynamicCache
from transformers.models.llama.modeling_llama import rotate_half

from ldm_model.batch import Batch
from ldm_model.model import LDM
from ldm_model.ring_cache import RING_ATTENTION, RingCache, RingLayer
from ldm_model.tokenizer import (
    ACT_DIMS,
    CODEC_TABLES,
    IMAGE_SIZE,
    OBS_DIMS,
    SpaceCodec,
    SpaceModel,
    bin_values,
)

__all__ = ["CACHE_MODES", "CacheMode", "LDMPolicy", "RingCache", "RingLayer"]

#: How the context slides once it is full (module docstring, "Long horizons").
CacheMode = Literal["ring", "exact", "chunked"]
CACHE_MODES: tuple[str, ...] = ("ring", "exact", "chunked")


class LDMPolicy:
    """The LDM as a batched policy: `reset()`, then `act(obs, reward, done)` once per env step.

    Args:
        model: the network (left in whatever train/eval mode it is in; stepping runs without
            gradients).
        codec: one `SpaceCodec` shared by all envs, or one per env (envs of different spaces
            can be batched together; actions are decoded per group of envs sharing a codec).
        num_envs: the batch of envs stepped together.
        context: the most transitions each env's context holds (default: the model's trained
            context). A longer one runs, but asks the model for distances it never saw.
        device: where to run; None keeps the model's device, anything else moves the model.
        cache: how the context slides once full (module docstring, "Long horizons"): `ring`
            (slide in place; past the context, not a forward over the window), `exact` (a
            forward over the last `context` transitions at every step), `chunked` (exact
            windows of `context - refresh + 1` to `context` transitions, refilled every
            `refresh` steps).
        refresh: `chunked` only: steps between refills, 1 to `context` (default
            `context // 4`). `exact` is `chunked` with `refresh = 1`.
    """

    def __init__(
        self,
        model: LDM,
        codec: SpaceCodec | Sequence[SpaceCodec],
        num_envs: int,
        *,
        context: int | None = None,
        device: str | torch.device | None = None,
        cache: CacheMode = "ring",
        refresh: int | None = None,
    ) -> None:
        if num_envs <= 0:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        codecs = [codec] * num_envs if isinstance(codec, SpaceCodec) else list(codec)
        if len(codecs) != num_envs:
            raise ValueError(f"got {len(codecs)} codecs for {num_envs} envs")
        if device is not None:
            model.to(device)
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = model.merge.weight.dtype
        self.num_envs = num_envs
        self.context = int(context or model.config.context)
        if self.context <= 0:
            raise ValueError(f"context must be positive, got {self.context}")
        if cache not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {cache!r}; known: {', '.join(CACHE_MODES)}")
        if refresh is not None and cache != "chunked":
            raise ValueError(f"refresh is a setting of cache='chunked', not of {cache!r}")
        self.cache_mode: CacheMode = cache
        #: steps between refills of the cache (`exact`: 1; `ring`: 0, it never refills)
        self.refresh = {"ring": 0, "exact": 1}.get(cache, refresh or max(1, self.context // 4))
        if not 0 <= self.refresh <= self.context:
            raise ValueError(f"refresh must be in [1, context={self.context}], got {refresh}")
        self.codecs = codecs
        # envs sharing a codec object are tokenized and decoded together
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(codecs):
            groups.setdefault(id(c), []).append(i)
        self._groups = [(codecs[idx[0]], np.asarray(idx)) for idx in groups.values()]
        self._values = bin_values(model.config.n_bins).numpy()
        self._tables = self._env_tables()
        #: action dims decoded: those of the widest action space in the batch (see `_forward`)
        self.act_dims = max(c.act_dims for c in codecs)
        #: bool (N, act_dims, n_bins): classes each env's action space forbids. The mask of
        #: `LDM.act_classes` (classes outside [act_low, act_high]), built once, not every step.
        low, high = self._tables["act_low"], self._tables["act_high"]
        self._forbidden = model.forbidden(low, high)[:, : self.act_dims]
        self._images = any(c.image_shape is not None for c in codecs)
        self.cache = RingCache(model.config.num_layers, self.context)
        inv_freq = model.backbone.rotary_emb.inv_freq
        self._inv_freq = inv_freq.detach().to(self.device, torch.float64)
        #: float `(num_envs, act_dims, n_bins)`: the logits of the last step, before masking
        self.last_logits: torch.Tensor | None = None
        self._prev_action = np.zeros((num_envs, ACT_DIMS), np.float32)
        self._prev_valid = np.zeros(num_envs, bool)
        self._slot_step = torch.full((self.context,), -1, dtype=torch.long, device=self.device)
        self._start = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._base = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._t = 0
        #: `exact`/`chunked`: the meta-tokens of the last `context` steps, slot = step % context
        #: (allocated at the first step), what a refill recomputes the cache from
        self._history: torch.Tensor | None = None
        self.reset()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        observation_space: SpaceModel | Sequence[SpaceModel],
        action_space: SpaceModel | Sequence[SpaceModel],
        num_envs: int,
        *,
        context: int | None = None,
        device: str | torch.device = "cpu",
        cache: CacheMode = "ring",
        refresh: int | None = None,
    ) -> LDMPolicy:
        """A policy over a saved model, in eval mode, for `num_envs` envs of the given spaces.

        `path` is anything `ldm_model.training.checkpoint.load_checkpoint` opens (a step
        folder, or a run folder: its latest checkpoint); the files' hashes are verified.
        Spaces may be one pair for all envs or one per env (envs with equal spaces share a
        `SpaceCodec`).
        """
        from ldm_model.training.checkpoint import load_model

        model, _ = load_model(path, device=device)
        obs_spaces = _per_env(observation_space, num_envs, "observation_space")
        act_spaces = _per_env(action_space, num_envs, "action_space")
        codecs: list[SpaceCodec] = []
        made: list[SpaceCodec] = []
        for obs, act in zip(obs_spaces, act_spaces, strict=True):
            same = next(
                (c for c in made if c.observation_space == obs and c.action_space == act), None
            )
            if same is None:
                same = SpaceCodec(obs, act, n_bins=model.config.n_bins)
                made.append(same)
            codecs.append(same)
        return cls(model, codecs, num_envs, context=context, cache=cache, refresh=refresh)

    def _env_tables(self) -> dict[str, torch.Tensor]:
        """Per-env rows of the codec tables, as the `(B, ...)` fields of a `Batch`."""
        stack = {name: np.stack([getattr(c, name) for c in self.codecs]) for name in CODEC_TABLES}
        tables = {k: torch.from_numpy(v).to(self.device) for k, v in stack.items()}
        tables["has_image"] = torch.tensor(
            [c.image_shape is not None for c in self.codecs], device=self.device
        )
        return tables

    # -- state ----------------------------------------------------------------------------------

    @property
    def cache_length(self) -> int:
        """Transitions the cache holds now (all envs share the slots): at most `context`."""
        return self.cache.ring.filled

    @property
    def context_lengths(self) -> np.ndarray:
        """int64 `(num_envs,)`: past transitions each env's next step attends to.

        At most `context - 1`: the step itself takes the last slot. In `exact`/`chunked` mode
        with a full cache, the next step first refills it: at most `context - refresh`.
        """
        seen = self._t - self._start.cpu().numpy()
        if self.refresh and self.cache.ring.filled == self.context:
            seen = np.minimum(seen, self.context - self.refresh)
        return np.minimum(seen, self.context - 1)

    def reset(self, envs: Sequence[int] | np.ndarray | None = None) -> None:
        """Empty the context of every env (None) or of the given env indices only.

        A full reset also rewinds the ring, so a fresh rollout attends over the filled slots
        only; a partial one hides the env's past slots through the mask and leaves the others'
        contexts untouched.
        """
        if envs is None:
            self._t = 0
            self.cache.ring.slot = 0
            self.cache.ring.filled = 0
            self._slot_step.fill_(-1)
            self._start.zero_()
            self._base.zero_()
            self._prev_valid[:] = False
            self._prev_action[:] = 0.0
            self.last_logits = None
            return
        idx = np.unique(np.asarray(envs, dtype=np.int64).reshape(-1))
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_envs):
            raise IndexError(f"env indices {idx.tolist()} outside 0..{self.num_envs - 1}")
        rows = torch.from_numpy(idx).to(self.device)
        self._start[rows] = self._t
        self._base[rows] = self._t
        self._prev_valid[idx] = False
        self._prev_action[idx] = 0.0

    # -- stepping -------------------------------------------------------------------------------

    def act(
        self,
        obs: np.ndarray | Sequence[np.ndarray],
        reward: np.ndarray | Sequence[float] | None = None,
        done: np.ndarray | Sequence[bool] | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """The deterministic action of every env for observation `obs`, then remember it.

        Args:
            obs: observation of the current step, indexable by env (`(num_envs, *shape)`).
            reward: reward of the previous step per env (ignored right after a reset).
            done: whether the previous step ended an episode (terminated or truncated). With
                same-step autoreset `obs` is then already the new episode's first observation;
                the context is kept across the boundary.

        Returns:
            `(num_envs, *action_shape)` in the action space's dtype when all envs share one
            action space layout, else a list with one action per env.
        """
        batch = self._batch(obs, reward, done)
        with torch.no_grad():
            step_logits = self._forward(batch)
            classes = (
                step_logits.masked_fill(self._forbidden, float("-inf")).argmax(-1).cpu().numpy()
            )
        self.last_logits = step_logits
        self._prev_valid[:] = True
        decoded = []
        for codec, idx in self._groups:
            actions = codec.decode_action(classes[idx], self._values)
            self._prev_action[idx] = codec.flat_action(actions)
            decoded.append(actions)
        if len(self._groups) == 1:
            return decoded[0]
        per_env: list[np.ndarray] = [np.empty(0)] * self.num_envs
        for (_, idx), actions in zip(self._groups, decoded, strict=True):
            for row, i in enumerate(idx):
                per_env[i] = actions[row]
        if len({(a.shape, a.dtype) for a in per_env}) == 1:
            return np.stack(per_env)
        return per_env

    def _batch(
        self,
        obs: np.ndarray | Sequence[np.ndarray],
        reward: np.ndarray | Sequence[float] | None,
        done: np.ndarray | Sequence[bool] | None,
    ) -> Batch:
        """The `T = 1` batch of this step: observation t with action, reward and done of t-1."""
        n = self.num_envs
        if len(obs) != n:
            raise ValueError(f"got observations for {len(obs)} envs, the policy steps {n}")
        flat = np.zeros((n, OBS_DIMS), np.float32)
        image = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8) if self._images else None
        for codec, idx in self._groups:
            rows = (
                obs[idx]
                if isinstance(obs, np.ndarray) and len(self._groups) == 1
                else np.stack([np.asarray(obs[i]) for i in idx])
            )
            flat[idx] = codec.flat_obs(rows)
            if image is not None and (pixels := codec.image(rows)) is not None:
                image[idx] = pixels
        valid = self._prev_valid.copy()
        rew = np.zeros(n, np.float32) if reward is None else np.asarray(reward, np.float32)
        dn = np.zeros(n, bool) if done is None else np.asarray(done, bool)
        if rew.shape != (n,) or dn.shape != (n,):
            raise ValueError(f"reward and done need shape ({n},), got {rew.shape}, {dn.shape}")
        rew = np.where(valid, rew, 0.0).astype(np.float32)
        dn = dn & valid
        dev = self.device
        t = self._tables
        return Batch(
            obs=torch.from_numpy(flat).to(dev)[:, None],
            obs_mask=t["obs_mask"],
            obs_discrete=t["obs_discrete"],
            prev_action=torch.from_numpy(self._prev_action).to(dev)[:, None],
            prev_reward=torch.from_numpy(rew).to(dev)[:, None],
            prev_done=torch.from_numpy(dn).to(dev)[:, None],
            prev_valid=torch.from_numpy(valid).to(dev)[:, None],
            act_mask=t["act_mask"],
            act_discrete=t["act_discrete"],
            act_low=t["act_low"],
            act_high=t["act_high"],
            image=None if image is None else torch.from_numpy(image).to(dev)[:, None],
            has_image=t["has_image"] if image is not None else None,
        )

    def _forward(self, batch: Batch) -> torch.Tensor:
        """One step of every env through the model: logits `(N, act_dims, n_bins)`.

        The same computation as `LDM.forward` (embed, backbone, decoder; a test holds them
        equal), except that the decoder computes the logits of the first `self.act_dims`
        action dims only: the other dims are padding for every env of the batch, and the
        decoder (28 x n_bins outputs) is the largest layer of a small model.
        """
        model = self.model
        hidden = self._backbone(model.embed(batch))
        return model.decode(hidden, self.act_dims)

    def _backbone(self, embeds: torch.Tensor) -> torch.Tensor:
        """Advance the ring by one step and run the backbone on it: hidden `(N, hidden)`."""
        ring, cap = self.cache.ring, self.context
        if self.refresh == 0:  # ring: overwrite the oldest slot
            self._rebase()
            ring.slot = self._t % cap
            ring.filled = min(self._t + 1, cap)
        else:  # exact / chunked: append; once full, refill from the last context - refresh
            if ring.filled == cap:
                self._refill()
            ring.slot = ring.filled
            ring.filled += 1
            if self._history is None:
                self._history = embeds.new_zeros((self.num_envs, cap, embeds.shape[-1]))
            self._history[:, self._t % cap] = embeds[:, 0]
        self._slot_step[ring.slot] = self._t
        visible = self._slot_step[None, : ring.filled] >= self._start[:, None]  # (N, filled)
        mask = None
        if not bool(visible.all()):  # additive, 4D: the backbone passes a 4D mask through
            zero = torch.zeros((), dtype=self.dtype, device=self.device)
            mask = torch.where(visible, zero, torch.finfo(self.dtype).min)[:, None, None, :]
        config = self.model.backbone.config
        trained_with = config._attn_implementation
        config._attn_implementation = RING_ATTENTION  # this step only (see `ring_cache`)
        try:
            out = self.model.backbone(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=(self._t - self._base)[:, None],
                past_key_values=self.cache,
                use_cache=True,
            )
        finally:
            config._attn_implementation = trained_with
        self._t += 1
        return out.last_hidden_state[:, 0]

    def _refill(self) -> None:
        """Recompute the cache from scratch over the last `context - refresh` transitions.

        `exact` and `chunked` modes, when the cache is full. Their meta-tokens (kept in
        `_history`) go through the backbone as one causal sequence per env, positions from 0 at
        the window's first transition (as in training), and the keys and values land in slots
        `[0, K)`. An env reset inside the window starts its window at its reset: earlier slots
        are hidden from it, and its positions count from there. The steps that follow append
        to the cache, each then a forward over exactly its last transitions.
        """
        ring, cap = self.cache.ring, self.context
        k, t = cap - self.refresh, self._t
        self._slot_step.fill_(-1)
        ring.slot, ring.filled = 0, k
        # each env's window: from its reset or the refill's first step, whichever is later
        self._start.clamp_(min=t - k)
        self._base.copy_(self._start)
        if k == 0:
            return
        assert self._history is not None
        steps = torch.arange(t - k, t, device=self.device)
        self._slot_step[:k] = steps
        embeds = self._history[:, steps % cap]  # (N, K, hidden), oldest first
        visible = steps[None] >= self._start[:, None]  # (N, K): slots of each env's window
        mask = None  # every env's window is all K: the plain causal prefill (SDPA's is_causal)
        if not bool(visible.all()):  # some env was reset inside: a 4D mask, passed through
            causal = torch.ones(k, k, dtype=torch.bool, device=self.device).tril()
            eye = torch.eye(k, dtype=torch.bool, device=self.device)
            # a hidden row attends to itself (no all-masked softmax); no visible row sees it
            allowed = (causal & visible[:, None, :]) | eye
            zero = torch.zeros((), dtype=self.dtype, device=self.device)
            mask = torch.where(allowed, zero, torch.finfo(self.dtype).min)[:, None]  # (N,1,K,K)
        positions = (steps[None] - self._base[:, None]).clamp_(min=0)
        # the trained attention implementation (K queries, not one) into an empty DynamicCache,
        # then its keys and values are copied into the ring: O(K) per layer beside the
        # prefill's O(K^2)
        prefill = DynamicCache()
        self.model.backbone(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=prefill,
            use_cache=True,
        )
        for ring_layer, layer in zip(self.cache.layers, prefill.layers, strict=True):
            assert isinstance(ring_layer, RingLayer)
            assert isinstance(layer, CacheLayerMixin)
            assert layer.keys is not None and layer.values is not None
            ring_layer.fill(layer.keys, layer.values)

    def _rebase(self) -> None:
        """Rotate back by `context` the cached keys of envs whose next position hits 2 * context.

        Keeps every RoPE angle small (float32-exact) in rollouts of any length; see the module
        docstring. Cached keys are stored already rotated by their position (transformers
        applies RoPE before the cache update), and R(-d) R(p) = R(p - d).
        """
        cap = self.context
        due = (self._t - self._base) >= 2 * cap
        if not bool(due.any()):
            return
        rows = due.nonzero(as_tuple=True)[0]
        angle = -float(cap) * self._inv_freq
        emb = torch.cat([angle, angle])
        for layer in self.cache.layers:
            assert isinstance(layer, RingLayer)
            if not layer.is_initialized or layer.keys is None:
                continue
            cos = emb.cos().to(layer.keys.dtype)
            sin = emb.sin().to(layer.keys.dtype)
            k = layer.keys[rows]
            layer.keys[rows] = k * cos + rotate_half(k) * sin
        self._base[rows] += cap


def _per_env(space: Any, num_envs: int, what: str) -> list[Any]:
    if isinstance(space, Sequence) and not isinstance(space, str):
        spaces = list(space)
        if len(spaces) != num_envs:
            raise ValueError(f"got {len(spaces)} entries in {what} for {num_envs} envs")
        return spaces
    return [space] * num_envs
