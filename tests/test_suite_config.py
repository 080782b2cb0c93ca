"""The suite's sections embed the stage configs (issue 16, item 2) without breaking a suite file.

A suite file keeps its field names (`workers`, `config`, `check_steps`), and a suite that ran
before keeps its stage fingerprints and model folder: finished stages are not run again after
the upgrade. The golden values were computed by the code before the sections embedded the
stage models (commit b53c71f).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ldm_eval.errors import SuiteError
from ldm_eval.suite.config import load_suite
from ldm_eval.suite.stages.train import model_key, train_config

ROOT = Path(__file__).resolve().parents[1]

GOLDEN = {
    "quickstart": {
        "autorl": "fdeff071b527e092",
        "eval": "a8da50258dbca080",
        "model_key": "a69c6514e8c67900",
        "probe": "4be73e8e136e912a",
        "report": "7f52cf9198d5a071",
        "train": "d689953c359de1cf",
    },
    "references": {
        "autorl": "1d49956580942179",
        "eval": "6c7e940a67406710",
        "model_key": "9fa2e8ac1cbdb067",
        "probe": "7aac6eaa711453b9",
        "report": "360cc072021b6a9a",
        "train": "7c465565cca749a5",
    },
}


def _suite(name: str, **update):
    suite = load_suite(ROOT / "suites" / f"{name}.yaml")
    return suite.model_copy(update={"out": Path("/ldm-golden") / name, "data_root": None, **update})


@pytest.mark.parametrize("name", GOLDEN)
def test_a_suite_file_keeps_its_fingerprints_and_model_folder(name):
    suite = _suite(name)
    assert {**suite.fingerprints(), "model_key": model_key(suite)} == GOLDEN[name]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_old_and_new_field_names_read_the_same(tmp_path):
    old = load_suite(
        _write(
            tmp_path,
            "name: x\nlibraries: [{name: toy, workers: 2}]\nprobe: {check_steps: 7}\n"
            "model: {config: tiny, steps: 9}\neval: {workers: 3}\n",
        )
    )
    new = load_suite(
        _write(
            tmp_path,
            "name: x\nlibraries: [{name: toy, parallel: 2}]\nprobe: {steps: 7}\n"
            "model: {model: tiny, steps: 9}\neval: {num_workers: 3}\n",
        )
    )
    assert old.fingerprints() == new.fingerprints()
    assert (old.libraries[0].parallel, old.probe.steps, old.eval.num_workers) == (2, 7, 3)
    # a dump keeps the suite file's names
    dumped = old.model_dump(mode="json")
    assert dumped["libraries"][0]["workers"] == 2 and dumped["probe"]["check_steps"] == 7
    assert dumped["model"]["config"] == "tiny" and dumped["eval"]["workers"] == 3


def test_a_stage_field_the_suite_did_not_have_reaches_the_stage(tmp_path):
    base = load_suite(_write(tmp_path, "name: x\nlibraries: [{name: toy}]\n"))
    more = load_suite(
        _write(
            tmp_path,
            "name: x\nlibraries: [{name: toy, max_restarts: 5}]\n"
            "model: {weight_decay: 0.1, log_every: 3}\neval: {context: 8}\n",
        )
    )
    config = train_config(more)
    assert (config.weight_decay, config.log_every) == (0.1, 3)
    assert more.eval.context == 8 and more.libraries[0].max_restarts == 5
    fps, changed = base.fingerprints(), more.fingerprints()
    # weights and results change; how the runs are carried out does not
    assert [s for s in fps if fps[s] != changed[s]] == ["train", "eval", "report"]
    assert model_key(base) != model_key(more)


@pytest.mark.parametrize("field", ["data_root", "libraries", "env_ids", "out", "mlflow"])
def test_the_model_section_refuses_what_the_suite_sets(tmp_path, field):
    path = _write(tmp_path, f"name: x\nlibraries: [{{name: toy}}]\nmodel: {{{field}: null}}\n")
    with pytest.raises(SuiteError, match=f"field model: {field}: set by the suite"):
        load_suite(path)
