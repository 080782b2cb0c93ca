"""The `probe` stage: each library's spaces against its manifest, then random rollouts.

In this process, through the functions behind `ldm-envs probe` (`probe_library`) and
`ldm-envs check` (`check_library`, printing as it does): both already run the library in its
isolated environment, so a crash there cannot take the suite down. A mismatch stops the
suite here, not hours later in training.
"""

from __future__ import annotations

from functools import partial

from ldm_envs.probe_config import ProbeConfig
from ldm_eval.suite.commands import quote
from ldm_eval.suite.context import StageContext, StageFailure

__all__ = ["run"]

_NUM_ENVS = ProbeConfig.model_fields["num_envs"].default


def run(ctx: StageContext) -> None:
    """Spaces from the real library against the manifest, then random rollouts of the envs."""
    from ldm_envs.backends import get_backend
    from ldm_envs.checker import check_library, show_env_check
    from ldm_envs.errors import LDMError
    from ldm_envs.manifest import write_manifest
    from ldm_envs.plugins import registry
    from ldm_envs.probe import probe_library

    cfg = ctx.suite.probe
    for lib in ctx.suite.libraries:
        ctx.console.rule(f"probe {lib.name} ({lib.backend})")
        env_opts = [a for e in lib.envs or [] for a in ("--env", e)]
        shown = quote(["ldm-envs", "probe", lib.name, "--backend", lib.backend, *env_opts])
        ctx.command(shown + ("" if cfg.write else " --dry-run"))
        try:
            entry = registry().entry(lib.name)
            backend = get_backend(lib.backend, console=ctx.console)
            spec, changes = probe_library(entry.spec, backend, lib.envs)
        except LDMError as exc:
            raise StageFailure(f"probing {lib.name}: {exc}") from None
        if changes:
            for line in changes:
                ctx.console.print(f"  [yellow]differs:[/] {line}", highlight=False)
            if not cfg.write or entry.source is None:
                raise StageFailure(
                    f"the manifest of {lib.name!r} declares other spaces than the library "
                    f"reports ({len(changes)} env(s) above); review and run `{shown}` to "
                    "rewrite it, or set `probe: {write: true}` in the suite"
                )
            write_manifest(spec, entry.source)
            registry(refresh=True)
            ctx.console.print(f"[green]wrote[/] {entry.source}", highlight=False)
        else:
            ctx.console.print(f"  declared spaces match the library ({lib.name})")
        if cfg.steps == 0:
            continue
        ctx.command(
            quote(["ldm-envs", "check", lib.name, "--backend", lib.backend])
            + f" --steps {cfg.steps} "
            + ("" if cfg.num_envs == _NUM_ENVS else f"--num-envs {cfg.num_envs} ")
            + quote(env_opts)
        )
        try:
            report = check_library(
                registry().get(lib.name),
                backend,
                env_ids=lib.envs,
                steps=cfg.steps,
                num_envs=cfg.num_envs,
                on_env=partial(show_env_check, ctx.console),
            )
        except LDMError as exc:
            raise StageFailure(f"checking {lib.name}: {exc}") from None
        if not report.ok:
            bad = [e.env_id for e in report.envs if not e.ok]
            raise StageFailure(f"random rollouts failed in {lib.name}: {', '.join(bad)}")
