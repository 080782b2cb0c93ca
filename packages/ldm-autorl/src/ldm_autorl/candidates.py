"""Candidate algorithm configs, discovered through the `ldm.algorithms` entry-point group.

A candidate is one Stable-Baselines3 (or sb3-contrib) algorithm with one set of hyperparameters,
plus the observation and action kinds it supports. Plugins ship lists of them (usually a
`candidates.yaml` beside their `__init__.py`); the registry validates each candidate on its own,
so a broken one is reported naming its plugin and key and never hides the others.

Kinds: observations are `vector` (non-image Box, MultiBinary), `image` (uint8 HxWxC Box) or
`discrete` (Discrete, MultiDiscrete: SB3 one-hot encodes them); actions are `discrete`, `box`,
`multi_discrete` or `multi_binary`.

The module imports neither torch nor Stable-Baselines3 until an algorithm is needed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import gymnasium as gym
import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ldm_autorl.errors import CandidateError, UnknownCandidateError
from ldm_envs.errors import LDMError, SpaceError
from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.plugins import load_entry_point
from ldm_envs.spaces import (
    BoxSpace,
    DiscreteSpace,
    MultiBinarySpace,
    MultiDiscreteSpace,
    from_gymnasium,
)

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

ENTRY_POINT_GROUP = "ldm.algorithms"
logger = logging.getLogger(__name__)

ObservationKind = Literal["vector", "image", "discrete"]
ActionKind = Literal["discrete", "box", "multi_discrete", "multi_binary"]
OBSERVATION_KINDS: tuple[str, ...] = typing.get_args(ObservationKind)
ACTION_KINDS: tuple[str, ...] = typing.get_args(ActionKind)

SpaceModel = BoxSpace | DiscreteSpace | MultiDiscreteSpace | MultiBinarySpace
SpaceLike = SpaceModel | gym.Space[Any]

#: Images smaller than this (height or width) are too small for SB3's NatureCNN (8/4, 4/2, 3/1
#: convolutions need 36 pixels); `make_model` gives them `SmallCNN` instead.
NATURE_CNN_MIN_SIZE = 36
#: Cap on the replay buffer's observation storage (obs + next obs) that `make_model` applies by
#: lowering `buffer_size`: 1 GiB holds ~43k transitions of 64x64x3 pixels, all of 7x7x3 grids.
REPLAY_BUFFER_MAX_BYTES = 1 << 30

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

#: Constructor arguments `make_model` sets itself (or that have their own field).
_RESERVED = {
    "policy": "it is the candidate's `policy` field",
    "env": "make_model passes the env",
    "seed": "make_model sets the seed",
    "device": "make_model sets the device",
    "tensorboard_log": "make_model sets tensorboard_log",
    "policy_kwargs": "use the candidate's `policy_kwargs` field",
    "_init_setup_model": "make_model always sets the model up",
}
_SCHEDULE = re.compile(r"^lin_([0-9.eE+\-]+)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*$")


class ActionNoiseConfig(BaseModel):
    """Exploration noise for DDPG/TD3-style algorithms, as data (`hyperparams.action_noise`).

    SB3 adds it to the action scaled to [-1, 1], so `sigma` is relative to half the box width.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["normal", "ornstein_uhlenbeck"] = "normal"
    sigma: float = Field(gt=0)
    theta: float = Field(default=0.15, gt=0)

    def build(self, action_dim: int) -> Any:
        """The SB3 `ActionNoise` for an action of `action_dim` dims."""
        from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

        mean = np.zeros(action_dim)
        sigma = np.full(action_dim, self.sigma)
        if self.type == "normal":
            return NormalActionNoise(mean=mean, sigma=sigma)
        return OrnsteinUhlenbeckActionNoise(mean=mean, sigma=sigma, theta=self.theta)


class CandidateConfig(BaseModel):
    """One algorithm with one set of hyperparameters, and the spaces it supports.

    `hyperparams` are keyword arguments of the algorithm's constructor, checked against its
    signature. Plain data only, with three conveniences: `"lin_<x>"` for a linear schedule from
    `x` to 0 (learning rates, clip ranges, ARS's `delta_std`), a list for `train_freq`
    (`[1, "episode"]`) and a mapping for `action_noise` (see `ActionNoiseConfig`). In
    `policy_kwargs`, `*_fn`/`*_class` values may be import strings (`"torch.nn:Tanh"`,
    `"nn.Tanh"`).

    `policy` is the policy for vector and discrete observations; on image observations
    `make_model` switches `MlpPolicy` to `CnnPolicy` where the algorithm has one (see
    `resolve_policy`). `n_envs` is how many parallel envs the hyperparameters are tuned for:
    build the `VecEnv` with that many (on-policy rollouts are `n_steps * n_envs` steps).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    algorithm: str
    package: str = "stable_baselines3"
    policy: str = "MlpPolicy"
    hyperparams: dict[str, Any] = {}
    policy_kwargs: dict[str, Any] = {}
    n_envs: int = Field(default=1, ge=1)
    observation: list[ObservationKind] = Field(min_length=1)
    action: list[ActionKind] = Field(min_length=1)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _kebab(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"candidate name {value!r} must be lower-case kebab-case")
        return value

    @field_validator("observation", "action")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"repeats a kind: {value}")
        return value

    @model_validator(mode="after")
    def _against_the_library(self) -> CandidateConfig:
        problems = self._library_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -- the algorithm ------------------------------------------------------------------------

    def algorithm_class(self) -> type[BaseAlgorithm]:
        """The algorithm class, imported on demand.

        Raises:
            CandidateError: when the package does not import or has no such algorithm.
        """
        return _algorithm_class(self.package, self.algorithm)

    @property
    def off_policy(self) -> bool:
        """Whether the algorithm learns from a replay buffer (DQN, SAC, TD3, ...)."""
        from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

        return issubclass(self.algorithm_class(), OffPolicyAlgorithm)

    @property
    def work_per_transition(self) -> float:
        """Samples pushed through a gradient update per env transition, a relative cost.

        The executors start the costliest runs first so that a stage does not end with one core
        finishing a slow SAC run while the others idle: an off-policy learner replays
        `batch_size * gradient_steps` samples every `train_freq * n_envs` transitions (SAC's
        defaults: 256 per transition), PPO revisits each transition `n_epochs` times, A2C once.
        """
        params = inspect.signature(self.algorithm_class().__init__).parameters

        def value(key: str, default: Any) -> Any:
            if key in self.hyperparams:
                return self.hyperparams[key]
            param = params.get(key)
            return default if param is None or param.default is param.empty else param.default

        if not self.off_policy:
            for passes in ("n_epochs", "n_critic_updates"):  # PPO; TRPO's critic
                if passes in params:
                    return float(value(passes, 1))
            return 1.0 if "n_steps" in params else 0.1  # A2C; ARS learns without gradients
        freq = value("train_freq", 1)
        steps, unit = (freq[0], freq[1]) if isinstance(freq, (list, tuple)) else (freq, "step")
        per_update = float(steps) * (100 if str(unit).startswith("episode") else 1) * self.n_envs
        gradient_steps = float(value("gradient_steps", 1))
        if gradient_steps < 0:
            gradient_steps = per_update
        return float(value("batch_size", 256)) * gradient_steps / max(per_update, 1.0)

    def compatibility(
        self, observation_space: SpaceLike, action_space: SpaceLike
    ) -> tuple[bool, str]:
        """Shortcut for `compatibility(self, observation_space, action_space)`."""
        return compatibility(self, observation_space, action_space)

    def resolve_policy(self, observation_space: SpaceLike) -> tuple[str, dict[str, Any]]:
        """The policy name and policy kwargs `make_model` uses on this observation space.

        Image observations get `CnnPolicy` instead of `MlpPolicy` where the algorithm has one;
        images under `NATURE_CNN_MIN_SIZE` pixels (MiniGrid's 7x7x3), or uint8 images whose
        bounds are not 0..255, get `SmallCNN` as features extractor unless the candidate sets
        its own `features_extractor_class`.
        """
        space = _as_model(observation_space)
        policy = self.policy
        kwargs = {k: _resolve_reference(k, v) for k, v in self.policy_kwargs.items()}
        if observation_kind(space) != "image":
            return policy, kwargs
        aliases = getattr(self.algorithm_class(), "policy_aliases", {})
        if policy == "MlpPolicy" and "CnnPolicy" in aliases:
            policy = "CnnPolicy"
        if policy == "CnnPolicy" and "features_extractor_class" not in kwargs:
            assert isinstance(space, BoxSpace)
            if _needs_small_cnn(space):
                kwargs["features_extractor_class"] = _small_cnn_class()
        return policy, kwargs

    def make_model(
        self,
        env: VecEnv,
        *,
        seed: int,
        device: str = "cpu",
        tensorboard_log: str | None = None,
        verbose: int = 0,
        max_replay_bytes: int = REPLAY_BUFFER_MAX_BYTES,
    ) -> BaseAlgorithm:
        """Build the SB3 model of this candidate on `env`.

        Args:
            env: an SB3 `VecEnv`, ideally with `n_envs` envs (another count only logs a warning).
            seed: seeds the model (and the env through SB3).
            device: torch device ("cpu", "cuda", "auto").
            tensorboard_log: SB3's tensorboard folder, if any. Without one the model logs
                through `ldm_envs.sb3.folderless_logger` (SB3's default makes
                `<tmp>/SB3-<date>` per `learn`).
            verbose: SB3's verbosity.
            max_replay_bytes: lowers `buffer_size` of off-policy algorithms so that stored
                observations (obs and next obs) stay under this many bytes.

        Raises:
            CandidateError: when the env's spaces are not ones this candidate supports.
        """
        obs_space = _as_model(env.observation_space)
        act_space = _as_model(env.action_space)
        ok, reason = compatibility(self, obs_space, act_space)
        if not ok:
            raise CandidateError(f"candidate {self.name!r} cannot run on this env: {reason}")
        if env.num_envs != self.n_envs:
            logger.warning(
                "candidate %r is tuned for %d envs; the VecEnv has %d",
                self.name,
                self.n_envs,
                env.num_envs,
            )
        cls = self.algorithm_class()
        policy, policy_kwargs = self.resolve_policy(obs_space)
        kwargs = self._constructor_kwargs(env, cls, max_replay_bytes)
        kwargs.setdefault("verbose", verbose)
        if policy_kwargs:
            kwargs["policy_kwargs"] = policy_kwargs
        model = cls(
            policy,
            env,
            seed=seed,
            device=device,
            tensorboard_log=tensorboard_log,
            **kwargs,
        )
        if tensorboard_log is None:
            from ldm_envs.sb3 import folderless_logger

            model.set_logger(folderless_logger(int(kwargs["verbose"])))
        return model

    # -- internals ----------------------------------------------------------------------------

    def _constructor_kwargs(
        self, env: VecEnv, cls: type[BaseAlgorithm], max_replay_bytes: int
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for key, value in self.hyperparams.items():
            if isinstance(value, str) and (m := _SCHEDULE.match(value)):
                kwargs[key] = _linear_schedule(float(m.group(1)))
            elif key == "train_freq" and isinstance(value, list | tuple):
                kwargs[key] = (int(value[0]), str(value[1]))
            elif key.endswith("_class") and isinstance(value, str):
                kwargs[key] = _import_reference(value)
            elif key == "action_noise" and isinstance(value, dict):
                space = env.action_space
                kwargs[key] = ActionNoiseConfig.model_validate(value).build(
                    int(math.prod(space.shape or (1,)))
                )
            else:
                kwargs[key] = value
        params = inspect.signature(cls.__init__).parameters
        if "buffer_size" in params:
            default = params["buffer_size"].default
            size = int(kwargs.get("buffer_size", default))
            obs = env.observation_space
            per_transition = 2 * int(math.prod(obs.shape or (1,))) * np.dtype(obs.dtype).itemsize
            cap = max(1_000, max_replay_bytes // max(per_transition, 1))
            if size > cap:
                logger.info(
                    "candidate %r: buffer_size %d -> %d so observations fit in %d MiB",
                    self.name,
                    size,
                    cap,
                    max_replay_bytes >> 20,
                )
                kwargs["buffer_size"] = cap
        return kwargs

    def _library_problems(self) -> list[str]:
        try:
            cls = self.algorithm_class()
        except CandidateError as exc:
            return [str(exc)]
        problems: list[str] = []
        supported = ALGORITHM_ACTION_KINDS.get(self.algorithm)
        if supported is not None:
            for kind in self.action:
                if kind not in supported:
                    problems.append(
                        f"action kind {kind!r} is not supported by {self.algorithm} "
                        f"(it supports: {', '.join(k for k in ACTION_KINDS if k in supported)})"
                    )
        aliases: dict[str, type] = getattr(cls, "policy_aliases", {})
        if self.policy not in aliases:
            problems.append(
                f"unknown policy {self.policy!r} for {self.algorithm}; "
                f"known: {', '.join(aliases) or '(none)'}"
            )
        else:
            problems += _check_policy_kwargs(
                self.algorithm, aliases[self.policy], self.policy_kwargs
            )
        problems += self._check_hyperparams(cls)
        return problems

    def _check_hyperparams(self, cls: type) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        known = [n for n in params if n != "self" and n not in _RESERVED]
        problems: list[str] = []
        coerced = dict(self.hyperparams)
        for key, value in self.hyperparams.items():
            if key in _RESERVED:
                problems.append(f"hyperparameter {key!r} is not allowed: {_RESERVED[key]}")
                continue
            if key not in params:
                if not open_ended:
                    problems.append(
                        f"unknown hyperparameter {key!r} for {self.algorithm} "
                        f"(accepted: {', '.join(known)})"
                    )
                continue
            try:
                coerced[key] = _check_value(key, value, params[key].annotation)
            except ValueError as exc:
                problems.append(f"hyperparameter {key!r} for {self.algorithm}: {exc}")
        if not problems:
            self.hyperparams = coerced
        return problems


# -- kinds and compatibility ------------------------------------------------------------------


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


def _nonzero_start(space: SpaceModel) -> bool:
    if isinstance(space, DiscreteSpace):
        return space.start != 0
    if isinstance(space, MultiDiscreteSpace):
        return space.start is not None and any(space.start)
    return False


def _image_hw(space: BoxSpace) -> tuple[int, int]:
    shape = space.shape
    return (shape[1], shape[2]) if int(np.argmin(shape)) == 0 else (shape[0], shape[1])


def _sb3_image(space: BoxSpace) -> bool:
    return bool(np.all(space.low_array() == 0) and np.all(space.high_array() == 255))


def _needs_small_cnn(space: BoxSpace) -> bool:
    return min(_image_hw(space)) < NATURE_CNN_MIN_SIZE or not _sb3_image(space)


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


# -- value checks -----------------------------------------------------------------------------


def _annotation_types(annotation: Any) -> set[Any] | None:
    """The outer types an annotation allows, or None when it is unknown (no check then)."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return None
    if annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        found: set[Any] = set()
        for arg in typing.get_args(annotation):
            sub = _annotation_types(arg)
            if sub is None:
                return None
            found |= sub
        return found
    if annotation is None or annotation is type(None):
        return {type(None)}
    if origin is not None:
        if origin in (Callable, typing.Callable) or getattr(origin, "__name__", "") == "Callable":
            return {Callable}
        return {origin}
    return {annotation}


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Check a plain-data hyperparameter against its annotation; return it coerced.

    Raises:
        ValueError: saying what was expected.
    """
    allowed = _annotation_types(annotation)
    if key == "action_noise":
        if value is None:
            return value
        if not isinstance(value, dict):
            raise ValueError("expected a mapping like {type: normal, sigma: 0.1}")
        try:
            ActionNoiseConfig.model_validate(value)
        except ValidationError as exc:
            raise ValueError(_flat_errors(exc)) from None
        return value
    if allowed is None:
        return value
    numeric = float in allowed or int in allowed
    if value is None:
        if type(None) not in allowed:
            raise ValueError("may not be null")
        return value
    if isinstance(value, bool):
        if bool not in allowed:
            raise ValueError(f"expected {_describe(allowed)}, got a boolean")
        return value
    if isinstance(value, int | float):
        if float in allowed:
            return value
        if int in allowed:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected an integer, got {value}")
            return int(value)
        raise ValueError(f"expected {_describe(allowed)}, got {value!r}")
    if isinstance(value, str):
        if m := _SCHEDULE.match(value):
            if Callable not in allowed:
                raise ValueError(f"does not take a schedule like {value!r}")
            try:
                float(m.group(1))
            except ValueError:
                raise ValueError(f"bad schedule {value!r}; write lin_<number>") from None
            return value
        if str in allowed:
            return value
        if numeric:  # YAML reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return int(number) if float not in allowed and number.is_integer() else number
        if type in allowed:
            _import_reference(value)
            return value
        raise ValueError(f"expected {_describe(allowed)}, got {value!r}")
    if isinstance(value, list | tuple):
        if tuple in allowed:
            return tuple(value)
        if list in allowed:
            return list(value)
        raise ValueError(f"expected {_describe(allowed)}, got a list")
    if isinstance(value, dict):
        if dict not in allowed:
            raise ValueError(f"expected {_describe(allowed)}, got a mapping")
        return value
    return value


def _describe(allowed: set[Any]) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        Callable: "a schedule (lin_<x>)",
        tuple: "a list",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
        type: "an import string",
    }
    return " or ".join(sorted({names.get(t, getattr(t, "__name__", str(t))) for t in allowed}))


def _flat_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
    )


def _check_policy_kwargs(algorithm: str, policy_cls: type, kwargs: dict[str, Any]) -> list[str]:
    params = inspect.signature(policy_cls.__init__).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    fixed = {"self", "observation_space", "action_space", "lr_schedule"}
    problems = []
    for key, value in kwargs.items():
        if key in fixed or (key not in params and not open_ended):
            accepted = ", ".join(n for n in params if n not in fixed)
            problems.append(
                f"unknown policy_kwargs key {key!r} for {algorithm} {policy_cls.__name__} "
                f"(accepted: {accepted})"
            )
            continue
        try:
            _resolve_reference(key, value)
        except CandidateError as exc:
            problems.append(str(exc))
    return problems


def _import_reference(ref: str) -> Any:
    """Resolve "pkg.mod:Attr", "pkg.mod.Attr", or "nn.Attr" / "th.Attr" (torch shortcuts)."""
    module, sep, attr = ref.partition(":")
    if not sep:
        module, _, attr = ref.rpartition(".")
    module = {"nn": "torch.nn", "th": "torch", "th.nn": "torch.nn"}.get(module, module)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot import {ref!r}: {exc}") from None


def _resolve_reference(key: str, value: Any) -> Any:
    if isinstance(value, str) and (key.endswith("_fn") or key.endswith("_class")):
        try:
            return _import_reference(value)
        except ValueError as exc:
            raise CandidateError(f"policy_kwargs {key!r}: {exc}") from None
    return value


def _linear_schedule(start: float) -> Callable[[float], float]:
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * start

    return schedule


@cache
def _algorithm_class(package: str, algorithm: str) -> type[BaseAlgorithm]:
    from stable_baselines3.common.base_class import BaseAlgorithm

    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise CandidateError(f"package {package!r} cannot be imported: {exc}") from None
    cls = getattr(module, algorithm, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseAlgorithm)):
        known = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, BaseAlgorithm)
        )
        raise CandidateError(
            f"unknown algorithm {algorithm!r} in {package}; known: {', '.join(known) or '(none)'}"
        )
    return cls


# -- the small CNN ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _small_cnn_class() -> type:
    import torch as th
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from torch import nn

    class SmallCNN(BaseFeaturesExtractor):
        """Three 2x2 convolutions (16, 32, 64 channels) and a linear layer, for tiny images.

        SB3's NatureCNN needs 36 pixels; MiniGrid's 7x7x3 grid encoding gets this instead (the
        extractor Farama's MiniGrid docs recommend). Accepts channels-first (as SB3's
        `VecTransposeImage` delivers) or channels-last, and pools anything larger than 8x8
        after the convolutions so the linear layer stays small.
        """

        def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128) -> None:
            super().__init__(observation_space, features_dim)
            shape = tuple(observation_space.shape)
            self.channels_last = int(np.argmin(shape)) != 0
            channels = shape[-1] if self.channels_last else shape[0]
            height, width = (shape[0], shape[1]) if self.channels_last else (shape[1], shape[2])
            pad = 1 if min(height, width) < 4 else 0
            self.cnn = nn.Sequential(
                nn.Conv2d(channels, 16, kernel_size=2, padding=pad),
                nn.ReLU(),
                nn.Conv2d(16, 32, kernel_size=2, padding=pad),
                nn.ReLU(),
                nn.Conv2d(32, 64, kernel_size=2, padding=pad),
                nn.ReLU(),
            )
            with th.no_grad():
                sample = th.zeros(1, channels, height, width)
                h, w = self.cnn(sample).shape[-2:]
            self.pool = nn.AdaptiveAvgPool2d((min(h, 8), min(w, 8)))
            n_flatten = 64 * min(h, 8) * min(w, 8)
            self.linear = nn.Sequential(nn.Flatten(), nn.Linear(n_flatten, features_dim), nn.ReLU())

        def forward(self, observations: th.Tensor) -> th.Tensor:
            x = observations.float()
            if self.channels_last:
                x = x.permute(0, 3, 1, 2)
            return self.linear(self.pool(self.cnn(x)))

    SmallCNN.__module__ = __name__
    SmallCNN.__qualname__ = "SmallCNN"
    return SmallCNN


def __getattr__(name: str) -> Any:
    # `SmallCNN` is built on first use so importing this module does not import torch; pickles
    # of a policy (SB3 saves policy_kwargs) find it again by name through this hook.
    if name == "SmallCNN":
        return _small_cnn_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the registry -----------------------------------------------------------------------------


@dataclass
class CandidateRegistry:
    """The known candidates with their plugin, plus the broken ones and why they are broken.

    `broken` is keyed by "plugin:candidate" for a candidate that failed validation (the name is
    "#i" when the entry has none), and by the plugin name alone when the whole entry point
    failed (import error, unreadable YAML, wrong target type).
    """

    candidates: dict[str, tuple[str, CandidateConfig]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Sorted names of the candidates that loaded."""
        return sorted(self.candidates)

    def get(self, name: str) -> CandidateConfig:
        """The candidate called `name`.

        Raises:
            CandidateError: when a plugin declares it but it is broken (with the reason).
            UnknownCandidateError: listing the known candidates.
        """
        if name in self.candidates:
            return self.candidates[name][1]
        for key, reason in self.broken.items():
            if key.partition(":")[2] == name:
                raise CandidateError(reason)
        known = ", ".join(self.names()) or "(none installed)"
        raise UnknownCandidateError(f"unknown candidate {name!r}; known candidates: {known}")

    def plugin_of(self, name: str) -> str:
        """The plugin that declares candidate `name`."""
        self.get(name)
        return self.candidates[name][0]

    def add(self, candidate: CandidateConfig, plugin: str = "local") -> None:
        """Register a candidate directly (tests, notebooks), without an entry point.

        Raises:
            CandidateError: when the name is taken.
        """
        if candidate.name in self.candidates:
            other = self.candidates[candidate.name][0]
            raise CandidateError(
                f"plugin {plugin!r}: candidate {candidate.name!r}: duplicate name "
                f"(already declared by plugin {other!r})"
            )
        self.candidates[candidate.name] = (plugin, candidate)

    def compatible_with(
        self, observation_space: SpaceLike, action_space: SpaceLike
    ) -> list[CandidateConfig]:
        """The candidates that can train on these spaces, sorted by name."""
        obs, act = _as_model(observation_space), _as_model(action_space)
        found = []
        for name in self.names():
            candidate = self.candidates[name][1]
            if compatibility(candidate, obs, act)[0]:
                found.append(candidate)
        return found

    @classmethod
    def from_entry_points(cls, eps: Iterable[EntryPoint] | None = None) -> CandidateRegistry:
        """Load every plugin of the group, isolating failures per candidate and per plugin."""
        registry = cls()
        for ep in eps if eps is not None else entry_points(group=ENTRY_POINT_GROUP):
            try:
                items = _load_entry_point(ep)
            except Exception as exc:
                msg = str(exc)
                if not isinstance(exc, LDMError):
                    failure = f"{type(exc).__name__}: {exc}"
                    msg = f"plugin {ep.name!r}: loading {ep.value!r} failed: {failure}"
                registry.broken[ep.name] = msg
                # debug only: every command builds the registry, most never ask for this plugin;
                # `ldm-autorl candidates LIB` lists the broken ones, asking for one names why
                logger.debug("skipping algorithm plugin %r: %s", ep.name, msg)
                continue
            for i, item in enumerate(items):
                registry._add_item(ep.name, i, item)
        return registry

    def _add_item(self, plugin: str, index: int, item: Any) -> None:
        label = _item_name(item, index)
        try:
            candidate = parse_candidate(item, plugin, index)
            self.add(candidate, plugin)
        except CandidateError as exc:
            self.broken[f"{plugin}:{label}"] = str(exc)
            logger.debug("skipping candidate %r of plugin %r: %s", label, plugin, exc)


def _item_name(item: Any, index: int) -> str:
    if isinstance(item, CandidateConfig):
        return item.name
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return item["name"]
    return f"#{index}"


def parse_candidate(data: Any, plugin: str, index: int = 0) -> CandidateConfig:
    """Validate one candidate, turning pydantic's error into lines naming plugin and key.

    Raises:
        CandidateError: when the data does not validate.
    """
    if isinstance(data, CandidateConfig):
        return data
    label = _item_name(data, index)
    prefix = f"plugin {plugin!r}: candidate {label!r}: "
    if not isinstance(data, dict):
        raise CandidateError(f"{prefix}must be a mapping, got {type(data).__name__}")
    try:
        return CandidateConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            loc = ".".join(str(p) for p in err["loc"])
            for line in msg.splitlines():
                lines.append(f"{prefix}field {loc}: {line}" if loc else prefix + line)
        raise CandidateError("\n".join(lines)) from None


def read_candidates(path: Path, plugin: str) -> list[Any]:
    """Read a candidates YAML file: a list of mappings, or a mapping with a `candidates` list.

    Raises:
        CandidateError: naming the plugin and the file when it is missing or malformed.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CandidateError(f"plugin {plugin!r}: cannot read candidates {path}: {exc}") from None
    if isinstance(data, dict) and set(data) == {"candidates"}:
        data = data["candidates"]
    if not isinstance(data, list):
        raise CandidateError(
            f"plugin {plugin!r}: {path} must hold a list of candidates "
            f"(or a mapping with a `candidates` list), got {type(data).__name__}"
        )
    return data


def _load_entry_point(ep: EntryPoint) -> Sequence[Any]:
    # imported and called contained: a plugin's sys.exit() or hang is reported, never fatal
    target: Any = load_entry_point(ep, finish=_call_factory)
    if isinstance(target, str | Path):
        return read_candidates(Path(target), ep.name)
    if isinstance(target, CandidateConfig | dict):
        return [target]
    if isinstance(target, list | tuple):
        return list(target)
    raise CandidateError(
        f"plugin {ep.name!r}: entry point {ep.value!r} must be a list of candidates, a path to a "
        f"YAML file or a callable returning one, got {type(target).__name__}"
    )


def _call_factory(target: Any) -> Any:
    """A callable entry point (not a class) returns the candidates."""
    return target() if callable(target) and not isinstance(target, type) else target


@lru_cache(maxsize=1)
def _cached_registry() -> CandidateRegistry:
    return CandidateRegistry.from_entry_points()


def registry(refresh: bool = False) -> CandidateRegistry:
    """The process-wide registry of installed candidates (discovered once, on first use)."""
    if refresh:
        _cached_registry.cache_clear()
    return _cached_registry()


def compatibility_table(
    spec: EnvLibrarySpec, registry: CandidateRegistry | None = None
) -> pl.DataFrame:
    """Per env of `spec` and per candidate: compatible or not, and why.

    Columns: env_id, candidate, compatible, reason. Envs whose spaces are not declared yet are
    listed as incompatible, asking for `ldm-envs probe`.
    """
    reg = registry if registry is not None else _cached_registry()
    rows: dict[str, list[Any]] = {"env_id": [], "candidate": [], "compatible": [], "reason": []}
    for env in spec.envs:
        for name in reg.names():
            candidate = reg.candidates[name][1]
            if env.observation_space is None or env.action_space is None:
                ok, reason = False, f"spaces not declared; run `ldm-envs probe {spec.name}`"
            else:
                ok, reason = compatibility(candidate, env.observation_space, env.action_space)
            rows["env_id"].append(env.id)
            rows["candidate"].append(name)
            rows["compatible"].append(ok)
            rows["reason"].append(reason)
    return pl.DataFrame(
        rows,
        schema={
            "env_id": pl.String,
            "candidate": pl.String,
            "compatible": pl.Boolean,
            "reason": pl.String,
        },
    )
