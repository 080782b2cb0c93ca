"""The primitives every package shares: the 10% windows, atomic writes, pydantic error lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError, field_validator

from ldm_envs.atomic import TMP_MARK, atomic_path, atomic_write_json, atomic_write_text
from ldm_envs.errors import validation_lines
from ldm_envs.stats import WINDOW_FRACTION, first_last_means, first_last_window, window_size


def test_window_is_the_ceiling_of_a_tenth_and_at_least_one() -> None:
    assert WINDOW_FRACTION == 0.10
    sizes = {n: window_size(n) for n in (0, 1, 9, 10, 11, 20, 21, 30, 100, 101)}
    assert sizes == {0: 0, 1: 1, 9: 1, 10: 1, 11: 2, 20: 2, 21: 3, 30: 3, 100: 10, 101: 11}
    # integer arithmetic is the reference: float noise never adds an episode
    assert all(window_size(n) == max(1, -(-n // 10)) for n in range(1, 5000))


def test_every_package_cuts_the_same_windows() -> None:
    from ldm_autorl.stats import window
    from ldm_eval.normalize import edge_means

    for n in (1, 7, 10, 11, 29, 30, 31, 333):
        returns = [float(i * i % 17) for i in range(n)]
        first, last = first_last_window(returns)
        assert window(returns, "first").tolist() == first
        assert window(returns, "last").tolist() == last
        assert edge_means(returns) == first_last_means(returns)
    assert first_last_means([]) == (None, None)
    assert window([], "first").size == 0
    assert first_last_window(np.arange(20.0))[1].tolist() == [18.0, 19.0]


def test_atomic_path_publishes_only_a_finished_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.bin"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert TMP_MARK in tmp.name and tmp.name.startswith(".") and tmp.parent == target.parent
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.bin"]  # no leftover
    with atomic_path(target, suffix=".zip") as tmp:
        assert tmp.name.endswith(".zip")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.bin"]


def test_atomic_write_json(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    atomic_write_json(path, {"b": np.int64(2), "a": 1}, sort_keys=True, indent=1, default=int)
    assert path.read_text() == '{\n "a": 1,\n "b": 2\n}'
    assert json.loads(path.read_text()) == {"a": 1, "b": 2}


class _Inner(BaseModel):
    lr: float


class _Config(BaseModel):
    name: str
    inner: _Inner

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty\nname the run")
        return value


def _error(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Config.model_validate(data)
    return info.value


def test_validation_lines_name_the_field_one_line_each() -> None:
    exc = _error({"name": "", "inner": {"lr": "fast"}})
    assert validation_lines(exc) == [
        "field name: must not be empty",
        "field name: name the run",
        "field inner.lr: Input should be a valid number, unable to parse string as a number",
    ]
    assert validation_lines(exc, field="option ")[0] == "option name: must not be empty"
    whole = _error([1, 2])  # not a mapping: a problem of the whole model
    assert validation_lines(whole) == ["field (root): " + whole.errors()[0]["msg"]]
    assert validation_lines(whole, root="(top level)")[0].startswith("field (top level): ")
    assert validation_lines(whole, root=None) == [whole.errors()[0]["msg"]]
