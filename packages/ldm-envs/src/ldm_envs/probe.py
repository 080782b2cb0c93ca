"""`ldm-envs probe`: ask the real library, inside its isolated environment, for its spaces.

Besides refreshing the spaces of declared envs, probing can add envs to the manifest:

- ids given with `env_ids` that the manifest does not declare yet are added (their
  `max_episode_steps` taken from the library's registry);
- with `discover=True`, every env id that the library registers is added: the ids that appear in
  the registry of gym/gymnasium when the manifest's `imports` are imported, or whose entry point
  lives in one of those modules (`imports: [gymnasium.envs.toy_text]` selects Gymnasium's toy-text
  envs). Discovered envs that cannot be made, or whose spaces are beyond the paper's limits, are
  left out and reported rather than failing the probe.

A manifest written by `ldm-envs new` without env ids declares the single placeholder env
`PLACEHOLDER_ENV_ID`; probing such a manifest discovers the envs and drops the placeholder.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
from typing import Any

from pydantic import ValidationError

from ldm_envs.backends import Backend
from ldm_envs.errors import LDMEnvsError, ManifestError, SpaceError, UnknownEnvError, WorkerError
from ldm_envs.manifest import (
    RANKING_SUBSET_SIZE,
    EnvLibrarySpec,
    EnvSpec,
    format_validation_error,
)
from ldm_envs.spaces import Space, check_limits, space_from_dict

#: The env a scaffold declares when it was given no env ids; `probe` replaces it.
PLACEHOLDER_ENV_ID = "ldm-scaffold-placeholder-v0"

# Run by the library's own interpreter (Python 3.6+, gym 0.17+ or gymnasium): lists the registry.
_LIST_ENVS = r"""
import importlib, json, sys, warnings
warnings.filterwarnings("ignore")


def _registry(gym):
    reg = gym.envs.registry
    return dict(getattr(reg, "env_specs", reg))  # gym <= 0.21: EnvRegistry; later: a dict


def _module_of(entry_point):
    if isinstance(entry_point, str):
        return entry_point.split(":")[0]
    return getattr(entry_point, "__module__", "") or ""


def list_envs(api, imports):
    gym = importlib.import_module("gymnasium" if api == "gymnasium" else "gym")
    before = set(_registry(gym))
    for module in imports:
        importlib.import_module(module)
    found = []
    for env_id, spec in _registry(gym).items():
        where = _module_of(getattr(spec, "entry_point", None))
        inside = any(where == m or where.startswith(m + ".") for m in imports)
        if imports and env_id in before and not inside:
            continue
        found.append({"id": env_id, "max_episode_steps": getattr(spec, "max_episode_steps", None),
                      "entry_point": where})
    return found


if __name__ == "__main__":
    result = list_envs(sys.argv[1], json.loads(sys.argv[2]))
    sys.stdout.write("\nLDM-ENVS-REGISTRY:" + json.dumps(result) + "\n")
"""
_MARKER = "LDM-ENVS-REGISTRY:"


def list_registered_envs(
    spec: EnvLibrarySpec, backend: Backend, timeout: float = 300
) -> list[dict[str, Any]]:
    """The env ids the library registers, with their registered `max_episode_steps`.

    Runs in the library's isolated environment (the venv's interpreter, a container of the
    library's image, or the host for `inprocess`).

    Raises:
        LDMEnvsError: when listing fails (with the interpreter's output).
    """
    api, imports = spec.environment.api.value, list(spec.imports)
    if backend.name == "inprocess":
        saved = {k: os.environ.get(k) for k in spec.environment.env_vars}
        os.environ.update(spec.environment.env_vars)
        try:
            namespace: dict[str, Any] = {"__name__": "ldm_envs_list_envs"}
            exec(compile(_LIST_ENVS, "<ldm-envs list_envs>", "exec"), namespace)
            return namespace["list_envs"](api, imports)
        except Exception as exc:
            raise LDMEnvsError(
                f"library {spec.name!r}: listing its registered envs failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    argv = ["-c", _LIST_ENVS, api, json.dumps(imports)]
    if backend.name == "venv":
        from ldm_envs.backends.venv import worker_env

        proc = subprocess.run(
            [str(backend.python_path(spec)), *argv],  # type: ignore[attr-defined]
            capture_output=True,
            text=True,
            env=worker_env(spec),
            timeout=timeout,
            check=False,
        )
        output = proc.stdout + proc.stderr
        failed = proc.returncode != 0
    elif backend.name == "docker":
        from ldm_envs.backends.docker import VENV_PYTHON

        try:
            raw = backend.client.containers.run(  # type: ignore[attr-defined]
                backend.image_tag(spec),  # type: ignore[attr-defined]
                [VENV_PYTHON, *argv],
                network_mode="none",
                user="1000:1000",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                remove=True,
                stdout=True,
                stderr=True,
            )
            output, failed = raw.decode(errors="replace"), False
        except Exception as exc:  # docker.errors.ContainerError carries the stderr
            output, failed = str(exc), True
    else:
        raise LDMEnvsError(f"listing registered envs is not supported by backend {backend.name!r}")
    lines = [line for line in output.splitlines() if line.startswith(_MARKER)]
    if failed or not lines:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise LDMEnvsError(
            f"library {spec.name!r}: listing its registered envs failed through {backend.name}:\n"
            f"{tail}"
        )
    return json.loads(lines[-1][len(_MARKER) :])


def _probe_request(
    spec: EnvLibrarySpec, backend: Backend, ids: list[str], timeout: float
) -> list[dict[str, Any]]:
    client = backend.spawn(spec)
    client.env_ids = ids
    try:
        reply, _ = client.request(
            {
                "cmd": "probe",
                "api": spec.environment.api.value,
                "imports": spec.imports,
                "env_vars": spec.environment.env_vars,
                "envs": [spec.env(e).worker_request() for e in ids],
            },
            timeout=timeout,
        )
    finally:
        client.close()
    return reply["spaces"]


def _first_line(exc: WorkerError) -> str:
    return (exc.cause.strip().splitlines() or ["failed"])[0]


def probe_tolerant(
    spec: EnvLibrarySpec,
    backend: Backend,
    ids: list[str],
    timeout: float,
    skipped: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Probe `ids`, leaving out (into `skipped`, with the reason) the envs that fail."""
    remaining = list(ids)
    while remaining:
        try:
            replies = _probe_request(spec, backend, remaining, timeout)
            return dict(zip(remaining, replies, strict=True))
        except WorkerError as exc:
            if len(exc.env_ids) == 1 and exc.env_ids[0] in remaining:
                skipped[exc.env_ids[0]] = _first_line(exc)
                remaining.remove(exc.env_ids[0])
                continue
            # the failure names no single env (a crash, a raise outside make): one at a time
            found: dict[str, dict[str, Any]] = {}
            for env_id in remaining:
                try:
                    found[env_id] = _probe_request(spec, backend, [env_id], timeout)[0]
                except WorkerError as one:
                    skipped[env_id] = _first_line(one)
            return found
    return {}


def _add_envs(
    spec: EnvLibrarySpec, new_ids: list[str], registered: dict[str, dict[str, Any]]
) -> EnvLibrarySpec:
    """The spec with `new_ids` declared (no validation: the placeholder may still be there)."""
    envs = list(spec.envs)
    for env_id in new_ids:
        steps = (registered.get(env_id) or {}).get("max_episode_steps")
        envs.append(EnvSpec(id=env_id, max_episode_steps=steps or None))
    return spec.model_copy(update={"envs": envs})


def _registered_limits(
    spec: EnvLibrarySpec,
    env_ids: list[str],
    registered: dict[str, dict[str, Any]],
    changes: list[str],
) -> EnvLibrarySpec:
    """Give `env_ids` their registered `max_episode_steps` (when the registry has one)."""
    envs = []
    for env in spec.envs:
        entry = registered.get(env.make_id) if env.id in env_ids else None
        steps = (entry or {}).get("max_episode_steps")
        if steps:
            env = env.model_copy(update={"max_episode_steps": steps})
            changes.append(f"{env.id}: max_episode_steps {steps} (registered)")
        envs.append(env)
    return spec.model_copy(update={"envs": envs})


def _fit_subset(spec: EnvLibrarySpec, changes: list[str]) -> EnvLibrarySpec:
    """Keep an explicit ranking subset valid after envs were added or left out."""
    declared = set(spec.env_ids)
    subset = [e for e in spec.ranking_subset if e in declared]
    if not subset:
        return spec.model_copy(update={"ranking_subset": []})
    wanted = min(RANKING_SUBSET_SIZE, len(spec.envs))
    for env_id in spec.env_ids:
        if len(subset) >= wanted:
            break
        if env_id not in subset:
            subset.append(env_id)
            changes.append(f"ranking subset: added {env_id} (it needs {wanted} envs)")
    return spec.model_copy(update={"ranking_subset": subset[:wanted]})


def probe_library(
    spec: EnvLibrarySpec,
    backend: Backend,
    env_ids: list[str] | None = None,
    timeout: float = 300,
    *,
    discover: bool | None = None,
) -> tuple[EnvLibrarySpec, list[str]]:
    """Return the spec with spaces refreshed from the library, and a list of what changed.

    Args:
        spec: the manifest.
        backend: where the library runs.
        env_ids: only these envs; ids the manifest does not declare are added.
        timeout: seconds for the library to answer.
        discover: also add every env the library registers (see the module's docstring);
            by default only when the manifest declares nothing but the scaffold placeholder.

    Raises:
        SpaceError: when a declared or requested env's real spaces exceed the paper's limits
            (named by env id).
        UnknownEnvError: when a requested id is not in the library's registry.
        EnvRaisedError: when a declared or requested env cannot be made.
    """
    backend.prepare(spec)
    changes: list[str] = []
    placeholder_only = all(e.id == PLACEHOLDER_ENV_ID for e in spec.envs)
    if discover is None:
        discover = env_ids is None and placeholder_only
    requested = [e for e in env_ids or [] if e != PLACEHOLDER_ENV_ID]
    undeclared = [e for e in dict.fromkeys(requested) if e not in spec.env_ids]
    tolerant: list[str] = []  # discovered envs: left out when they fail
    # first probe of a declared env without a time limit: take the registered one
    unlimited = [
        e.id
        for e in spec.envs
        if not e.probed and e.max_episode_steps is None and e.id != PLACEHOLDER_ENV_ID
        if not requested or e.id in requested
    ]
    if unlimited and not (discover or undeclared):
        try:
            registered = {e["id"]: e for e in list_registered_envs(spec, backend, timeout)}
            spec = _registered_limits(spec, unlimited, registered, changes)
        except LDMEnvsError as exc:  # the limits are a convenience: never fail the probe
            changes.append(f"registered time limits unknown: {str(exc).splitlines()[0]}")
    if discover or undeclared:
        registered = {e["id"]: e for e in list_registered_envs(spec, backend, timeout)}
        spec = _registered_limits(spec, unlimited, registered, changes)
        missing = [e for e in undeclared if e not in registered]
        if missing:
            hints = {e: difflib.get_close_matches(e, list(registered), n=3) for e in missing}
            raise UnknownEnvError(
                f"library {spec.name!r} registers no env {', '.join(missing)}"
                + "".join(f"; for {e} did you mean {', '.join(h)}?" for e, h in hints.items() if h)
                + f" ({len(registered)} registered after importing {spec.imports or 'nothing'})"
            )
        if discover:
            for env_id in registered:
                if env_id in spec.env_ids or env_id in undeclared:
                    continue
                try:
                    EnvSpec(id=env_id)
                except ValueError:
                    changes.append(f"skipped {env_id}: its id does not look like Name-vN")
                    continue
                tolerant.append(env_id)
            if not tolerant and not undeclared and placeholder_only:
                raise LDMEnvsError(
                    f"library {spec.name!r}: found no registered envs after importing "
                    f"{spec.imports or 'nothing'}; set `imports` in the manifest to the modules "
                    "that register the envs, or pass env ids with --env"
                )
        spec = _add_envs(spec, undeclared + tolerant, registered)
    if requested:
        wanted = list(dict.fromkeys(requested + tolerant))
    else:
        wanted = [e for e in spec.env_ids if e != PLACEHOLDER_ENV_ID]
    strict = [e for e in wanted if e not in tolerant]
    replies: dict[str, dict[str, Any]] = {}
    if strict:
        replies = dict(zip(strict, _probe_request(spec, backend, strict, timeout), strict=True))
    skipped: dict[str, str] = {}
    if tolerant:
        replies.update(probe_tolerant(spec, backend, tolerant, timeout, skipped))
    updated = {e.id: e for e in spec.envs}
    added = set(undeclared) | set(tolerant)
    for env_id in wanted:
        if env_id not in replies:
            continue
        obs: Space = space_from_dict(replies[env_id]["observation"])
        act: Space = space_from_dict(replies[env_id]["action"])
        try:
            check_limits(obs, act, where=f"library {spec.name!r}, env {env_id!r}")
        except SpaceError as exc:
            if env_id not in tolerant:
                raise
            skipped[env_id] = str(exc)
            continue
        old = updated[env_id]
        if env_id in added:
            changes.append(f"added {env_id}: observation {obs.describe()}, action {act.describe()}")
        elif (old.observation_space, old.action_space) != (obs, act):
            changes.append(f"{env_id}: observation {obs.describe()}, action {act.describe()}")
        updated[env_id] = old.model_copy(update={"observation_space": obs, "action_space": act})
    changes += [f"skipped {env_id}: {why}" for env_id, why in skipped.items()]
    envs = [updated[e.id] for e in spec.envs if e.id not in skipped]
    real = [e for e in envs if e.id != PLACEHOLDER_ENV_ID]
    if not real:
        raise LDMEnvsError(
            f"library {spec.name!r} declares no env yet: pass env ids (`--env`) or let probe "
            "discover the registered ones"
            + "".join(f"\n  skipped {e}: {why}" for e, why in skipped.items())
        )
    if len(real) < len(envs):
        changes.append(f"removed the scaffold placeholder {PLACEHOLDER_ENV_ID}")
    new_spec = _fit_subset(spec.model_copy(update={"envs": real}), changes)
    # validate the result as a whole, as the registry will when it reads the file back
    try:
        validated = EnvLibrarySpec.model_validate(new_spec.model_dump())
        return validated.located_at(spec.source_dir), changes
    except ValidationError as exc:
        raise ManifestError(format_validation_error(spec.name, exc)) from None
