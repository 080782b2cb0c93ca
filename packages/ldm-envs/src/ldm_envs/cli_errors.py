"""The one error path of the four ldm CLIs: an `error: ...` line on stderr, never a traceback.

Every command of `ldm-envs`, `ldm-autorl`, `ldm-model` and `ldm-eval` runs inside the group of
`ldm_envs.cli_app`, which hands any exception of `REPORTED` to `report`: the same exception
reads the same in all four, and no command keeps its own `except (A, B, C)` tuple. The
traceback is printed only with the global `--debug` flag (or `LDM_DEBUG=1`), above the line.

Exit codes follow click's convention:

- 2: bad input, input the user gave that cannot be used (`BAD_INPUT_ERRORS`): an option value
  refused before any work (`BadInputError`, a pydantic `ValidationError` of the options), or a
  corrupt file given as input (a dataset index or shard, a checkpoint, a suite file);
- 1: the work itself failed (an unknown library at lookup, a failed build, a failed run).
"""

from __future__ import annotations

import os
import traceback
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.markup import escape

from ldm_envs.errors import LDMError, validation_lines

if TYPE_CHECKING:
    from rich.console import Console

#: Exit code of input the user gave that cannot be used.
BAD_INPUT_EXIT = 2
#: Exit code of work that failed.
FAILURE_EXIT = 1

#: What the CLIs print as one `error:` line. Besides `LDMError`, the builtins the stages still
#: raise for conditions the user caused (a missing file, an unknown name, a refused value); a
#: pydantic `ValidationError` is a `ValueError`.
REPORTED: tuple[type[BaseException], ...] = (
    LDMError,
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
)

#: The exceptions that mean bad input (exit 2), by `module.qualname`: ldm-envs sits below the
#: other three packages and cannot import their errors, and an instance's class is loaded
#: whenever one is raised. A subclass counts as its base.
BAD_INPUT_ERRORS = frozenset(
    {
        "ldm_envs.errors.BadInputError",
        "ldm_envs.dataset.errors.CorruptFileError",  # a shard, an index, a decision sidecar
        "ldm_model.errors.CorruptCheckpointError",
        "ldm_model.errors.ShardUnavailableError",  # a shard found corrupt while training
        "ldm_eval.errors.SuiteError",  # the suite file or one of its options
    }
)

#: The environment variable that turns `--debug` on for every ldm CLI (`LDM_DEBUG=1`).
DEBUG_ENV = "LDM_DEBUG"


def _is_validation_error(exc: object) -> bool:
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return False
    return isinstance(exc, ValidationError)


def _compact(exc: BaseException, *, prefix: str = "") -> str:
    """A pydantic error as one `<prefix><field>: <why>` per error, joined with `; `."""
    root = "(all)" if prefix else None
    return "; ".join(validation_lines(exc, field=prefix, root=root))  # type: ignore[arg-type]


def error_text(exc: BaseException | str) -> str:
    """The message of `exc`; a pydantic error becomes one `option <field>: <why>` per error.

    Pydantic's own text spans several lines per error and ends with links to its docs; the
    CLIs' options are fields of their settings models, so the field name is what a user needs.
    An error that quotes a pydantic error it was raised from, directly or through others (a
    corrupt `checkpoint.json`, say), gets the compact text in place of the quote: one line.
    """
    if isinstance(exc, str):
        return exc
    if _is_validation_error(exc):
        return _compact(exc, prefix="option ")
    if isinstance(exc, KeyError) and type(exc).__str__ is KeyError.__str__ and exc.args:
        return str(exc.args[0])  # a plain KeyError's str() adds quotes around the message
    text = str(exc)
    for cause in _causes(exc):
        if _is_validation_error(cause) and str(cause) in text:
            text = text.replace(str(cause), _compact(cause))
    return text


def _causes(exc: BaseException, *, depth: int = 8) -> list[BaseException]:
    """The exceptions `exc` was raised from (`raise ... from`), nearest first."""
    chain: list[BaseException] = []
    while exc.__cause__ is not None and len(chain) < depth:
        exc = exc.__cause__
        chain.append(exc)
    return chain


def is_bad_input(exc: BaseException | str) -> bool:
    """Whether `exc` is input the user gave that cannot be used (see the module docstring)."""
    if isinstance(exc, str):
        return False
    if _is_validation_error(exc):
        return True
    return any(f"{c.__module__}.{c.__qualname__}" in BAD_INPUT_ERRORS for c in type(exc).__mro__)


def exit_code(exc: BaseException | str) -> int:
    """2 for bad input (see the module docstring), 1 otherwise."""
    return BAD_INPUT_EXIT if is_bad_input(exc) else FAILURE_EXIT


def debug_from_env() -> bool:
    """Whether `LDM_DEBUG` asks for tracebacks (`1`, `true`, `yes`, `on`)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def fail(console: Console, exc: BaseException | str, *, code: int | None = None) -> NoReturn:
    """Print `error: <message>` on `console` and leave with `code` (default: `exit_code(exc)`).

    Raises:
        typer.Exit: always.
    """
    console.print(f"[bold red]error:[/] {escape(error_text(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code(exc) if code is None else code)


def report(console: Console, exc: BaseException, *, debug: bool = False) -> NoReturn:
    """The error path: the traceback when debugging, then `fail`'s one line and exit code.

    Raises:
        typer.Exit: always.
    """
    if debug or debug_from_env():
        console.file.flush()
        traceback.print_exception(exc, file=console.file)
    fail(console, exc)


__all__ = [
    "BAD_INPUT_ERRORS",
    "BAD_INPUT_EXIT",
    "DEBUG_ENV",
    "FAILURE_EXIT",
    "REPORTED",
    "debug_from_env",
    "error_text",
    "exit_code",
    "fail",
    "is_bad_input",
    "report",
]
