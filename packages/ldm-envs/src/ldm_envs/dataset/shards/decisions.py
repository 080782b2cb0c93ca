"""Filter decisions: the `<shard>.decision.json` sidecar that says whether a shard is kept."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ldm_envs.atomic import atomic_write_json
from ldm_envs.dataset.errors import CorruptDecisionError, ShardInputError
from ldm_envs.dataset.shards.format import DECISION_SUFFIX


def decision_path(path: Path) -> Path:
    """The filter-decision sidecar of a shard: `<shard>.decision.json`."""
    path = Path(path)
    return path.with_name(path.name + DECISION_SUFFIX)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_decision(path: Path, decision: dict[str, Any]) -> None:
    """Atomically write the filter decision of a shard next to it.

    `decision` is `{"kept": bool, "reason": str, "stats": {...}}` (stats optional, any JSON;
    numpy scalars and arrays are converted). Other keys are kept as given.
    """
    path = Path(path)
    if not isinstance(decision.get("kept"), bool | np.bool_):
        raise ShardInputError(f"decision for {path}: 'kept' must be a bool, got {decision!r}")
    if not isinstance(decision.get("reason"), str):
        raise ShardInputError(f"decision for {path}: 'reason' must be a string")
    stats = decision.get("stats", {})
    if not isinstance(stats, Mapping):
        raise ShardInputError(f"decision for {path}: 'stats' must be a mapping")
    payload = {**decision, "kept": bool(decision["kept"]), "stats": dict(stats)}
    atomic_write_json(decision_path(path), payload, sort_keys=True, indent=1, default=_json_default)


def read_decision(path: Path) -> dict[str, Any] | None:
    """The shard's filter decision, or None when it has none yet.

    Raises:
        CorruptDecisionError: the sidecar is not JSON or lacks `kept`/`reason`.
    """
    target = decision_path(path)
    try:
        text = target.read_text()
    except FileNotFoundError:
        return None
    try:
        decision = json.loads(text)
    except ValueError as exc:
        raise CorruptDecisionError(target, f"not JSON ({exc})") from exc
    if (
        not isinstance(decision, dict)
        or not isinstance(decision.get("kept"), bool)
        or not isinstance(decision.get("reason"), str)
        or not isinstance(decision.get("stats", {}), dict)
    ):
        raise CorruptDecisionError(target, "expected {'kept': bool, 'reason': str, 'stats': {}}")
    decision.setdefault("stats", {})
    return decision
