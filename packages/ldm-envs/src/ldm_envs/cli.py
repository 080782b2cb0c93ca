"""The `ldm-envs` command line: list, inspect, scaffold, probe, build, check and benchmark."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from ldm_envs.backends import BACKENDS, DEFAULT_BACKEND, check_backend, get_backend
from ldm_envs.checker import check_library, show_env_check
from ldm_envs.cli_app import make_app
from ldm_envs.cli_options import config_options
from ldm_envs.console import make_console
from ldm_envs.errors import LDMEnvsError, validation_lines
from ldm_envs.health import HEALTH_BACKENDS, HealthReport, ago, health_report
from ldm_envs.inputs import require_positive_all
from ldm_envs.manifest import write_manifest
from ldm_envs.plugins import registry
from ldm_envs.probe_config import ProbeConfig

app = make_app(
    "Env libraries, each isolated (venv, docker, inprocess), behind one batched API.",
    renamed_options={"--dest": "--out", "-m": "--module", "--envs": "--num-envs"},
)
# wide enough off a terminal (`> log`): see ldm_envs.console
console = make_console()
err = make_console(stderr=True)

BackendOpt = Annotated[
    str, typer.Option("--backend", "-b", help=f"isolation backend: {', '.join(BACKENDS)}")
]


@app.command("list")
def list_libraries(
    library: Annotated[
        list[str] | None,
        typer.Option("--library", "-l", help="only this library (repeat); lists its exclusions"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the health report as JSON (ldm_envs.health)")
    ] = False,
) -> None:
    """List the installed env libraries: envs declared and excluded, builds, last checks, speed."""
    report = health_report(registry(), library)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))  # plain: a pipe's reader wants no styling
        return
    console.print(_health_table(report))
    # every env the last check could not make or step, with its cause: never a silent count
    for lib in report.libraries:
        for state in lib.backends:
            for env in state.failing:
                err.print(
                    f"[red]{lib.name} {env.env_id} fails through {state.backend}:[/] "
                    f"{escape(env.cause)}  [dim](`ldm-envs check {lib.name} --backend "
                    f"{state.backend} --env {env.env_id}`)[/]",
                    highlight=False,
                )
    if library:
        for lib in report.libraries:
            for ex in lib.excluded:
                console.print(
                    f"{lib.name} excludes {escape(ex.env_id)}: {escape(ex.cause)}",
                    highlight=False,
                    soft_wrap=True,
                )
    elif any(lib.excluded for lib in report.libraries):
        console.print("[dim]each excluded env with its cause: `ldm-envs list -l NAME`[/]")
    for name, why in report.broken.items():
        err.print(f"[red]broken plugin {name}:[/] {escape(why)}", highlight=False)


def _health_table(report: HealthReport) -> Table:
    """The health report as a table that stays readable at 120 columns."""
    table = Table(title="env libraries", show_lines=True)
    table.add_column("library", overflow="fold", ratio=3)
    table.add_column("envs", justify="right")
    table.add_column("excluded", overflow="fold", ratio=3)
    table.add_column("obs -> action", overflow="fold", ratio=2)
    for backend in HEALTH_BACKENDS:
        table.add_column(backend, overflow="fold", ratio=2)
    for lib in report.libraries:
        kinds = Counter(ex.kind for ex in lib.excluded)
        excluded = [str(len(lib.excluded))] + [f"{n} {kind}" for kind, n in kinds.most_common()]
        cells = []
        for state in lib.backends:
            lines = [{True: "built", False: "not built", None: "no engine"}[state.built]]
            if state.checked_at is None:
                lines.append("never checked")
            else:
                mark = "green" if state.ok == state.total and not state.unchecked else "red"
                lines.append(f"[{mark}]check {state.ok}/{state.total} ok[/]")
                lines.append(ago(state.checked_at))
                if state.steps_per_second is not None:
                    lines.append(f"{state.steps_per_second:,.0f} steps/s")
                if state.unchecked:
                    lines.append(f"[yellow]{len(state.unchecked)} unchecked[/]")
            cells.append("\n".join(lines))
        table.add_row(
            f"[bold]{escape(lib.name)}[/]\n{lib.version} · py{lib.python} {lib.api}",
            str(lib.envs_declared),
            escape("\n".join(excluded)) if lib.excluded else "0",
            "\n".join(lib.spaces),
            *cells,
        )
    return table


@app.command()
def show(library: str) -> None:
    """Show a library's isolated environment and declared envs."""
    entry = registry().entry(library)
    spec = entry.spec
    env_block = spec.environment
    console.print(f"[bold]{spec.name}[/] {spec.version}: {escape(spec.description)}")
    console.print(
        escape(f"  plugin: {entry.distribution or entry.plugin}  manifest: {entry.source}")
    )
    console.print(
        f"  python {env_block.python}, api {env_block.api.value}, hash {spec.environment_hash()}"
    )
    console.print(escape(f"  requirements: {', '.join(env_block.requirements)}"))
    if env_block.local_packages:
        console.print(escape(f"  local packages: {', '.join(env_block.local_packages)}"))
    if env_block.build_constraints:
        console.print(escape(f"  build constraints: {', '.join(env_block.build_constraints)}"))
    console.print(f"  ranking subset: {', '.join(spec.ranking_envs)}")
    table = Table()
    for col in ("env", "make", "observation", "action", "max steps", "wrappers"):
        table.add_column(col)
    for env in spec.envs:
        table.add_row(
            env.id,
            env.make_id + (f" {json.dumps(env.kwargs)}" if env.kwargs else ""),
            env.observation_space.describe() if env.observation_space else "(not probed)",
            env.action_space.describe() if env.action_space else "(not probed)",
            str(env.max_episode_steps or "-"),
            ", ".join(env.wrapper_labels()) or "-",
        )
    console.print(table)


@app.command()
def build(
    library: str,
    backend: BackendOpt = DEFAULT_BACKEND,
    rebuild: Annotated[bool, typer.Option(help="rebuild even if cached")] = False,
) -> None:
    """Build (or reuse) the library's isolated environment."""
    spec = registry().get(library)
    ref = get_backend(backend, console=err).prepare(spec, rebuild=rebuild)
    console.print(f"{library} ready through {backend}: {ref}")


@app.command()
def probe(
    library: str,
    backend: BackendOpt = DEFAULT_BACKEND,
    env: Annotated[
        list[str] | None, typer.Option(help="only these env ids (undeclared ones are added)")
    ] = None,
    discover: Annotated[
        bool | None,
        typer.Option(
            "--discover/--no-discover",
            help="add every env the library registers (default: only for a fresh scaffold)",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="print, do not rewrite the manifest")] = False,
) -> None:
    """Fill or refresh the declared spaces from the real library, run in its environment."""
    from ldm_envs.probe import probe_library

    entry = registry().entry(library)
    spec, changes = probe_library(
        entry.spec, get_backend(backend, console=err), env, discover=discover
    )
    for line in changes or ["all declared spaces already match the library"]:
        console.print(f"  {escape(line)}")
    if dry_run or entry.source is None:
        import yaml

        console.print(
            yaml.safe_dump(json.loads(spec.model_dump_json()), sort_keys=False), markup=False
        )
        return
    write_manifest(spec, entry.source)
    console.print(f"[green]wrote[/] {escape(str(entry.source))}")


@app.command()
def new(
    library: Annotated[str, typer.Argument(help="library name, lower-case kebab-case")],
    requirement: Annotated[
        list[str] | None,
        typer.Option("--requirement", "-r", help="pip requirement of the isolated environment"),
    ] = None,
    api: Annotated[str, typer.Option(help="gymnasium | gym26 | gym21")] = "gymnasium",
    python: Annotated[
        str | None, typer.Option(help="the library's Python, e.g. 3.8 (default 3.11)")
    ] = None,
    module: Annotated[
        list[str] | None, typer.Option("--module", help="module to import so envs register")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option(help="env id to declare (none: probe discovers them)")
    ] = None,
    description: Annotated[str, typer.Option(help="one line about the library")] = "",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder holding the plugin packages")
    ] = Path("plugins"),
    force: Annotated[bool, typer.Option(help="overwrite the scaffold's files")] = False,
) -> None:
    """Scaffold a plugin package: pyproject with the entry point, manifest, README, test."""
    from ldm_envs.scaffold import next_steps, scaffold_plugin

    reg = registry()
    if library in reg.libraries and not force:
        entry = reg.libraries[library]
        raise LDMEnvsError(
            f"library {library!r} is already provided by the installed plugin "
            f"{entry.distribution or entry.plugin} (manifest {entry.source}); pick another "
            "name, or pass --force"
        )
    root = scaffold_plugin(
        library,
        dest_root=out,
        requirements=requirement or [],
        api=api,
        python=python,
        modules=module or [],
        env_ids=env or [],
        description=description,
        force=force,
    )
    console.print(f"[green]created[/] {escape(str(root))}", highlight=False)
    console.print("next steps (guide: docs/adding-a-library.md):")
    for i, step in enumerate(next_steps(library, root), 1):
        console.print(f"  {i}. {escape(step)}", highlight=False, soft_wrap=True)


def _json_option(flag: str, text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise LDMEnvsError(f"{flag} {text!r} is not JSON: {exc}") from None


@app.command()
def add(
    requirement: Annotated[
        list[str], typer.Argument(help="pip requirements of the library, e.g. panda-gym")
    ],
    name: Annotated[
        str | None, typer.Option(help="library name (default: the first requirement's)")
    ] = None,
    python: Annotated[str, typer.Option(help="the library's Python")] = "3.11",
    api: Annotated[str, typer.Option(help="gymnasium | gym26 | gym21")] = "gymnasium",
    module: Annotated[
        list[str] | None,
        typer.Option(
            "--module", help="extra module to import so envs register (repeat), as for `new`"
        ),
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="only env ids matching this glob (repeat)")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="leave out env ids matching this glob (repeat)")
    ] = None,
    kwargs: Annotated[
        str | None, typer.Option(help="make() kwargs of every env, as JSON: '{\"a\": 1}'")
    ] = None,
    wrapper: Annotated[
        list[str] | None,
        typer.Option(help="wrapper of every env: module:Class, or JSON {name, kwargs} (repeat)"),
    ] = None,
    max_episode_steps: Annotated[
        int | None, typer.Option(help="time limit of every env (default: the registered one)")
    ] = None,
    seed_kwarg: Annotated[
        str | None, typer.Option(help="make() kwarg that seeds an env (re-made on a seeded reset)")
    ] = None,
    vary: Annotated[
        str | None,
        typer.Option(
            help="KWARG=v1,v2 or KWARG=module:attr: one env <namespace>/<value> per value of a "
            "make() kwarg, for ids selected by --include"
        ),
    ] = None,
    entry_point: Annotated[
        list[str] | None,
        typer.Option(
            "--entry-point",
            help="ID=module:Class: register an env class the library does not register (repeat)",
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option(help="random steps per env (bounds left show up in the hundreds)")
    ] = 1000,
    min_steps_per_second: Annotated[
        float, typer.Option(help="exclude envs slower than this")
    ] = 50.0,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder holding the plugin packages")
    ] = Path("plugins"),
    register: Annotated[
        bool, typer.Option(help="run `uv add` for the plugin in its workspace")
    ] = True,
) -> None:
    """From pip requirements to a checked plugin: build, discover, probe, write, register."""
    import shlex
    import sys

    from ldm_envs.add import AddOptions, add_library
    from ldm_envs.add.glue import parse_entry_points

    wrappers: list[object] = []
    for text in wrapper or []:
        wrappers.append(_json_option("--wrapper", text) if text.lstrip().startswith("{") else text)
    try:
        options = AddOptions(
            name=name,
            python=python,
            api=api,
            imports=module or [],
            include=include or [],
            exclude=exclude or [],
            kwargs=_json_option("--kwargs", kwargs) if kwargs else {},
            wrappers=wrappers,
            max_episode_steps=max_episode_steps,
            seed_kwarg=seed_kwarg,
            vary=vary,
            entry_points=parse_entry_points(entry_point or []),
            steps=steps,
            min_steps_per_second=min_steps_per_second,
            register_plugin=register,
        )
    except ValidationError as exc:
        raise LDMEnvsError("bad option: " + "; ".join(validation_lines(exc))) from None
    result = add_library(
        requirement,
        options,
        dest_root=out,
        console=err,
        command="ldm-envs " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "",
    )
    verb = "created" if result.created else "updated"
    console.print(
        f"[green]{verb}[/] {result.root}: {len(result.spec.envs)} envs declared, "
        f"{len(result.spec.excluded)} excluded, ranking subset "
        f"{', '.join(result.spec.ranking_envs)} ({result.seconds} s)",
        highlight=False,
    )
    for env_id, cause in result.spec.excluded.items():
        console.print(f"  excluded {env_id}: {cause}", highlight=False, soft_wrap=True)
    console.print("next steps (guide: docs/adding-a-library.md):")
    for i, step in enumerate(result.next_steps, 1):
        console.print(f"  {i}. {step}", highlight=False, soft_wrap=True, markup=False)


@app.command()
@config_options(
    ProbeConfig,
    "steps",
    "num_envs",
    check=lambda v: require_positive_all({"--steps": v["steps"], "--num-envs": v["num_envs"]}),
)
def check(
    library: str,
    backend: BackendOpt = DEFAULT_BACKEND,
    *,
    config: ProbeConfig,
    env: Annotated[list[str] | None, typer.Option(help="only these env ids")] = None,
    ranking: Annotated[
        bool, typer.Option("--ranking", help="only the ranking subset (the envs `run` ranks on)")
    ] = False,
) -> None:
    """Random rollouts of every declared env, verifying spaces against what comes back."""
    spec = registry().get(library)
    if ranking and env:
        raise LDMEnvsError("give --ranking or --env, not both")
    if ranking:
        # The ranking subset is what every pipeline run steps first; checking it alone is the
        # cheap gate for a slow backend (docker) without copying five env ids by hand.
        env = spec.ranking_envs
    backend_obj = get_backend(backend, console=err)

    console.print(f"checking [bold]{library}[/] through [bold]{backend}[/]")
    report = check_library(
        spec,
        backend_obj,
        env_ids=env,
        steps=config.steps,
        num_envs=config.num_envs,
        on_env=partial(show_env_check, console),
    )
    good = sum(e.ok for e in report.envs)
    console.print(f"{good}/{len(report.envs)} envs passed in {report.seconds} s")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def bench(
    num_envs: Annotated[int, typer.Option(help="number of CartPole envs")] = 8,
    seconds: Annotated[float, typer.Option(help="time per contender")] = 3.0,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", "-b", help="isolated backends to measure")
    ] = None,
    workers: Annotated[int, typer.Option(help="env worker processes per isolated backend")] = 1,
    sb3: Annotated[bool, typer.Option(help="also compare SB3 PPO training speed")] = True,
    ppo_config: Annotated[
        list[str] | None,
        typer.Option(help="SB3 PPO configurations to time (default: all, see ldm_envs.bench)"),
    ] = None,
    ppo_timesteps: Annotated[int, typer.Option(help="PPO transitions per contender")] = 20_000,
    rounds: Annotated[int, typer.Option(help="interleaved rounds; the median is reported")] = 3,
    compare_socket: Annotated[
        bool, typer.Option(help="also time steps through the socket alone (no shared memory)")
    ] = False,
) -> None:
    """Env-steps/s on CartPole: in-process Sync/Async vector envs vs the isolated backends."""
    from ldm_envs.bench import PPO_CONFIGS, run_benchmark

    unknown = sorted(set(ppo_config or []) - set(PPO_CONFIGS))
    if unknown:
        raise LDMEnvsError(f"unknown --ppo-config {unknown}; known: {sorted(PPO_CONFIGS)}")
    require_positive_all(
        {
            "--num-envs": num_envs,
            "--seconds": seconds,
            "--workers": workers,
            "--rounds": rounds,
            "--ppo-timesteps": ppo_timesteps,
        }
    )
    for name in backend or []:
        check_backend(name, field="--backend")
    run_benchmark(
        console,
        num_envs=num_envs,
        seconds=seconds,
        backends=backend or ["venv"],
        workers=workers,
        sb3=sb3,
        ppo_timesteps=ppo_timesteps,
        ppo_configs=ppo_config,
        rounds=rounds,
        compare_socket=compare_socket,
    )


@app.command("docker-base")
def docker_base(
    python: Annotated[str, typer.Option(help="Python version inside the image")] = "3.11",
    tag: Annotated[str | None, typer.Option(help="image tag (default ldm-base:py<ver>)")] = None,
) -> None:
    """Build a base image locally (debootstrap + docker import), no registry needed."""
    from ldm_envs.backends.docker import build_base

    ref = build_base(python, tag=tag, console=err)
    console.print(f"base image ready: {ref}")


def main() -> None:  # pragma: no cover - console script
    """Entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
