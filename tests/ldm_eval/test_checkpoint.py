"""Reading a real checkpoint's provenance: training run, dataset root, envs trained on."""

import json
from pathlib import Path

import pytest
import torch

from ldm_eval.checkpoint import read_checkpoint
from ldm_eval.protocol import EnvTarget
from ldm_model.config import get_config
from ldm_model.data import WindowSampler
from ldm_model.model import LDM
from ldm_model.training import TrainConfig
from ldm_model.training.checkpoint import CheckpointError, dataset_info, save_checkpoint
from tests.ldm_model.datasets import VECTOR_BOX, VECTOR_DISCRETE, make_dataset


def test_read_checkpoint_gives_provenance(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, envs=(VECTOR_DISCRETE, VECTOR_BOX))
    model = LDM(get_config("tiny"))
    out = tmp_path / "run"
    save_checkpoint(
        out,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        train_config=TrainConfig(model="tiny", data_root=root, context=8, batch_size=2),
        step=3,
        dataset=dataset_info(WindowSampler(root, context=8)),
        mlflow_run_id="abc123",
    )
    ckpt = read_checkpoint(out)  # the run folder resolves to its latest checkpoint
    assert ckpt.run_id == "abc123"
    assert ckpt.dataset_root == root
    assert sorted(ckpt.envs, key=lambda e: e.env_id) == sorted(
        [
            EnvTarget(library=VECTOR_DISCRETE.library, env_id=VECTOR_DISCRETE.env_id),
            EnvTarget(library=VECTOR_BOX.library, env_id=VECTOR_BOX.env_id),
        ],
        key=lambda e: e.env_id,
    )
    assert ckpt.path.name.startswith("step-")


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        read_checkpoint(tmp_path / "nowhere")


# -- a corrupt newest checkpoint (issue 15, item 11) ----------------------------------------------


def _toy_run(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset with a ShortCartPole reference, and a run folder with checkpoints at 1 and 2."""
    from ldm_envs.dataset import write_index
    from ldm_model.training.checkpoint import DatasetInfo, EnvEntry
    from tests.ldm_eval.test_pipeline import SHORT, write_reference

    root = tmp_path / "dataset"
    write_reference(root, SHORT, [0.0] * 9 + [20.0])
    write_index(root)
    torch.manual_seed(0)
    model = LDM(get_config("tiny"))
    dataset = DatasetInfo(
        root=str(root),
        index_sha256=None,
        runs_sha256="0" * 64,
        envs=[EnvEntry(index=0, library="toy", env_id=SHORT, runs=1, transitions=40, weight=1)],
        transitions=40,
    )
    run = tmp_path / "run"
    for step in (1, 2):
        save_checkpoint(
            run,
            model=model,
            optimizer=torch.optim.AdamW(model.parameters()),
            train_config=TrainConfig(model="tiny", data_root=root, context=8, batch_size=2),
            step=step,
            dataset=dataset,
        )
    return root, run


def _corrupt_newest(run: Path) -> Path:
    from ldm_model.training.checkpoint import MODEL_FILE, list_checkpoints

    newest = list_checkpoints(run)[-1]
    data = bytearray((newest / MODEL_FILE).read_bytes())
    data[-10] ^= 0xFF
    (newest / MODEL_FILE).write_bytes(bytes(data))
    return newest


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    _, run = _toy_run(tmp_path)
    bad = _corrupt_newest(run)
    notes: list[str] = []
    info = read_checkpoint(run, report=notes.append)
    assert info.path.name == "step-00000001"
    assert len(notes) == 1 and bad.name in notes[0] and "using step-00000001" in notes[0]


def test_evaluate_cli_goes_on_with_the_previous_checkpoint_and_says_so(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ldm_eval.cli import app

    root, run = _toy_run(tmp_path)
    bad = _corrupt_newest(run)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(run),
            "--backend",
            "inprocess",
            "--episodes",
            "1",
            "--rollouts",
            "1",
            "--no-random-baseline",
            "--dataset",
            str(root),
            "--out",
            str(out),
            "--no-track",
            "--resamples",
            "20",
        ],
    )
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, result.output  # it used to stop on the corrupt file
    assert "skipped 1 corrupt checkpoint(s)" in flat and bad.name in flat
    assert "using step-00000001 (step 1)" in flat
    assert (out / "report.html").is_file()


def test_evaluate_cli_reads_a_checkpoint_from_a_store_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ldm-eval evaluate s3://.../run`: the newest published checkpoint, pulled and evaluated."""
    from typer.testing import CliRunner

    from ldm_envs.store import DataRoot
    from ldm_eval.cli import app
    from ldm_model.training.checkpoint import list_checkpoints
    from ldm_model.training.checkpoint.store import publish_checkpoint
    from tests.ldm_envs.store_server import export_env, make_bucket, moto_server

    root, run = _toy_run(tmp_path)
    monkeypatch.setenv("LDM_HOME", str(tmp_path / "home"))
    with moto_server(tmp_path) as endpoint:
        export_env(monkeypatch, endpoint)
        url = f"s3://{make_bucket(endpoint)}/models/run"
        store = DataRoot.parse(url)
        for folder in list_checkpoints(run):
            publish_checkpoint(store, folder)
        out = tmp_path / "eval"
        args = ["--backend", "inprocess", "--episodes", "1", "--rollouts", "1"]
        args += ["--no-random-baseline", "--dataset", str(root), "--no-track"]
        result = CliRunner().invoke(app, ["evaluate", url, *args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert (out / "report.html").is_file()
        used = Path(json.loads((out / "eval.json").read_text())["checkpoint"]["path"])
        assert used.name == "step-00000002"  # the newest published, pulled into the data home
        assert used.is_relative_to(tmp_path / "home")
        nothing = CliRunner().invoke(app, ["evaluate", url + "-none", *args])
        assert nothing.exit_code != 0 and "Traceback" not in nothing.output
