"""Registering env classes for a library that registers none (`ldm-envs add --entry-point`).

Some libraries ship a Gymnasium env class but never call `register` (building-energy-storage-
simulation's `Environment`), so importing them adds nothing to the registry and there is nothing
for `add` to discover. `--entry-point ID=module:Class` makes `add` generate a tiny worker-side
package beside the manifest (`environment.local_packages`, as gym-trading-env's hand-made one)
whose import registers each id, and lists that module under `imports`: no glue code to write.
"""

from __future__ import annotations

import re
from pathlib import Path

from ldm_envs.add.errors import AddError
from ldm_envs.atomic import atomic_write_text
from ldm_envs.manifest import Api, EnvSpec

#: The folder, beside `manifest.yaml`, holding the generated package.
GLUE_DIR = "registrations"

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def parse_entry_points(texts: list[str]) -> dict[str, str]:
    """`ID=module:Class` options as {id: target}.

    Raises:
        AddError: naming the entry that is not `ID-vN=module:Class`.
    """
    out: dict[str, str] = {}
    for text in texts:
        env_id, sep, target = (part.strip() for part in text.partition("="))
        if not sep or not _TARGET.match(target):
            raise AddError(f"--entry-point {text!r}: give ID=module:Class, e.g. Battery-v0=pkg:Env")
        try:
            EnvSpec(id=env_id)
        except ValueError:
            raise AddError(
                f"--entry-point {text!r}: the id must end in -vN, e.g. Battery-v0"
            ) from None
        out[env_id] = target
    return out


def glue_module(library: str) -> str:
    """The module the generated package provides (its import registers the ids)."""
    return "ldm_register_" + re.sub(r"\W", "_", library)


_GLUE_MODULE = '''"""Registers the env classes {library} ships without registering them.

Written by `ldm-envs add --entry-point`; a re-run rewrites it. A kwarg given as
{{"()": "module:Callable", ...}} (the convention of logging.config.dictConfig) is built by calling
that callable with the other keys, so an env whose constructor takes an object (a simulation, a
data set) is made from the manifest's JSON kwargs.
"""

import importlib

from {gym}.envs.registration import register, registry

ENTRY_POINTS = {entry_points!r}


def _load(target):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _build(value):
    if isinstance(value, dict):
        if "()" in value:
            rest = dict((k, _build(v)) for k, v in value.items() if k != "()")
            return _load(value["()"])(**rest)
        return dict((k, _build(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_build(v) for v in value]
    return value


def _creator(target):
    def make(**kwargs):
        return _load(target)(**_build(kwargs))

    return make


for _id, _target in ENTRY_POINTS.items():
    if _id not in registry:
        register(id=_id, entry_point=_creator(_target))
'''


def glue_files(library: str, entry_points: dict[str, str], api: Api) -> dict[str, str]:
    """The package's files, by path relative to its folder."""
    module = glue_module(library)
    gym = "gymnasium" if api == Api.GYMNASIUM else "gym"
    return {
        "pyproject.toml": (
            f"# Written by `ldm-envs add --entry-point`: installed INTO the isolated environment\n"
            f"# of {library} (environment.local_packages), never into the workspace.\n"
            "[project]\n"
            f'name = "{module.replace("_", "-")}"\n'
            'version = "0.1.0"\n'
            f'description = "Gymnasium ids for the env classes of {library}."\n'
            "dependencies = []\n\n"
            "[build-system]\n"
            'requires = ["hatchling==1.33.0"]\n'
            'build-backend = "hatchling.build"\n\n'
            "[tool.hatch.build.targets.wheel]\n"
            f'packages = ["src/{module}"]\n'
        ),
        f"src/{module}/__init__.py": _GLUE_MODULE.format(
            library=library, gym=gym, entry_points=dict(sorted(entry_points.items()))
        ),
    }


def write_glue(folder: Path, files: dict[str, str]) -> None:
    """Write the package under `folder` (atomic per file)."""
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
