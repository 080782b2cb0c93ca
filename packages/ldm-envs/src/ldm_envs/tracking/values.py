"""What MLflow accepts: its size limits, and params and tags shaped to fit them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

# MLflow's limits (mlflow.utils.validation); values beyond them are truncated, batches split.
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_TAGS_PER_BATCH = 100

_T = TypeVar("_T")


def _natural(value: str) -> tuple[int, int | str]:
    """Order numbers as numbers ("2" before "10"), then everything else by name."""
    try:
        return (0, int(value))
    except ValueError:
        return (1, value)


def _same(old: float, new: float) -> bool:
    """Equal metric values, NaN equal to NaN (a summary that stays NaN is not re-logged)."""
    old, new = float(old), float(new)
    return old == new or (math.isnan(old) and math.isnan(new))


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def _param_str(value: Any) -> str:
    """Lists and tuples as JSON (stable across a JSON round trip), the rest as MLflow does."""
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), default=str, sort_keys=True)
    return str(value)
