"""Benchmark: per-step latency of KV-cached inference (`LDMPolicy`) at a short and a long context.

Usage: uv run python tools/bench_inference.py [--config tiny] [--envs 16] [--contexts 64,2048]
       [--steps 100] [--repeats 5] [--naive-steps 3] [--threads N] [--no-dynamic]
       [--modes ring,chunked,exact] [--refresh 0.25] [--json PATH]

Quality bar (DESIGN.md): the per-step latency at context 2048 is at most 2x that at context 64.
For each context the policy first steps `context` times, so the timed steps run with a full cache
that slides (the steady state of a long rollout); the contexts are timed in interleaved rounds
and the median round counts, so that load from other processes hits both alike. Rows:

* `ring`: `LDMPolicy(cache="ring")` (ring-buffer cache written in place, stored transposed,
  eager attention; see ldm_model.policy).
* `chunked/S`: `LDMPolicy(cache="chunked", refresh=S)`, S = `--refresh` x context (a list gives
  one row each): exact windows, the cache refilled from the last context - S transitions every
  S steps. A round times a whole number of refill periods, so the mean includes the refills
  (amortized); the `worst step` column is the refill's spike.
* `exact`: `LDMPolicy(cache="exact")`: a forward over the last `context` transitions at every
  step (a refill of context - 1, then the step). Above context 256 it is timed over
  `--naive-steps` steps a round.
* `dynamic`: the same policy with transformers' `DynamicCache` and the model's SDPA attention
  (append by `torch.cat`, then drop the oldest entry of every layer once full): what the ring
  buffer replaced.
* `naive`: no cache; every step recomputes the whole window of the last `context` transitions
  (backbone over the window, decoder on the last token only): the speed-up reference.

`--config` takes a named config (`tiny`, `32M`, ...) or `bench-256` (hidden 256, 4 layers,
4 heads). Observations are MuJoCo-like (17 floats), actions Box(6) in [-1, 1]. Threads: torch's
default (one per core); at 2048 the step streams the whole KV cache (16 envs x 2048 slots x
2 layers x K and V: 32 MB for tiny), and two cores stream it faster than one. On a machine
shared with other jobs, pass `--threads 1`: oversubscribed OpenMP threads spin and make every
step many times slower. Figures go into packages/ldm-model/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from transformers.cache_utils import DynamicCache

from ldm_envs.spaces import BoxSpace
from ldm_model.batch import Batch
from ldm_model.config import ModelConfig, get_config
from ldm_model.model import LDM
from ldm_model.policy import LDMPolicy
from ldm_model.tokenizer import ACT_DIMS, OBS_DIMS, SpaceCodec

OBS_DIM, ACT_DIM = 17, 6
#: makes a stepper: (model, codec, envs, context, **settings) -> one step of every env
Stepper = Callable[..., Callable[[], None]]
EXTRA_CONFIGS = {
    "bench-256": ModelConfig(
        name="bench-256",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        intermediate_size=1024,
        context=2048,
        token_dim=32,
        image_dim=256,
    )
}


def make_codec() -> SpaceCodec:
    return SpaceCodec(
        BoxSpace(shape=(OBS_DIM,), low=-math.inf, high=math.inf),
        BoxSpace(shape=(ACT_DIM,), low=-1.0, high=1.0),
    )


class Inputs:
    """A fixed pool of random observations/rewards/dones, cycled (no RNG cost in the timing)."""

    def __init__(self, envs: int, n: int = 256, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.obs = rng.normal(size=(n, envs, OBS_DIM)).astype(np.float32)
        self.reward = rng.normal(size=(n, envs)).astype(np.float32)
        self.done = rng.random((n, envs)) < 0.005
        self.i = 0

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = self.i % len(self.obs)
        self.i += 1
        return self.obs[i], self.reward[i], self.done[i]


# -- steppers: each returns a function doing one step for all envs ---------------------------------


def ring_stepper(
    model: LDM, codec: SpaceCodec, envs: int, context: int, **cache: object
) -> Callable[[], None]:
    """`LDMPolicy` with the given cache settings (`cache=`, `refresh=`); default the ring."""
    policy = LDMPolicy(model, codec, envs, context=context, **cache)  # type: ignore[arg-type]
    inputs = Inputs(envs)

    def step() -> None:
        policy.act(*inputs.next())

    return step


def step_batch(codec: SpaceCodec, obs: np.ndarray, device: torch.device) -> Batch:
    """A T=1 batch from raw observations (previous action/reward random: timing only)."""
    b = obs.shape[0]

    def table(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(codec, name)] * b)).to(device)

    return Batch(
        obs=torch.from_numpy(codec.flat_obs(obs))[:, None].to(device),
        obs_mask=table("obs_mask"),
        obs_discrete=table("obs_discrete"),
        prev_action=torch.rand(b, 1, ACT_DIMS, device=device) * 2 - 1,
        prev_reward=torch.randn(b, 1, device=device),
        prev_done=torch.zeros(b, 1, dtype=torch.bool, device=device),
        prev_valid=torch.ones(b, 1, dtype=torch.bool, device=device),
        act_mask=table("act_mask"),
        act_discrete=table("act_discrete"),
        act_low=table("act_low"),
        act_high=table("act_high"),
    )


class DynamicCachePolicy(LDMPolicy):
    """`LDMPolicy` with transformers' `DynamicCache` in place of the ring (all else the same).

    `cat` appends every step; once full, every layer drops its oldest entry (one more copy).
    Per-env resets are not supported: the benchmark never resets.
    """

    def __init__(self, model: LDM, codec: SpaceCodec, envs: int, context: int) -> None:
        super().__init__(model, codec, envs, context=context)
        self.dynamic = DynamicCache()

    def _backbone(self, embeds: torch.Tensor) -> torch.Tensor:
        length = min(self._t, self.context - 1)
        out = self.model.backbone(
            inputs_embeds=embeds,
            past_key_values=self.dynamic,
            attention_mask=torch.ones(self.num_envs, length + 1, dtype=torch.bool),
            position_ids=torch.full((self.num_envs, 1), self._t, device=self.device),
            use_cache=True,
        )
        for layer in self.dynamic.layers:
            if layer.keys is not None and layer.keys.shape[-2] >= self.context:
                layer.keys = layer.keys[:, :, 1:]
                layer.values = layer.values[:, :, 1:]
        self._t += 1
        return out.last_hidden_state[:, 0]


def dynamic_stepper(model: LDM, codec: SpaceCodec, envs: int, context: int) -> Callable[[], None]:
    policy = DynamicCachePolicy(model, codec, envs, context)
    inputs = Inputs(envs)

    def step() -> None:
        policy.act(*inputs.next())

    return step


def naive_stepper(model: LDM, codec: SpaceCodec, envs: int, context: int) -> Callable[[], None]:
    """No cache: the whole window of the last `context` transitions through the backbone."""
    device = next(model.parameters()).device
    inputs = Inputs(envs)
    window = {
        "obs": torch.randn(envs, context, OBS_DIMS, device=device),
        "prev_action": torch.rand(envs, context, ACT_DIMS, device=device) * 2 - 1,
        "prev_reward": torch.randn(envs, context, device=device),
        "prev_done": torch.zeros(envs, context, dtype=torch.bool, device=device),
        "prev_valid": torch.ones(envs, context, dtype=torch.bool, device=device),
    }
    base = step_batch(codec, inputs.next()[0], device)

    def step() -> None:
        new = step_batch(codec, inputs.next()[0], device)
        for key, value in window.items():  # slide the window by one transition
            window[key] = torch.cat([value[:, 1:], getattr(new, key)], dim=1)
        batch = Batch(
            **window,
            obs_mask=base.obs_mask,
            obs_discrete=base.obs_discrete,
            act_mask=base.act_mask,
            act_discrete=base.act_discrete,
            act_low=base.act_low,
            act_high=base.act_high,
        )
        with torch.no_grad():
            hidden = model.backbone(inputs_embeds=model.embed(batch)).last_hidden_state[:, -1]
            logits = model.decoder(hidden).view(envs, 1, model.config.act_dims, -1)
            model.act_classes(logits, batch)

    return step


def time_steps(step: Callable[[], None], n: int) -> float:
    """Mean seconds per step over `n` steps."""
    return statistics.fmean(step_times(step, n))


def step_times(step: Callable[[], None], n: int) -> list[float]:
    """Seconds of each of `n` steps."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)
    return out


def refresh_of(kind: str, context: int) -> int:
    """The refill stride of a `chunked/<fraction>` kind at a context."""
    return max(1, round(float(kind.split("/")[1]) * context))


def steps_per_round(kind: str, context: int, steps: int, slow_steps: int) -> int:
    """Timed steps per round: whole refill periods for `chunked`, few for a slow `exact`."""
    if kind.startswith("chunked"):
        period = refresh_of(kind, context)
        return max(1, math.ceil(steps / period)) * period
    if kind == "exact" and context > 256:
        return slow_steps
    return steps


def policy_kinds(modes: Sequence[str], refresh: Sequence[str]) -> dict[str, Stepper]:
    """Steppers of `LDMPolicy` cache modes: `ring`, `chunked/<fraction>` per refresh, `exact`."""
    kinds: dict[str, Stepper] = {"ring": ring_stepper} if "ring" in modes else {}
    for fraction in refresh if "chunked" in modes else []:
        kinds[f"chunked/{fraction}"] = partial(ring_stepper, cache="chunked")
    if "exact" in modes:
        kinds["exact"] = partial(ring_stepper, cache="exact")
    return kinds


def measure(
    model: LDM,
    codec: SpaceCodec,
    envs: int,
    kinds: dict[str, Stepper],
    contexts: Sequence[int],
    *,
    steps: int,
    repeats: int,
    slow_steps: int,
    console: Console,
) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]:
    """Mean seconds per step with a full, sliding cache, and the worst step, per (kind, context).

    Each stepper first steps `context + 8` times (the cache fills, then slides); the kinds and
    contexts are then timed in `repeats` interleaved rounds and the median round counts.
    """
    steppers: dict[tuple[str, int], Callable[[], None]] = {}
    for kind, make in kinds.items():
        for context in contexts:
            extra = {"refresh": refresh_of(kind, context)} if kind.startswith("chunked") else {}
            step = make(model, codec, envs, context, **extra)
            start = time.perf_counter()
            for _ in range(context + 8):  # fill the cache: the timed steps slide it
                step()
            console.print(
                f"  {kind} @ {context}: cache filled in {time.perf_counter() - start:.1f} s"
            )
            steppers[kind, context] = step
    rounds: dict[tuple[str, int], list[float]] = {key: [] for key in steppers}
    worst: dict[tuple[str, int], float] = {key: 0.0 for key in steppers}
    for _ in range(repeats):
        for (kind, context), step in steppers.items():
            times = step_times(step, steps_per_round(kind, context, steps, slow_steps))
            rounds[kind, context].append(statistics.fmean(times))
            worst[kind, context] = max(worst[kind, context], max(times))
    return {key: statistics.median(values) for key, values in rounds.items()}, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--contexts", default="64,2048")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--naive-steps", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--no-dynamic", action="store_true", help="skip the DynamicCache rows")
    parser.add_argument(
        "--modes", default="ring,chunked,exact", help="LDMPolicy cache modes to time (ring first)"
    )
    parser.add_argument(
        "--refresh",
        default="0.25",
        help="chunked: refill strides as fractions of the context (comma-separated)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    console = Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = EXTRA_CONFIGS.get(args.config) or get_config(args.config)
    model = LDM(config).eval()
    codec = make_codec()
    contexts = [int(c) for c in args.contexts.split(",")]
    kinds = policy_kinds(["ring", *args.modes.split(",")], args.refresh.split(","))
    if not args.no_dynamic:
        kinds["dynamic"] = dynamic_stepper
    console.print(
        f"config {config.name} ({model.num_parameters() / 1e6:.1f}M parameters, trained context "
        f"{config.context}), {args.envs} envs, {torch.get_num_threads()} thread(s), "
        f"contexts {contexts}"
    )

    figures, worst = measure(
        model,
        codec,
        args.envs,
        kinds,
        contexts,
        steps=args.steps,
        repeats=args.repeats,
        slow_steps=args.naive_steps,
        console=console,
    )
    longest = max(contexts)
    naive = naive_stepper(model, codec, args.envs, longest)
    naive()  # warm-up
    figures["naive", longest] = time_steps(naive, args.naive_steps)

    short = figures["ring", min(contexts)]
    table = Table(title=f"Inference per step, {args.envs} envs, config {config.name}")
    cols = ("mode", "context", "ms / step", "worst step ms", "env-steps / s")
    cols += (f"vs ring @ {min(contexts)}", f"vs itself @ {min(contexts)}")
    for col in cols:
        table.add_column(col, justify="right" if col != "mode" else "left", no_wrap=col == "mode")
    for (kind, context), seconds in figures.items():
        own = figures.get((kind, min(contexts)))
        table.add_row(
            kind,
            str(context),
            f"{seconds * 1e3:.2f}",
            f"{worst[kind, context] * 1e3:.1f}" if (kind, context) in worst else "",
            f"{args.envs / seconds:,.0f}",
            f"{seconds / short:.2f}x",
            f"{seconds / own:.2f}x" if own else "",
        )
    console.print(table)
    ratios = {
        kind: figures[kind, longest] / figures[kind, min(contexts)]
        for kind in kinds
        if (kind, min(contexts)) in figures
    }
    console.print(
        f"@ {longest} / @ {min(contexts)} per mode (target <= 2): "
        + ", ".join(f"{kind} {r:.2f}x" for kind, r in ratios.items())
    )
    ratio = figures["ring", longest] / short
    speedup = figures["naive", longest] / figures["ring", longest]
    verdict = "[green]PASS[/]" if ratio <= 2.0 else "[red]FAIL[/]"
    console.print(
        f"ring @ {longest} / ring @ {min(contexts)} = {ratio:.2f}x (target <= 2): {verdict}; "
        f"speed-up over recomputing the {longest}-transition window: {speedup:,.0f}x"
    )
    if not args.no_dynamic:
        console.print(
            f"DynamicCache @ {longest} / ring @ {longest} = "
            f"{figures['dynamic', longest] / figures['ring', longest]:.2f}x"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "config": config.name,
                    "envs": args.envs,
                    "threads": torch.get_num_threads(),
                    "ms_per_step": {f"{k}@{c}": s * 1e3 for (k, c), s in figures.items()},
                    "worst_step_ms": {f"{k}@{c}": s * 1e3 for (k, c), s in worst.items()},
                    "ratio_per_mode": ratios,
                    "ratio": ratio,
                    "speedup_vs_naive": speedup,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
