"""The one error path of the four ldm CLIs: an `error: ...` line on stderr, never a traceback.

Every CLI's `_fail` goes through `fail`, so the same exception reads the same in `ldm-envs`,
`ldm-autorl`, `ldm-model` and `ldm-eval`. Exit codes follow click's convention:

- 2: bad input, refused before any work (`BadInputError`, a pydantic `ValidationError` of the
  options): nothing was launched, recorded or built;
- 1: the work itself failed (an unknown library at lookup, a failed build, a failed run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer

from ldm_envs.errors import BadInputError

if TYPE_CHECKING:
    from rich.console import Console

#: Exit code of a value refused before any work.
BAD_INPUT_EXIT = 2
#: Exit code of work that failed.
FAILURE_EXIT = 1


def _is_validation_error(exc: BaseException) -> bool:
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return False
    return isinstance(exc, ValidationError)


def error_text(exc: BaseException | str) -> str:
    """The message of `exc`; a pydantic error becomes one `option <field>: <why>` per error.

    Pydantic's own text spans several lines per error and ends with links to its docs; the
    CLIs' options are fields of their settings models, so the field name is what a user needs.
    """
    if isinstance(exc, str):
        return exc
    if _is_validation_error(exc):
        return "; ".join(
            f"option {'.'.join(map(str, e['loc'])) or '(all)'}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()  # type: ignore[attr-defined]
        )
    if isinstance(exc, KeyError) and type(exc).__str__ is KeyError.__str__ and exc.args:
        return str(exc.args[0])  # a plain KeyError's str() adds quotes around the message
    return str(exc)


def exit_code(exc: BaseException | str) -> int:
    """2 for input refused before any work (see the module docstring), 1 otherwise."""
    if isinstance(exc, BadInputError) or (not isinstance(exc, str) and _is_validation_error(exc)):
        return BAD_INPUT_EXIT
    return FAILURE_EXIT


def fail(console: Console, exc: BaseException | str, *, code: int | None = None) -> NoReturn:
    """Print `error: <message>` on `console` and leave with `code` (default: `exit_code(exc)`).

    Raises:
        typer.Exit: always.
    """
    console.print(f"[bold red]error:[/] {error_text(exc)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code(exc) if code is None else code)


__all__ = ["BAD_INPUT_EXIT", "FAILURE_EXIT", "error_text", "exit_code", "fail"]
