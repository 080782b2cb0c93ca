"""Observation and action kinds, what each algorithm accepts, and the image rules.

A candidate declares the kinds it supports; `compatibility` compares them with an env's
declared spaces. The kinds are coarse on purpose: SB3 decides its preprocessing (one-hot,
image transpose, flattening) from the same distinctions.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from ldm_envs.errors import SpaceError
from ldm_envs.spaces import (
    BoxSpace,
    DiscreteSpace,
    MultiBinarySpace,
    MultiDiscreteSpace,
    SpaceModel,
    from_gymnasium,
)

ObservationKind = Literal["vector", "image", "discrete"]
ActionKind = Literal["discrete", "box", "multi_discrete", "multi_binary"]
OBSERVATION_KINDS: tuple[str, ...] = typing.get_args(ObservationKind)
ACTION_KINDS: tuple[str, ...] = typing.get_args(ActionKind)

SpaceLike = SpaceModel | gym.Space[Any]

#: Images smaller than this (height or width) are too small for SB3's NatureCNN (8/4, 4/2, 3/1
#: convolutions need 36 pixels); `make_model` gives them `SmallCNN` instead.
NATURE_CNN_MIN_SIZE = 36

#: Action kinds each known algorithm accepts (SB3's `supported_action_spaces`); a candidate that
#: declares more is refused. Algorithms not listed are trusted.
ALGORITHM_ACTION_KINDS: dict[str, frozenset[str]] = {
    "A2C": frozenset(ACTION_KINDS),
    "PPO": frozenset(ACTION_KINDS),
    "TRPO": frozenset(ACTION_KINDS),
    "RecurrentPPO": frozenset(ACTION_KINDS),
    "MaskablePPO": frozenset({"discrete", "multi_discrete", "multi_binary"}),
    "DQN": frozenset({"discrete"}),
    "QRDQN": frozenset({"discrete"}),
    "DDPG": frozenset({"box"}),
    "TD3": frozenset({"box"}),
    "SAC": frozenset({"box"}),
    "TQC": frozenset({"box"}),
    "CrossQ": frozenset({"box"}),
    "ARS": frozenset({"discrete", "box"}),
}
#: Algorithms that squash their Box actions with tanh and rescale them into the bounds, which
#: therefore must be finite.
SQUASHING_ALGORITHMS = frozenset({"DDPG", "TD3", "SAC", "TQC", "CrossQ", "ARS"})


def _as_model(space: SpaceLike) -> SpaceModel:
    if isinstance(space, BoxSpace | DiscreteSpace | MultiDiscreteSpace | MultiBinarySpace):
        return space
    if isinstance(space, gym.Space):
        return from_gymnasium(space)
    raise SpaceError(f"not a space: {space!r}")


def observation_kind(space: SpaceLike) -> str:
    """`image` for a uint8 HxWxC Box, `discrete` for Discrete/MultiDiscrete, else `vector`."""
    space = _as_model(space)
    if isinstance(space, BoxSpace):
        return "image" if space.is_image else "vector"
    if isinstance(space, DiscreteSpace | MultiDiscreteSpace):
        return "discrete"
    return "vector"


def action_kind(space: SpaceLike) -> str:
    """`discrete`, `box`, `multi_discrete` or `multi_binary`."""
    space = _as_model(space)
    return space.type


def _image_hw(space: BoxSpace) -> tuple[int, int]:
    shape = space.shape
    return (shape[1], shape[2]) if int(np.argmin(shape)) == 0 else (shape[0], shape[1])


def _sb3_image(space: BoxSpace) -> bool:
    return bool(np.all(space.low_array() == 0) and np.all(space.high_array() == 255))


def _needs_small_cnn(space: BoxSpace) -> bool:
    return min(_image_hw(space)) < NATURE_CNN_MIN_SIZE or not _sb3_image(space)


def _small_cnn_class() -> type:
    # imported on first use: the module imports torch
    from ldm_autorl.candidates.cnn import SmallCNN

    return SmallCNN
