"""Each stage's defaults and help texts are written once, in its config model (issue 16, item 2).

The test walks the four click command trees, as `test_cli_vocabulary.py` does, and fails when
a CLI default drifts from its model: an option derived by `ldm_envs.cli_options` that lost its
model's default or description, an option that mirrors a model field by hand (`MIRRORS`) with
another default, or a suite section whose default differs from its stage model's without
being one of the suite's documented choices (`SUITE_OVERRIDES`).
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from typer.core import TyperOption

from ldm_autorl.cli import app as autorl_app
from ldm_autorl.config import AutoRLConfig
from ldm_envs.cli import app as envs_app
from ldm_envs.cli_options import ATTRIBUTE, field_default
from ldm_envs.probe_config import ProbeConfig
from ldm_eval.cli import app as eval_app
from ldm_eval.plan import EvaluateConfig
from ldm_eval.suite.config import (
    SUITE_TRAIN_FIELDS,
    EvalSection,
    LibraryConfig,
    ModelSection,
    ProbeSection,
)
from ldm_model.cli import app as model_app
from ldm_model.training import TrainConfig

APPS = {
    "ldm-envs": envs_app,
    "ldm-autorl": autorl_app,
    "ldm-model": model_app,
    "ldm-eval": eval_app,
}

#: The stage command of each model: the one whose options are derived from every field it shows.
STAGE_COMMANDS = {
    ("ldm-envs", "check"): ProbeConfig,
    ("ldm-autorl", "rank"): AutoRLConfig,
    ("ldm-autorl", "train"): AutoRLConfig,
    ("ldm-autorl", "filter"): AutoRLConfig,
    ("ldm-autorl", "run"): AutoRLConfig,
    ("ldm-model", "train"): TrainConfig,
    ("ldm-eval", "evaluate"): EvaluateConfig,
}

#: Options that are not derived but mean a model's field: (cli, command, option) -> the field.
MIRRORS: dict[tuple[str, str, str], tuple[type[BaseModel], str]] = {
    ("ldm-eval", "report", "resamples"): (EvaluateConfig, "resamples"),
    ("ldm-eval", "sizes", "lr"): (TrainConfig, "lr"),
    ("ldm-eval", "sizes", "device"): (TrainConfig, "device"),
    ("ldm-eval", "sizes", "episodes"): (EvaluateConfig, "episodes"),
    ("ldm-eval", "sizes", "rollouts"): (EvaluateConfig, "rollouts"),
    ("ldm-eval", "sizes", "backend"): (EvaluateConfig, "backend"),
    ("ldm-eval", "sizes", "eval_device"): (EvaluateConfig, "device"),
    ("ldm-eval", "sizes", "resamples"): (EvaluateConfig, "resamples"),
    ("ldm-envs", "check", "backend"): (AutoRLConfig, "backend"),
    ("ldm-envs", "probe", "backend"): (AutoRLConfig, "backend"),
}

#: Suite defaults chosen apart from the CLI's, each on purpose: (section model, field).
SUITE_OVERRIDES = {
    # the suite probes every library first; its check only has to show that the envs step
    (ProbeSection, "steps"),
}


def _command(cli: str, name: str) -> Any:
    return typer.main.get_command(APPS[cli]).commands[name]


def _same(a: Any, b: Any) -> bool:
    """Equal as the CLI sees them: a list default reads back as a tuple, a Path as a str."""
    return to_jsonable_python(a) == to_jsonable_python(b)


def _derived(cmd: Any) -> Any:
    return getattr(cmd.callback, ATTRIBUTE, None)


@pytest.mark.parametrize(("cli", "name"), STAGE_COMMANDS, ids=lambda v: str(v))
def test_a_stage_command_derives_its_options_from_its_model(cli, name):
    cmd = _command(cli, name)
    spec = _derived(cmd)
    assert spec is not None and spec.model is STAGE_COMMANDS[cli, name]
    params = {p.name: p for p in cmd.params}
    for opt in spec.options:
        param = params[opt.field]
        default = field_default(spec.model, opt.field)
        assert _same(param.default, default), (opt.field, param.default, default)
        assert param.help == spec.model.model_fields[opt.field].description, opt.field
        assert param.help, f"{spec.model.__name__}.{opt.field} has no description"


def test_no_option_repeats_a_derived_field_by_hand():
    """A plain option named as a field its command derives would hide the model's default."""
    for cli, app in APPS.items():
        for name, cmd in typer.main.get_command(app).commands.items():
            spec = _derived(cmd)
            if spec is None:
                continue
            fields = [o.field for o in spec.options]
            names = [p.name for p in cmd.params]
            assert sorted(set(fields) - set(names)) == [], f"{cli} {name}"
            assert len(names) == len(set(names)), f"{cli} {name}"


@pytest.mark.parametrize(("cli", "name", "option"), MIRRORS, ids=lambda v: str(v))
def test_a_mirrored_option_keeps_its_models_default(cli, name, option):
    model, field = MIRRORS[cli, name, option]
    (param,) = [p for p in _command(cli, name).params if p.name == option]
    assert isinstance(param, TyperOption)
    assert _same(param.default, field_default(model, field))


@pytest.mark.parametrize(
    ("section", "stage"),
    [
        (LibraryConfig, AutoRLConfig),
        (ProbeSection, ProbeConfig),
        (ModelSection, TrainConfig),
        (EvalSection, EvaluateConfig),
    ],
    ids=lambda m: m.__name__,
)
def test_a_suite_section_embeds_its_stage_model(section, stage):
    assert issubclass(section, stage)
    fields = set(stage.model_fields) - (SUITE_TRAIN_FIELDS if stage is TrainConfig else set())
    drift = [
        f
        for f in sorted(fields)
        if (section, f) not in SUITE_OVERRIDES
        and not _same(field_default(section, f), field_default(stage, f))
    ]
    assert drift == []
    for model, field in SUITE_OVERRIDES:  # an override that became the default is stale
        base = next(b for b in model.__mro__[1:] if field in getattr(b, "model_fields", {}))
        assert not _same(field_default(model, field), field_default(base, field))


def test_the_lr_default_is_written_once():
    """The example of issue 16: lr 2.5e-4 was a literal in three places."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "packages"
    hits = [
        str(p.relative_to(root))
        for p in root.glob("*/src/**/*.py")
        if "2.5e-4" in p.read_text(encoding="utf-8")
    ]
    assert hits == ["ldm-model/src/ldm_model/training/config.py"]
