"""The env spec a Minari dataset carries: the env made in this Python as its manifest says."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ldm_autorl.export.source import ShardSpace
from ldm_envs.errors import LDMError

if TYPE_CHECKING:
    import gymnasium as gym


def host_env(
    library: str, env_id: str, observation_space: ShardSpace, action_space: ShardSpace
) -> tuple[gym.Env[Any, Any] | None, str]:
    """Make the env in this Python as its manifest declares it, to take its spec from.

    Returns:
        `(env, "")`, or `(None, why)` when the library is not installed here, does not speak
        Gymnasium, fails to make the env, or makes one whose spaces are not the recorded ones
        (a worker flattening a Dict observation, say): its spec would then describe other data.
    """
    import importlib

    import gymnasium as gym

    from ldm_envs.manifest import Api
    from ldm_envs.plugins import get_library

    try:
        spec = get_library(library)
        declared = spec.env(env_id)
    except LDMError as exc:
        return None, f"{exc}"
    if spec.environment.api != Api.GYMNASIUM:
        return None, f"library {library!r} speaks {spec.environment.api.value}, not gymnasium"
    try:
        for module in spec.imports:
            importlib.import_module(module)
        kwargs = dict(declared.kwargs)
        if declared.max_episode_steps:
            kwargs["max_episode_steps"] = declared.max_episode_steps
        env = gym.make(declared.make_id, **kwargs)
        for target, wrapper_kwargs in declared.wrapper_calls():
            module, _, attr = target.partition(":")
            wrapper: Any = importlib.import_module(module)
            for part in attr.split("."):
                wrapper = getattr(wrapper, part)
            env = wrapper(env, **wrapper_kwargs)
    except Exception as exc:  # any failure to make it means no spec, with the reason
        return None, f"{env_id} cannot be made here ({type(exc).__name__}: {exc})"
    for name, recorded, made in (
        ("observation", observation_space, env.observation_space),
        ("action", action_space, env.action_space),
    ):
        if recorded.to_gymnasium() != made:
            env.close()
            return None, (
                f"{env_id} made here has {name} space {made}, the recorded data "
                f"{recorded.to_gymnasium()}"
            )
    if env.spec is None:
        env.close()
        return None, f"{env_id} made here has no spec"
    return env, ""


def _requirements(library: str) -> list[str]:
    """The manifest's pip requirements that are PEP 508 strings (Minari checks them on load)."""
    from packaging.requirements import InvalidRequirement, Requirement

    from ldm_envs.plugins import get_library

    valid = []
    for line in get_library(library).environment.requirements:
        with contextlib.suppress(InvalidRequirement):
            Requirement(line)
            valid.append(line)
    return valid
