"""One exception tree for ldm-envs, so callers can catch by kind and messages name the culprit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm_envs._lazy import deprecated_aliases

if TYPE_CHECKING:
    from pydantic import ValidationError


class LDMError(Exception):
    """The root of every ldm error, in all four packages (ldm-envs, -autorl, -model, -eval).

    Each package has its own subtree (`LDMEnvsError` here, `ldm_autorl.errors.LDMAutoRLError`,
    `ldm_model.errors.LDMModelError`, `ldm_eval.errors.LDMEvalError`), so a caller can catch one
    package's failures or all of them, and the CLIs' one error path turns any of them into a
    single `error: ...` line. It lives here because every package depends on ldm-envs.
    """


class LDMEnvsError(LDMError):
    """Base of every error raised by ldm-envs."""


#: The names before the `LDM*` spelling: deprecated, they warn, removed in the next release.
__getattr__ = deprecated_aliases(__name__, {"LdmError": "LDMError", "LdmEnvsError": "LDMEnvsError"})
if TYPE_CHECKING:
    LdmError = LDMError
    LdmEnvsError = LDMEnvsError


class BadInputError(LDMEnvsError, ValueError):
    """A value given by the user is refused before any work starts; the message names the field.

    The CLIs turn it into one `error: <field>: <why>` line and exit code 2 (bad usage), so a
    count of 0, a mistyped backend or device never launches, records or builds anything.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class SpaceError(LDMEnvsError, ValueError):
    """A space is unsupported, malformed, or beyond the paper's size limits."""


class ManifestError(LDMEnvsError, ValueError):
    """A plugin manifest is malformed; the message names the plugin and the field."""


class PluginError(LDMEnvsError):
    """A plugin could not be loaded (import failure, wrong entry-point target, name mismatch)."""


class UnknownLibraryError(LDMEnvsError, KeyError):
    """A library name is not registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownEnvError(LDMEnvsError, KeyError):
    """An env id is not declared by its library; the message lists the declared ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BuildError(LDMEnvsError):
    """Building an isolated environment failed; carries the failing step's log."""

    def __init__(self, library: str, step: str, log: str) -> None:
        self.library = library
        self.step = step
        self.log = log
        tail = "\n".join(log.strip().splitlines()[-40:])
        super().__init__(
            f"building the environment of library {library!r} failed at {step}:\n{tail}"
        )


class WorkerError(LDMEnvsError):
    """A worker failed: it crashed, hung, or an env inside it raised."""

    def __init__(self, library: str, env_ids: list[str], cause: str) -> None:
        self.library = library
        self.env_ids = list(env_ids)
        self.cause = cause
        super().__init__(f"library {library!r}, env(s) {', '.join(self.env_ids)}: {cause}")


class WorkerCrashedError(WorkerError):
    """The worker process died or closed its connection."""


class WorkerTimeoutError(WorkerError):
    """The worker did not answer within the time limit (hung env or stuck process)."""


class EnvRaisedError(WorkerError):
    """An env raised inside the worker; the cause holds the remote traceback."""


class PoolClosedError(LDMEnvsError, RuntimeError):
    """A closed pool (or a vector env over it) was stepped, reset or queried.

    Raised instead of restarting the workers as if they had crashed: a closed pool starts
    nothing again, so no worker outlives the pool that forgot it.
    """


class ActionError(LDMEnvsError, ValueError):
    """An action lies outside the env's declared action space."""


#: What pydantic puts before the message of a `ValueError` raised by a validator.
_VALUE_ERROR_PREFIX = "Value error, "


def validation_lines(
    exc: ValidationError, *, field: str = "field ", root: str | None = "(root)"
) -> list[str]:
    """One `<field><location>: <why>` line per problem of a pydantic error.

    Pydantic's own text spans several lines per problem and ends with links to its docs; a user
    needs the field path and the reason, in one line each, prefixed by whatever names the input
    (a plugin, a suite file, an option). `why` loses pydantic's `Value error, ` prefix, and a
    reason of several lines gives one line each. A problem of the whole model (no location)
    reads `<field><root>: <why>`, or the bare reason when `root` is None.
    """
    lines: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        for why in str(err["msg"]).removeprefix(_VALUE_ERROR_PREFIX).splitlines() or [""]:
            lines.append(f"{field}{loc or root}: {why}" if loc or root is not None else why)
    return lines


__all__ = [
    "ActionError",
    "BadInputError",
    "BuildError",
    "EnvRaisedError",
    "LDMEnvsError",
    "LDMError",
    "ManifestError",
    "PluginError",
    "PoolClosedError",
    "SpaceError",
    "UnknownEnvError",
    "UnknownLibraryError",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerTimeoutError",
    "validation_lines",
]
