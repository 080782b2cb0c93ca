"""The CLIs' one error path (`ldm_envs.cli_errors`): which exceptions exit 2, which exit 1."""

from __future__ import annotations

import importlib

import pytest
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from ldm_envs.cli import app
from ldm_envs.cli_errors import (
    BAD_INPUT_ERRORS,
    BAD_INPUT_EXIT,
    FAILURE_EXIT,
    REPORTED,
    error_text,
    exit_code,
)
from ldm_envs.dataset.errors import CorruptIndexError
from ldm_envs.errors import BadInputError, BuildError, LDMError, UnknownLibraryError

runner = CliRunner()


class _Options(BaseModel):
    steps: int


def _validation_error() -> ValidationError:
    try:
        _Options.model_validate({"steps": "many"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name", sorted(BAD_INPUT_ERRORS))
def test_every_bad_input_name_is_an_ldm_error_class(name):
    module, _, qualname = name.rpartition(".")
    cls = getattr(importlib.import_module(module), qualname)
    assert issubclass(cls, LDMError) and issubclass(cls, REPORTED)


def test_bad_input_exits_2_failed_work_exits_1():
    from ldm_eval.errors import StageError, SuiteError
    from ldm_model.errors import CheckpointNotFoundError, CorruptCheckpointError, TrainingError

    bad = [
        BadInputError("--steps", "must be a positive number, got 0"),
        _validation_error(),
        CorruptIndexError("data/index", "truncated"),
        CorruptCheckpointError("ckpt/checkpoint.json", "not a checkpoint record"),
        SuiteError("field libraries: required"),
    ]
    failed = [
        UnknownLibraryError("unknown env library 'nope'"),
        BuildError("toy", "pip install", "log"),
        TrainingError("no index"),
        CheckpointNotFoundError("no checkpoint at x"),
        StageError("autorl", "ldm-autorl run", "exit 1"),
        FileNotFoundError("no data root at x"),
        "a plain message",
    ]
    assert [exit_code(e) for e in bad] == [BAD_INPUT_EXIT] * len(bad)
    assert [exit_code(e) for e in failed] == [FAILURE_EXIT] * len(failed)
    assert (BAD_INPUT_EXIT, FAILURE_EXIT) == (2, 1)


def test_a_quoted_pydantic_error_becomes_one_line():
    cause = _validation_error()
    try:
        try:
            raise CorruptIndexError("x", f"unreadable ({cause})") from cause
        except CorruptIndexError as inner:
            raise LDMError(f"wrapped: {inner}") from inner
    except LDMError as exc:
        text = error_text(exc)
    assert "\n" not in text and "pydantic.dev" not in text
    assert text.startswith("wrapped: corrupt index x: unreadable (steps: Input should be")
    assert error_text(cause).startswith("option steps: Input should be a valid integer")
    assert error_text(KeyError("no such thing")) == "no such thing"


def test_an_error_is_one_line_and_debug_adds_the_traceback(monkeypatch):
    result = runner.invoke(app, ["show", "nope"])
    assert result.exit_code == 1
    assert result.output.startswith("error: unknown env library 'nope'")
    assert "Traceback" not in result.output
    for args, env in ((["--debug", "show", "nope"], None), (["show", "nope"], "1")):
        if env:
            monkeypatch.setenv("LDM_DEBUG", env)
        debug = runner.invoke(app, args)
        assert debug.exit_code == 1
        assert "Traceback (most recent call last)" in debug.output
        assert "UnknownLibraryError" in debug.output
        assert debug.output.strip().splitlines()[-1].startswith("error: unknown env library")


def test_an_unexpected_exception_is_not_swallowed(monkeypatch):
    from ldm_envs import cli

    def boom():
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "registry", boom)
    result = runner.invoke(app, ["show", "toy"])
    assert isinstance(result.exception, RuntimeError)


def test_an_error_keeps_its_square_brackets():
    """Rich reads `[y]` as markup: an error quoting a requirement's extras must print it intact."""
    result = runner.invoke(app, ["show", "gymnasium[box2d]"])
    assert result.exit_code == 1
    assert result.output.startswith("error: unknown env library 'gymnasium[box2d]'")
