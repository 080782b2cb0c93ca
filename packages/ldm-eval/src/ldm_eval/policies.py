"""What the protocol steps: a `Policy` (reset/act), built per batch of rollouts by a factory.

The protocol knows nothing about the LDM: it asks a `PolicyFactory` for one policy over the
rollouts it steps together (their spaces, envs and seeds in `SlotInfo`s), resets it once when
those rollouts start, and calls `act` once per env step. The LDM (`LDMPolicyFactory`) and the
random baseline (`RandomPolicyFactory`) go through exactly the same code, so their scores are
comparable by construction.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ldm_envs.pool import SpaceModel

if TYPE_CHECKING:
    from ldm_model.model import LDM

__all__ = [
    "LDMPolicyFactory",
    "Policy",
    "PolicyFactory",
    "RandomPolicy",
    "RandomPolicyFactory",
    "SlotInfo",
]


@runtime_checkable
class Policy(Protocol):
    """A batched policy over `num_envs` envs, each with its own context.

    `reset(None)` empties every env's context; `reset([i, ...])` only those envs'. The
    protocol calls it when rollouts start and never at episode ends: the context is kept
    across the episodes of one rollout (paper section 4.4).
    """

    def reset(self, envs: Sequence[int] | None = None) -> None: ...

    def act(
        self,
        obs: Sequence[np.ndarray] | np.ndarray,
        reward: np.ndarray | None = None,
        done: np.ndarray | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """One action per env for `obs`, given the previous step's reward and done."""
        ...


@dataclass(frozen=True)
class SlotInfo:
    """One rollout as a policy factory sees it: which env, which spaces, which seeds."""

    library: str
    env_id: str
    rollout: int
    seed: int
    attempt: int
    observation_space: SpaceModel
    action_space: SpaceModel


class PolicyFactory(Protocol):
    """Builds one policy stepping the given rollouts together (index i = `slots[i]`)."""

    def __call__(self, slots: Sequence[SlotInfo]) -> Policy: ...


class RandomPolicy:
    """Uniform samples of each env's action space, from one seeded generator per env.

    The baseline of the paper's tables: its score says how much of an env's reference range a
    policy gets for nothing. Discrete and multi-discrete spaces sample their categories, Box
    spaces uniformly within finite bounds (unbounded dims fall back to Gymnasium's sampler).
    """

    def __init__(self, action_spaces: Sequence[SpaceModel], seeds: Sequence[int]) -> None:
        if len(action_spaces) != len(seeds):
            raise ValueError(f"{len(seeds)} seeds for {len(action_spaces)} action spaces")
        self.spaces = [s.to_gymnasium() for s in action_spaces]
        self.seeds = [int(s) for s in seeds]
        self.num_envs = len(self.spaces)
        self.reset()

    def reset(self, envs: Sequence[int] | None = None) -> None:
        """Reseed the samplers: a reset rollout draws the same actions again."""
        for i in range(self.num_envs) if envs is None else envs:
            self.spaces[i].seed(self.seeds[i])

    def act(
        self,
        obs: Sequence[np.ndarray] | np.ndarray,
        reward: np.ndarray | None = None,
        done: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        if len(obs) != self.num_envs:
            raise ValueError(
                f"got observations for {len(obs)} envs, the policy steps {self.num_envs}"
            )
        return [np.asarray(space.sample()) for space in self.spaces]


def slot_seed(base: int, slot: SlotInfo) -> int:
    """A seed that depends on the rollout only (not on which batch it ran in)."""
    key = f"{slot.library}/{slot.env_id}/{slot.rollout}".encode()
    return (int(base) * 1_000_003 + zlib.crc32(key)) % (2**32)


@dataclass(frozen=True)
class RandomPolicyFactory:
    """Random baselines seeded per rollout from `seed`, the env id and the rollout index."""

    seed: int = 0

    def __call__(self, slots: Sequence[SlotInfo]) -> RandomPolicy:
        return RandomPolicy(
            [s.action_space for s in slots], [slot_seed(self.seed, s) for s in slots]
        )


class LDMPolicyFactory:
    """`ldm_model.policy.LDMPolicy` over a checkpoint, its weights loaded once and reused.

    Args:
        checkpoint: the checkpoint path `LDMPolicy.from_checkpoint` reads.
        device: where the model runs (`cpu`, `cuda`, `cuda:1`).
        context: transitions kept per env (default: the model's trained context).
    """

    def __init__(
        self, checkpoint: str | Path, *, device: str = "cpu", context: int | None = None
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.context = context
        self._model: LDM | None = None

    def __call__(self, slots: Sequence[SlotInfo]) -> Policy:
        from ldm_model.policy import LDMPolicy

        obs = [s.observation_space for s in slots]
        act = [s.action_space for s in slots]
        if self._model is None:
            policy = LDMPolicy.from_checkpoint(
                self.checkpoint, obs, act, len(slots), context=self.context, device=self.device
            )
            self._model = policy.model
            return policy
        codecs = shared_codecs(obs, act, n_bins=self._model.config.n_bins)
        return LDMPolicy(self._model, codecs, len(slots), context=self.context, device=self.device)


def shared_codecs(
    observation_spaces: Sequence[SpaceModel], action_spaces: Sequence[SpaceModel], **kwargs: Any
) -> list[Any]:
    """One `SpaceCodec` per env, shared by envs with equal spaces (they then batch together)."""
    from ldm_model.tokenizer import SpaceCodec

    made: dict[tuple[str, str], Any] = {}
    out = []
    for obs, act in zip(observation_spaces, action_spaces, strict=True):
        key = (obs.model_dump_json(), act.model_dump_json())
        if key not in made:
            made[key] = SpaceCodec(obs, act, **kwargs)
        out.append(made[key])
    return out
