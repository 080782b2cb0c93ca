"""Candidate algorithm configs, discovered through the `ldm.algorithms` entry-point group.

A candidate is one Stable-Baselines3 (or sb3-contrib) algorithm with one set of hyperparameters,
plus the observation and action kinds it supports. Plugins ship lists of them (usually a
`candidates.yaml` beside their `__init__.py`); the registry validates each candidate on its own,
so a broken one is reported naming its plugin and key and never hides the others.

Kinds: observations are `vector` (non-image Box, MultiBinary), `image` (uint8 HxWxC Box) or
`discrete` (Discrete, MultiDiscrete: SB3 one-hot encodes them); actions are `discrete`, `box`,
`multi_discrete` or `multi_binary`.

One concept per module: `kinds` (spaces, kinds, what each algorithm accepts), `hyperparams`
(the constructor's arguments as data and their checks), `config` (`CandidateConfig`), `compat`
(`compatibility`), `build` (`make_model`), `cnn` (`SmallCNN`), `discovery` (the registry).
The package imports neither torch nor Stable-Baselines3 until an algorithm is needed.
"""

from __future__ import annotations

from typing import Any

from ldm_autorl.candidates.build import REPLAY_BUFFER_MAX_BYTES, make_model
from ldm_autorl.candidates.compat import compatibility
from ldm_autorl.candidates.config import CandidateConfig
from ldm_autorl.candidates.discovery import (
    DISTRIBUTION_PREFIX,
    ENTRY_POINT_GROUP,
    CandidateRegistry,
    compatibility_table,
    parse_candidate,
    read_candidates,
    registry,
)
from ldm_autorl.candidates.hyperparams import ActionNoiseConfig
from ldm_autorl.candidates.kinds import (
    ACTION_KINDS,
    ALGORITHM_ACTION_KINDS,
    NATURE_CNN_MIN_SIZE,
    OBSERVATION_KINDS,
    SQUASHING_ALGORITHMS,
    ActionKind,
    ObservationKind,
    SpaceLike,
    SpaceModel,
    action_kind,
    observation_kind,
)
from ldm_autorl.errors import CandidateError, UnknownCandidateError

__all__ = [
    "ACTION_KINDS",
    "ALGORITHM_ACTION_KINDS",
    "DISTRIBUTION_PREFIX",
    "ENTRY_POINT_GROUP",
    "NATURE_CNN_MIN_SIZE",
    "OBSERVATION_KINDS",
    "REPLAY_BUFFER_MAX_BYTES",
    "SQUASHING_ALGORITHMS",
    "ActionKind",
    "ActionNoiseConfig",
    "CandidateConfig",
    "CandidateError",
    "CandidateRegistry",
    "ObservationKind",
    "SmallCNN",
    "SpaceLike",
    "SpaceModel",
    "UnknownCandidateError",
    "action_kind",
    "compatibility",
    "compatibility_table",
    "make_model",
    "observation_kind",
    "parse_candidate",
    "read_candidates",
    "registry",
]


def __getattr__(name: str) -> Any:
    # `SmallCNN` imports torch, so it is imported on first use; pickles of policies saved before
    # it had its own module name it `ldm_autorl.candidates.SmallCNN` and find it through here.
    if name == "SmallCNN":
        from ldm_autorl.candidates.cnn import SmallCNN

        return SmallCNN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
