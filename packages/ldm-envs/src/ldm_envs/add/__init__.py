"""`ldm-envs add REQUIREMENT...`: from a package requirement to a checked plugin, in one command.

In order: resolve and pin the requirements (`resolve`), build the isolated venv, import the
library and list the env ids it registers, probe and step each env at random (`trial`), keep
those that pass and record the others with their causes under `excluded`, widen the declared
observation bounds that random steps left, choose a 5-env ranking subset, write the plugin
package with the scaffold of `ldm-envs new`, and register it with `uv add` (`plugin`).

It refuses, writing nothing, when the requirements do not resolve, when the library registers
no env (after the include/exclude globs) and when every env fails. `ldm-envs new` stays the
manual path for the cases automation cannot guess. Guide: docs/adding-a-library.md.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.markup import escape

from ldm_envs.add.errors import AddError
from ldm_envs.add.glue import GLUE_DIR, glue_files, glue_module, write_glue
from ldm_envs.add.plugin import (
    choose_ranking_subset,
    merge_manifest,
    read_record,
    readme_section,
    registered,
    remove_fresh,
    uv_add,
    workspace_of,
    write_plugin_files,
)
from ldm_envs.add.resolve import distribution_names, pin_requirements, top_level_modules
from ldm_envs.add.trial import (
    EnvTrial,
    pool_widened,
    probe_spaces,
    roll_out,
    widened_bounds,
)
from ldm_envs.add.vary import expand, parse_vary, vary_values
from ldm_envs.backends import Backend, get_backend
from ldm_envs.errors import BuildError, LDMEnvsError, validation_lines
from ldm_envs.manifest import (
    Api,
    EnvLibrarySpec,
    EnvSpec,
    IsolatedEnvironment,
    WrapperSpec,
    read_manifest,
)
from ldm_envs.plugins import DISTRIBUTION_PREFIX
from ldm_envs.probe import PLACEHOLDER_ENV_ID, list_registered_envs
from ldm_envs.scaffold import (
    DEFAULT_PYTHON,
    _core_range,
    module_name,
    plugin_dir,
    scaffold_plugin,
)
from ldm_envs.spaces import BoxSpace

__all__ = ["AddError", "AddOptions", "AddResult", "add_library", "library_name"]


class AddOptions(BaseModel):
    """What automation cannot guess; every field has a CLI option of the same name."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    python: str = DEFAULT_PYTHON
    api: Api = Api.GYMNASIUM
    imports: list[str] = []
    include: list[str] = []
    exclude: list[str] = []
    kwargs: dict[str, Any] = {}
    wrappers: list[str | WrapperSpec] = []
    max_episode_steps: int | None = Field(default=None, gt=0)
    seed_kwarg: str | None = None
    vary: str | None = None
    #: Env ids to register, {ID: "module:Class"}, for a library that registers none itself.
    entry_points: dict[str, str] = {}
    steps: int = Field(default=1000, gt=0)
    min_steps_per_second: float = Field(default=50.0, ge=0)
    register_plugin: bool = True


@dataclass
class AddResult:
    """What `add_library` did."""

    name: str
    root: Path
    manifest: Path
    spec: EnvLibrarySpec
    trials: list[EnvTrial]
    created: bool
    registered_now: bool
    seconds: float
    next_steps: list[str] = field(default_factory=list)

    @property
    def failed(self) -> dict[str, str]:
        """The envs left out, with their causes."""
        return dict(self.spec.excluded)


def library_name(requirement: str) -> str:
    """The plugin name a requirement gets: its distribution name, lower-case kebab-case."""
    try:
        name = canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement as exc:
        raise AddError(f"bad requirement {requirement!r}: {exc}") from None
    return name.replace(".", "-").replace("_", "-")


def _selected(ids: list[str], include: list[str], exclude: list[str]) -> list[str]:
    keep = [e for e in ids if not include or any(fnmatch.fnmatchcase(e, g) for g in include)]
    return [e for e in keep if not any(fnmatch.fnmatchcase(e, g) for g in exclude)]


def _env_spec(
    env_id: str,
    registered: dict[str, Any],
    options: AddOptions,
    varied: dict[str, Any],
) -> EnvSpec:
    return EnvSpec(
        id=env_id,
        gym_id=registered["id"] if registered["id"] != env_id else None,
        kwargs={**options.kwargs, **varied},
        wrappers=list(options.wrappers),
        max_episode_steps=options.max_episode_steps or registered.get("max_episode_steps"),
        seed_kwarg=options.seed_kwarg,
    )


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


def add_library(
    requirements: list[str],
    options: AddOptions | None = None,
    *,
    dest_root: Path = Path("plugins"),
    backend: str | Backend = "venv",
    console: Any = None,
    command: str = "",
) -> AddResult:
    """Turn `requirements` into a checked plugin package under `dest_root` (see the module doc).

    With the `inprocess` backend nothing is resolved or built: the library must be importable
    by the host (the tests use this on the toy plugin).

    Raises:
        AddError: when the requirements do not resolve or install, the library registers no
            env, or every env fails; nothing is written then.
    """
    options = options or AddOptions()
    started = time.monotonic()
    if not requirements:
        raise AddError("give at least one requirement, e.g. `ldm-envs add panda-gym`")
    name = options.name or library_name(requirements[0])
    backend_obj = get_backend(backend) if isinstance(backend, str) else backend
    command = command or "ldm-envs add " + shlex.join(requirements)  # as a shell takes it

    # 1. resolve (refusing with the resolver's log), then build the venv from the pins
    pinned = list(requirements)
    if backend_obj.name != "inprocess":
        _say(console, f"resolving {escape(' '.join(requirements))} for Python {options.python}")
        pinned, _ = pin_requirements(requirements, options.python, options.api)
    glue = glue_files(name, options.entry_points, options.api) if options.entry_points else {}
    staging = Path(tempfile.mkdtemp(prefix="ldm-add-"))
    try:
        return _add(
            requirements,
            pinned,
            name,
            glue,
            staging,
            options,
            started,
            command,
            dest_root,
            backend_obj,
            console,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _add(
    requirements: list[str],
    pinned: list[str],
    name: str,
    glue: dict[str, str],
    staging: Path,
    options: AddOptions,
    started: float,
    command: str,
    dest_root: Path,
    backend_obj: Backend,
    console: Any,
) -> AddResult:
    """`add_library` once the requirements are pinned.

    `staging` holds the glue package (if any) until the plugin folder is written, so a refusal
    leaves nothing behind.
    """
    if glue:
        write_glue(staging / GLUE_DIR, glue)
    try:
        base = EnvLibrarySpec(
            name=name,
            version="0.1.0",
            environment=IsolatedEnvironment(
                python=options.python,
                api=options.api,
                requirements=pinned,
                local_packages=[GLUE_DIR] if glue else [],
            ),
            imports=list(options.imports) + ([glue_module(name)] if glue else []),
            envs=[EnvSpec(id=PLACEHOLDER_ENV_ID)],
        ).located_at(staging)
    except ValidationError as exc:
        raise AddError("\n".join(validation_lines(exc))) from None
    try:
        backend_obj.prepare(base)
    except BuildError as exc:
        raise AddError(f"{exc}\n(nothing was written)") from None

    # 2. the modules that register the envs, and the env ids they register
    if backend_obj.name != "inprocess":
        # the library is the first requirement; the others are its helpers (setuptools for a
        # library importing pkg_resources), whose modules register nothing: --module adds more
        guessed, broken = top_level_modules(base, backend_obj, distribution_names(requirements)[:1])
        if not guessed and not options.imports:
            failures = "".join(f"\n  import {m}: {e}" for m, e in broken.items())
            raise AddError(
                f"found no importable module of {', '.join(requirements)} (nothing was written)"
                f"{failures}\nAdd the distribution of a missing module as another requirement "
                "(pkg_resources: 'setuptools<81'), or name the module that registers the envs "
                "with --module"
            )
        base = base.model_copy(update={"imports": list(dict.fromkeys(guessed + base.imports))})
    if not base.imports:
        raise AddError("name the module that registers the envs with --module")
    _say(console, f"importing {', '.join(base.imports)} and listing the envs it registers")
    listed = {e["id"]: e for e in list_registered_envs(base, backend_obj)}
    origin: dict[str, tuple[str, dict[str, Any]]] = {}  # declared id -> registered id, kwargs
    if options.vary:
        kwarg, source = parse_vary(options.vary)
        bases = _selected(list(listed), options.include, options.exclude)
        values = vary_values(base, backend_obj, source) if bases else []
        for env_id, (gym_id, value) in expand(bases, kwarg, values).items():
            origin[env_id] = (gym_id, {kwarg: value})
    else:
        for env_id in listed:
            try:
                EnvSpec(id=env_id)
                origin[env_id] = (env_id, {})
            except ValueError:
                continue
        origin = {e: origin[e] for e in _selected(list(origin), options.include, options.exclude)}
    ids = list(origin)
    if not ids:
        globs = f" matching --include {options.include}" if options.include else ""
        globs += f" outside --exclude {options.exclude}" if options.exclude else ""
        raise AddError(
            f"{', '.join(requirements)} registers no env{globs} when {', '.join(base.imports)} "
            f"is imported ({len(listed)} registered in all; nothing was written). Name the "
            "module that registers them with --module, give env classes with --entry-point "
            "ID=module:Class, or check the globs"
        )

    # 3. probe and step each env; widen the bounds the steps left (evidence pooled by layout)
    envs = {e: _env_spec(e, listed[origin[e][0]], options, origin[e][1]) for e in ids}
    spec = base.model_copy(update={"envs": list(envs.values())})
    _say(console, f"probing {len(ids)} envs")
    trials = probe_spaces(spec, backend_obj, ids)
    for env_id, trial in trials.items():
        if trial.ok:
            env = envs[env_id].model_copy(
                update={"observation_space": trial.observation, "action_space": trial.action}
            )
            envs[env_id] = env
            roll_out(
                spec.model_copy(update={"envs": [env]}),
                env,
                backend_obj,
                trial,
                steps=options.steps,
                min_steps_per_second=options.min_steps_per_second,
            )
        if trial.ok:
            _say(
                console,
                f"  [green]ok[/] {escape(env_id)}: {trial.steps_per_second:g} random steps/s",
            )
        else:
            _say(console, f"  [red]excluded[/] {escape(env_id)}: {escape(trial.cause)}")
    family = {e: str(listed[origin[e][0]].get("entry_point")) for e in ids}
    pool_widened(list(trials.values()), family)
    for env_id, trial in trials.items():
        if trial.ok and trial.widened and isinstance(trial.observation, BoxSpace):
            bounds = widened_bounds(trial.observation, trial.widened)
            declared = trial.observation.model_copy(
                update={k: v for k, v in bounds.worker_request().items() if v is not None}
            )
            envs[env_id] = envs[env_id].model_copy(
                update={"observation_bounds": bounds, "observation_space": declared}
            )
            dims = ", ".join(str(w.dim) for w in trial.widened)
            _say(console, f"  [yellow]widened[/] {env_id}: observation bounds of dims {dims}")
    passing = [t for t in trials.values() if t.ok]
    if not passing:
        causes = "\n".join(f"  {t.env_id}: {t.cause}" for t in trials.values())
        raise AddError(f"every env of {name} failed (nothing was written):\n{causes}")

    # 4. the manifest, merged with the hand edits of an existing plugin
    root = plugin_dir(name, dest_root)
    manifest_path = root / "src" / module_name(name) / "manifest.yaml"
    created = not root.exists()
    current = read_manifest(manifest_path, name) if manifest_path.exists() else None
    kept_subset = current.ranking_subset if current is not None else []
    generated = base.model_copy(
        update={
            "description": f"{name} envs, added by `ldm-envs add`.",
            "requires_core": _core_range(),
            "envs": [envs[t.env_id] for t in passing],
            "excluded": {t.env_id: t.cause for t in trials.values() if not t.ok},
            "ranking_subset": choose_ranking_subset(list(trials.values()), keep=kept_subset),
        }
    )
    generated = EnvLibrarySpec.model_validate(generated.model_dump()).located_at(staging)
    final = merge_manifest(generated, read_record(root), current)

    # 5. write, register
    if created:
        scaffold_plugin(
            name,
            dest_root=dest_root,
            requirements=list(final.environment.requirements),
            api=final.environment.api,
            python=final.environment.python,
            modules=list(final.imports),
            env_ids=final.env_ids,
            description=final.description,
        )
    if glue:
        write_glue(manifest_path.parent / GLUE_DIR, glue)
    seconds = time.monotonic() - started
    readme = readme_section(final, list(trials.values()), seconds, command)
    recorded = json.loads(options.model_dump_json())
    manifest_path = write_plugin_files(root, final, generated, readme, recorded)
    workspace = workspace_of(dest_root)
    registered_now = False
    dist = DISTRIBUTION_PREFIX + name
    if options.register_plugin and workspace is not None and not registered(workspace, dist):
        _say(console, f"registering {dist} in {workspace} (`uv add {dist}`)")
        try:
            uv_add(workspace, name)
        except LDMEnvsError:
            remove_fresh(root, not created)
            raise
        registered_now = True
    steps = []
    if workspace is None:
        steps.append(f"install the package where ldm-envs runs: `uv pip install -e {root}`")
    elif not options.register_plugin and not registered(workspace, dist):
        steps.append(f"register it, from {workspace}: `uv add {dist}`")
    steps += [
        f"`uv run ldm-envs check {name}` (and `--backend docker`)",
        f"`uv run pytest {root}`",
        f"`uv run ldm-autorl run {name} --candidate ... --top-n ...` (a small pipeline run)",
        f"commit {root}, pyproject.toml and uv.lock",
    ]
    return AddResult(
        name=name,
        root=root,
        manifest=manifest_path,
        spec=final,
        trials=list(trials.values()),
        created=created,
        registered_now=registered_now,
        seconds=round(time.monotonic() - started, 1),
        next_steps=steps,
    )
