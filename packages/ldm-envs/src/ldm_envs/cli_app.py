"""The typer app the four ldm CLIs are built from: old spellings, `--debug`, the error path.

`ldm-envs`, `ldm-autorl`, `ldm-model` and `ldm-eval` name the same concept the same way (the
table is in the root README and in `tests/test_cli_vocabulary.py`, which fails on a new drift).
A name that changed stays for one release as a hidden alias: each CLI passes its renames to
`make_app`, and its group rewrites an old spelling to the new one before click parses the
command, with one `warning: --old is deprecated, use --new` line on stderr. An alias is not an
option of its own, so help never shows it and a command's signature stays the one concept.

The group also runs every command inside the CLIs' one error path (`ldm_envs.cli_errors`), and
carries the global `--debug` flag (also `LDM_DEBUG=1`) that adds the traceback to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ldm_envs.cli_errors import DEBUG_ENV, REPORTED, report
from ldm_envs.console import make_console

#: The global option that adds the traceback to an `error:` line.
DEBUG_OPTION = "--debug"
_DEBUG_META = "ldm.debug"


def _warn(message: str) -> None:
    make_console(stderr=True).print(
        f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True
    )


class LDMGroup(TyperGroup):
    """A typer group that accepts its CLI's old spellings and reports errors in one way.

    `make_app` subclasses it per CLI with that CLI's renames (old spelling -> new one).
    """

    renamed_options: ClassVar[Mapping[str, str]] = MappingProxyType({})
    renamed_commands: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        """Map an old command name and old option spellings to the new ones, warning once each."""
        old = args[0] if args else None
        if old is not None and old in self.renamed_commands and old not in self.commands:
            new = self.renamed_commands[old]
            _warn(f"{ctx.command_path} {old} is deprecated, use {ctx.command_path} {new}")
            args = [new, *args[1:]]
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            rest = self._rewrite_options(ctx, cmd, rest)
        return name, cmd, rest

    def _rewrite_options(self, ctx: Any, cmd: Any, args: list[str]) -> list[str]:
        """`args` with each old option spelling the command lacks replaced by its new one.

        `--old=value` keeps its value; a short alias is matched as a whole token. A `--debug`
        after the command name is the global flag, lifted out. Nothing after `--` is touched.
        """
        spellings = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        out: list[str] = []
        warned: set[str] = set()
        for i, token in enumerate(args):
            if token == "--":
                out += args[i:]
                break
            if token == DEBUG_OPTION and DEBUG_OPTION not in spellings:
                ctx.meta[_DEBUG_META] = True
                continue
            option, sep, value = token.partition("=") if token.startswith("--") else (token, "", "")
            new = self.renamed_options.get(option)
            if new is not None and option not in spellings and new in spellings:
                if option not in warned:
                    warned.add(option)
                    _warn(f"{option} is deprecated, use {new}")
                token = f"{new}{sep}{value}"
            out.append(token)
        return out

    def invoke(self, ctx: Any) -> Any:
        """Run the command; an exception of `REPORTED` leaves through `cli_errors.report`."""
        try:
            return super().invoke(ctx)
        except REPORTED as exc:
            debug = bool(ctx.params.get("debug")) or bool(ctx.meta.get(_DEBUG_META))
            report(make_console(stderr=True), exc, debug=debug)


def _global_options(
    debug: Annotated[
        bool,
        typer.Option(
            DEBUG_OPTION,
            help=f"on an error, print its traceback above the `error:` line (or {DEBUG_ENV}=1)",
        ),
    ] = False,
) -> None:
    # read back by LDMGroup.invoke from the context's params: nothing global to set
    del debug


def make_app(
    help: str,
    *,
    renamed_options: Mapping[str, str] | None = None,
    renamed_commands: Mapping[str, str] | None = None,
    **options: Any,
) -> typer.Typer:
    """A typer app with the CLIs' shared behaviour (see the module docstring).

    Args:
        help: the app's help text.
        renamed_options: old option spelling -> new one, e.g. `{"--env-id": "--env"}`; applied
            to every command that has the new spelling and not the old one.
        renamed_commands: old command name -> new one, e.g. `{"info": "show"}`.
        **options: passed to `typer.Typer` (`no_args_is_help` and `pretty_exceptions_enable`
            are set already).
    """
    group = type(
        "LDMGroup",
        (LDMGroup,),
        {
            "renamed_options": MappingProxyType(dict(renamed_options or {})),
            "renamed_commands": MappingProxyType(dict(renamed_commands or {})),
        },
    )
    options.setdefault("no_args_is_help", True)
    options.setdefault("pretty_exceptions_enable", False)
    return typer.Typer(cls=group, help=help, callback=_global_options, **options)


__all__ = ["DEBUG_OPTION", "LDMGroup", "make_app"]
