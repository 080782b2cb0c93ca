"""The model-size comparison: same data and budget per size, the protocol on each, one table."""

import numpy as np
import polars as pl
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ldm_envs import tracking
from ldm_envs.dataset import write_index
from ldm_eval.aggregate import iqm
from ldm_eval.cli import app
from ldm_eval.model_sizes import (
    COLUMNS,
    SIZE_RECORD,
    SIZES_CSV,
    SIZES_PER_ENV_CSV,
    SIZES_PNG,
    ModelSizesError,
    SizesConfig,
    compare_sizes,
)
from ldm_eval.protocol import EvalConfig
from ldm_model.training.checkpoint import CHECKPOINTS_DIR
from tests.ldm_eval.test_training_curve import ENVS, write_run

#: the CLI's protocol defaults but for the backend and the episodes (so the CLI resumes it)
PROTOCOL = EvalConfig(backend="inprocess", episodes=1, rollouts=2)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes_dataset")
    for env_id, returns in ENVS.items():
        write_run(root, env_id, returns)
    write_index(root)
    return root


def settings(dataset, out, configs, **kw):
    return SizesConfig(
        data_root=dataset,
        configs=configs,
        steps=3,
        batch_size=2,
        context=8,
        device="cpu",
        protocol=PROTOCOL,
        resamples=50,
        out=out,
        **kw,
    )


def mtimes(out):
    """Every checkpoint and rollout file under `out`, with its mtime."""
    files = [*out.glob(f"models/*/{CHECKPOINTS_DIR}/**/*"), *out.glob("eval/*/rollouts.parquet")]
    return {p: p.stat().st_mtime_ns for p in files if p.is_file()}


@pytest.mark.slow  # trains and evaluates two model sizes, then resumes
def test_sizes_are_trained_alike_evaluated_tabled_and_resumed(dataset, tmp_path):
    out = tmp_path / "sizes"
    first = compare_sizes(settings(dataset, out, ("tiny", "small")))
    assert [s.trained_now for s in first.sizes] == [True, True]
    before = mtimes(out)
    assert before

    # a bigger size added: the two finished ones are neither trained nor evaluated again
    outcome = compare_sizes(settings(dataset, out, ("tiny", "small", "base")))
    assert [s.trained_now for s in outcome.sizes] == [False, False, True]
    after = mtimes(out)
    assert {p: t for p, t in after.items() if p in before} == before
    assert len(after) > len(before)

    table = pl.read_csv(out / SIZES_CSV)
    assert tuple(table.columns[: len(COLUMNS)]) == COLUMNS
    assert table["config"].to_list() == ["tiny", "small", "base"]
    params = table["parameters"].to_list()
    assert params == sorted(params) and len(set(params)) == 3
    assert table["transitions"].n_unique() == 1 and table["transitions"][0] > 0
    assert (table["steps"] == 3).all() and (table["window"] == 8).all()
    assert (table["train_seconds"] > 0).all()  # kept from the call that trained each size
    assert (table["envs_scored"] == 2).all() and (table["envs"] == 2).all()

    per_env = pl.read_csv(out / SIZES_PER_ENV_CSV)
    assert per_env.height == 3 * len(ENVS)
    for row in table.iter_rows(named=True):
        scores = per_env.filter((pl.col("config") == row["config"]) & pl.col("scored"))
        values = scores["score"].to_numpy()
        assert len(values) == row["envs_scored"]
        for col, threshold in (("share_ge_80", 0.8), ("share_ge_100", 1.0)):
            assert 0.0 <= row[col] <= 1.0
            assert row[col] == pytest.approx(float(np.mean(values >= threshold - 1e-9)))
        assert row["iqm"] == pytest.approx(float(iqm(values)))
        assert row["iqm_ci_low"] <= row["iqm"] + 1e-9 <= row["iqm_ci_high"] + 2e-9
        # each size's evaluation folder holds the same numbers (`ldm-eval report` opens it)
        summary = pl.read_parquet(f"{row['eval_dir']}/tables/summary.parquet")
        pooled = summary.filter(pl.col("library") == "all").row(0, named=True)
        assert pooled["frac_at_least_80"] == pytest.approx(row["share_ge_80"])

    png = out / SIZES_PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("tiny", "small", "base"):
        (record,) = out.glob(f"models/{name}-*/{SIZE_RECORD}")
        assert record.is_file()

    # MLflow: one comparison run per settings, its series against parameters, the files
    tracking.setup()
    client = MlflowClient(tracking.tracking_uri())
    run = client.get_run(outcome.mlflow_run_id)
    assert run.data.tags["ldm.sizes.configs"] == "tiny,small,base"
    assert run.data.tags["ldm.sizes.base.eval_run_id"] == table["eval_run_id"][2]
    history = client.get_metric_history(outcome.mlflow_run_id, "share_ge_80")
    assert sorted(m.step for m in history) == sorted(params)
    assert run.data.metrics["small/parameters"] == params[1]
    names = {a.path for a in client.list_artifacts(outcome.mlflow_run_id)}
    assert {SIZES_PNG, "model_sizes.csv", "files"} <= names

    # the CLI on the same settings: nothing trained or rolled out again, the table printed
    result = CliRunner().invoke(
        app,
        [
            "sizes",
            "--dataset",
            str(dataset),
            *("--config", "tiny", "--config", "small", "--config", "base"),
            *("--steps", "3", "--batch-size", "2", "--context", "8", "--device", "cpu"),
            *("--episodes", "1", "--backend", "inprocess", "--resamples", "50"),
            *("--out", str(out), "--no-track"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert mtimes(out) == after
    assert "already trained" in result.output
    for text in ("tiny", "small", "base", SIZES_CSV, SIZES_PNG, "IQM"):
        assert text in result.output
    again = pl.read_csv(out / SIZES_CSV)
    assert again.select(COLUMNS).equals(table.select(COLUMNS))


def test_refusals(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"unknown model config.*'huge'.*named configs: tiny"):
        settings(dataset, tmp_path, ("tiny", "huge"))
    with pytest.raises(ValueError, match="given twice: tiny"):
        settings(dataset, tmp_path, ("tiny", "tiny"))
    with pytest.raises(ValueError, match="context 65 exceeds the context of tiny"):
        SizesConfig(data_root=dataset, configs=["tiny"], steps=1, batch_size=1, context=65)
    assert (
        SizesConfig(data_root=dataset, configs=["small", "tiny"], steps=1, batch_size=1).window
        == 64
    )
    with pytest.raises(ModelSizesError, match="no dataset index"):
        compare_sizes(settings(tmp_path / "nothing", tmp_path / "out", ("tiny",)))
    # the same settings make the same key, another step count another one
    a = settings(dataset, tmp_path, ("tiny",))
    assert a.key("x") == settings(dataset, tmp_path / "elsewhere", ("tiny",)).key("x")
    assert a.key("x") != a.key("y")
    assert a.key("x") != a.model_copy(update={"steps": 4}).key("x")
