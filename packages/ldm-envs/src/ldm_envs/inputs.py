"""Checks of user-given counts, budgets and names, shared by the four packages and their CLIs.

Each check raises `BadInputError` naming the field as the caller spells it (`--budget` in a CLI,
`budget` in the Python API), so a bad value is refused before any run, MLflow record, venv
build or rollout starts. A count of 0 never silently means "the default" or "one".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ldm_envs.errors import BadInputError


def require_positive(field: str, value: float | None) -> None:
    """Refuse a count or budget below 1 (None: the caller's default, accepted).

    Raises:
        BadInputError: naming `field` and the value.
    """
    if value is not None and value <= 0:
        raise BadInputError(field, f"must be a positive number, got {value:g}")


def require_at_least(field: str, value: float | None, minimum: float, *, meaning: str = "") -> None:
    """Refuse a value below `minimum` (None accepted); `meaning` says what the minimum does.

    Raises:
        BadInputError: naming `field` and the value.
    """
    if value is not None and value < minimum:
        note = f" ({minimum:g}: {meaning})" if meaning else ""
        raise BadInputError(field, f"must be at least {minimum:g}{note}, got {value:g}")


def require_positive_all(values: Mapping[str, float | None]) -> None:
    """`require_positive` over several fields at once: `{"--steps": steps, ...}`.

    Raises:
        BadInputError: naming the first field below 1.
    """
    for field, value in values.items():
        require_positive(field, value)


def require_choice(field: str, value: str, choices: Iterable[str], *, what: str = "") -> str:
    """Refuse a name that is not one of `choices`, listing them.

    Returns:
        The name, unchanged.

    Raises:
        BadInputError: naming `field`, the unknown name and the known ones.
    """
    known = list(choices)
    if value not in known:
        kind = f"{what} " if what else ""
        raise BadInputError(field, f"unknown {kind}{value!r}; choose one of: {', '.join(known)}")
    return value


__all__ = ["require_at_least", "require_choice", "require_positive", "require_positive_all"]
