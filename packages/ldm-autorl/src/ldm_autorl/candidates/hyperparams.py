"""The algorithm's constructor: its class, its keyword arguments as plain data, their checks.

Candidates are data (YAML), so their hyperparameters are plain values with three conveniences
(`"lin_<x>"` schedules, `train_freq` lists, `action_noise` mappings) and import strings for
`*_class`/`*_fn`. Every value is checked against the constructor's signature when the
candidate is validated, so a typo fails at discovery naming plugin and key, not mid-run.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ldm_autorl.errors import CandidateError
from ldm_envs.errors import validation_lines

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

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
            raise ValueError("; ".join(validation_lines(exc, field=""))) from None
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


def _check_policy_kwargs(
    algorithm: str, policy_cls: type[Any], kwargs: dict[str, Any]
) -> list[str]:
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
