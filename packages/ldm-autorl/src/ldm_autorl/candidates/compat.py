"""Whether a candidate can train on an env, from the env's declared spaces alone.

Needs no env and no SB3 import for the answer (only an image env's note on which policy
`make_model` will use imports the algorithm), so `ldm-autorl list LIB` and the ranking's
planning stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ldm_autorl.candidates.kinds import (
    NATURE_CNN_MIN_SIZE,
    SQUASHING_ALGORITHMS,
    SpaceLike,
    SpaceModel,
    _as_model,
    _image_hw,
    _small_cnn_class,
    action_kind,
    observation_kind,
)
from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiDiscreteSpace

if TYPE_CHECKING:
    from ldm_autorl.candidates.config import CandidateConfig


def _nonzero_start(space: SpaceModel) -> bool:
    if isinstance(space, DiscreteSpace):
        return space.start != 0
    if isinstance(space, MultiDiscreteSpace):
        return space.start is not None and any(space.start)
    return False


def _image_note(candidate: CandidateConfig, space: BoxSpace) -> str:
    policy, kwargs = candidate.resolve_policy(space)
    if policy != "CnnPolicy":
        return f"{policy}, flattened" if policy == "MlpPolicy" else policy
    extractor = kwargs.get("features_extractor_class")
    if extractor is None:
        return "CnnPolicy with NatureCNN"
    if extractor is not _small_cnn_class():
        return f"CnnPolicy with {getattr(extractor, '__name__', extractor)}"
    h, w = _image_hw(space)
    why = (
        f"{h}x{w} < {NATURE_CNN_MIN_SIZE}"
        if min(h, w) < NATURE_CNN_MIN_SIZE
        else "bounds not 0..255"
    )
    return f"CnnPolicy with SmallCNN, {why}"


def compatibility(
    candidate: CandidateConfig, observation_space: SpaceLike, action_space: SpaceLike
) -> tuple[bool, str]:
    """Whether `candidate` can train on these spaces, and why (or why not).

    Needs no env, only the declared spaces. Reasons read like
    "DQN supports discrete actions; this env has box[1] float32"; a compatible image env's
    reason says which policy `make_model` will use.
    """
    obs = _as_model(observation_space)
    act = _as_model(action_space)
    alg = candidate.algorithm
    obs_kind = observation_kind(obs)
    act_kind = action_kind(act)
    problems: list[str] = []
    if obs_kind not in candidate.observation:
        problems.append(
            f"{alg} supports {', '.join(candidate.observation)} observations; "
            f"this env has {obs.describe()}"
        )
    if act_kind not in candidate.action:
        problems.append(
            f"{alg} supports {', '.join(candidate.action).replace('_', '-')} actions; "
            f"this env has {act.describe()}"
        )
    for what, space in (("observation", obs), ("action", act)):
        if _nonzero_start(space):
            problems.append(
                f"SB3 needs (multi-)discrete spaces that start at 0; this env's {what} space "
                f"is {space.describe()} (start={getattr(space, 'start', None)})"
            )
    if (
        isinstance(act, BoxSpace)
        and alg in SQUASHING_ALGORITHMS
        and not (np.all(np.isfinite(act.low_array())) and np.all(np.isfinite(act.high_array())))
    ):
        problems.append(
            f"{alg} squashes actions into the box bounds, which must be finite; "
            f"this env has {act.describe()} with infinite bounds"
        )
    if problems:
        return False, "; ".join(problems)
    reason = f"{alg} supports {obs_kind} observations and {act_kind.replace('_', '-')} actions"
    if obs_kind == "image":
        assert isinstance(obs, BoxSpace)
        reason += f" ({_image_note(candidate, obs)})"
    return True, reason
