"""One registered id, many envs: `ldm-envs add --vary KWARG=VALUES`.

Some libraries register a single Gymnasium id that takes the task as a make() kwarg instead of
an id per task (Meta-World v3: `Meta-World/goal_observable` with `env_name="reach-v3"`). `--vary`
declares one env per value: id `<namespace>/<value>` (the registered id's namespace, or the id
itself where it has none), `gym_id` the registered id, `kwargs[KWARG]` the value. The values are
a comma-separated list, or `module:attr`, a list or a dict (its keys) read in the library's own
environment, so a library's task table need not be copied onto the command line.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ldm_envs.add.errors import AddError
from ldm_envs.add.resolve import run_in_environment
from ldm_envs.backends import Backend
from ldm_envs.manifest import EnvLibrarySpec, EnvSpec

_MARKER = "LDM-ENVS-VARY:"

# Run by the library's interpreter (Python 3.6+): the values of module.attr, as JSON.
_VALUES = r"""
import importlib, json, sys


def values_of(target):
    module, attr = target.split(":", 1)
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return [str(v) for v in (list(obj.keys()) if hasattr(obj, "keys") else list(obj))]


if __name__ == "__main__":
    sys.stdout.write("\nLDM-ENVS-VARY:" + json.dumps(values_of(sys.argv[1])) + "\n")
"""


def parse_vary(text: str) -> tuple[str, str]:
    """`KWARG=VALUES` into its two sides; a clear error naming the text when malformed."""
    kwarg, sep, values = text.partition("=")
    if not sep or not kwarg.strip().isidentifier() or not values.strip():
        raise AddError(
            f"--vary {text!r} must be KWARG=v1,v2,... or KWARG=module:attr "
            "(e.g. env_name=metaworld.env_dict:ALL_V3_ENVIRONMENTS)"
        )
    return kwarg.strip(), values.strip()


def vary_values(spec: EnvLibrarySpec, backend: Backend, values: str) -> list[str]:
    """The values of `--vary`: those listed, or those `module:attr` holds in the library env."""
    if ":" not in values:
        return [v.strip() for v in values.split(",") if v.strip()]
    if backend.name == "inprocess":  # the host's sys.path, as for the inprocess worker
        namespace: dict[str, Any] = {"__name__": "ldm_envs_vary"}
        exec(compile(_VALUES, "<ldm-envs vary>", "exec"), namespace)
        try:
            found: list[str] = namespace["values_of"](values)
        except Exception as exc:
            cause = f"{type(exc).__name__}: {exc}"
            raise AddError(f"--vary: reading {values} failed: {cause}") from None
    else:
        output = run_in_environment(spec, backend, _VALUES, values)
        lines = [line for line in output.splitlines() if line.startswith(_MARKER)]
        found = json.loads(lines[-1][len(_MARKER) :]) if lines else []
    if not found:
        raise AddError(f"--vary: {values} holds no value in {spec.name}'s environment")
    return found


def varied_id(registered: str, value: str) -> str:
    """The declared id of `registered` made with `value`: `<namespace>/<value>`."""
    namespace = registered.split("/", 1)[0]
    env_id = f"{namespace}/{value}"
    try:
        EnvSpec(id=env_id)
    except ValidationError:
        raise AddError(
            f"--vary: the env {registered!r} with value {value!r} would be declared as "
            f"{env_id!r}, which does not look like Name-vN; vary a kwarg whose values end in -vN"
        ) from None
    return env_id


def expand(registered: list[str], kwarg: str, values: list[str]) -> dict[str, tuple[str, str]]:
    """Declared id -> (registered id, value) for each registered id and value.

    Raises:
        AddError: when two registered ids would declare the same env (narrow --include).
    """
    out: dict[str, tuple[str, str]] = {}
    for gym_id in registered:
        for value in values:
            env_id = varied_id(gym_id, value)
            if env_id in out:
                raise AddError(
                    f"--vary {kwarg}: {out[env_id][0]!r} and {gym_id!r} would both declare "
                    f"{env_id!r}; select one of them with --include"
                )
            out[env_id] = (gym_id, value)
    return out
