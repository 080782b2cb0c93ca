"""`ldm-envs probe`: ask the real library, inside its isolated environment, for its spaces."""

from __future__ import annotations

from ldm_envs.backends import Backend
from ldm_envs.errors import SpaceError
from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.spaces import check_limits, space_from_dict


def probe_library(
    spec: EnvLibrarySpec, backend: Backend, env_ids: list[str] | None = None, timeout: float = 300
) -> tuple[EnvLibrarySpec, list[str]]:
    """Return the spec with spaces refreshed from the library, and a list of what changed.

    Raises:
        SpaceError: when an env's real spaces exceed the paper's limits (named by env id).
    """
    backend.prepare(spec)
    wanted = env_ids or spec.env_ids
    client = backend.spawn(spec)
    client.env_ids = wanted
    try:
        reply, _ = client.request(
            {
                "cmd": "probe",
                "api": spec.environment.api.value,
                "imports": spec.imports,
                "env_vars": spec.environment.env_vars,
                "envs": [spec.env(e).worker_request() for e in wanted],
            },
            timeout=timeout,
        )
    finally:
        client.close()
    changes: list[str] = []
    updated = {e.id: e for e in spec.envs}
    for env_id, spaces in zip(wanted, reply["spaces"], strict=True):
        obs = space_from_dict(spaces["observation"])
        act = space_from_dict(spaces["action"])
        try:
            check_limits(obs, act, where=f"library {spec.name!r}, env {env_id!r}")
        except SpaceError:
            raise
        old = updated[env_id]
        if (old.observation_space, old.action_space) != (obs, act):
            changes.append(f"{env_id}: observation {obs.describe()}, action {act.describe()}")
        updated[env_id] = old.model_copy(update={"observation_space": obs, "action_space": act})
    new_spec = spec.model_copy(update={"envs": [updated[e.id] for e in spec.envs]})
    return new_spec, changes
