"""Evaluation during training (the paper's Fig. 3): a trainer callback owned by ldm-model,
implemented by ldm-eval, logged on the training's MLflow run and kept in training_curve.csv."""

import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
import torch
from mlflow.tracking import MlflowClient

from ldm_envs import tracking
from ldm_envs.dataset import ShardMeta, ShardWriter, write_decision, write_index, write_ref_actions
from ldm_envs.plugins import get_library
from ldm_eval.pipeline import score_policies
from ldm_eval.policies import LDMPolicyFactory
from ldm_eval.protocol import EnvTarget, EvalConfig
from ldm_eval.training_curve import (
    CURVE_COLUMNS,
    CURVE_FILE,
    CURVE_PNG,
    TrainingEvaluator,
    curve_html,
    from_train_config,
    read_curve,
)
from ldm_model.training import TrainConfig, train
from ldm_model.training.callbacks import (
    CallbackPluginError,
    TrainerCallback,
    discover_callbacks,
)
from ldm_model.training.checkpoint import CHECKPOINTS_DIR, step_dir_name

#: (env, reference returns): ShortCartPole's episodes end by 10 steps (a reference of 0 -> 20
#: puts any policy below 80%), CartPole's reference 0 -> 5 puts any policy at >= 100%
ENVS = {"ShortCartPole-v1": [0.0] * 9 + [20.0], "CartPole-v1": [0.0] * 9 + [5.0]}
PROTOCOL = EvalConfig(backend="inprocess", episodes=2, rollouts=1, retries=0)


def write_run(root, env_id, returns, length=8):
    """A kept, relabeled one-shard reference run of a toy env with these episode returns."""
    env = get_library("toy").env(env_id)
    meta = ShardMeta(
        library="toy",
        env_id=env_id,
        candidate="ppo",
        seed=0,
        run_key=f"toy/{env_id}/ppo/0",
        mlflow_run_id=None,
        observation_space=env.observation_space,
        action_space=env.action_space,
        created=time.time(),
    )
    n = length * len(returns)
    rng = np.random.default_rng(0)
    step = np.tile(np.arange(length), len(returns))
    path = root / "toy" / env_id / "run-0.arrow"
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path, meta) as writer:
        writer.append(
            obs=rng.standard_normal((n, 4)).astype(np.float32),
            action=rng.integers(0, 2, n),
            reward=np.repeat(np.asarray(returns, np.float32) / length, length),
            episode=np.repeat(np.arange(len(returns)), length),
            step=step,
            terminated=step == length - 1,
            truncated=np.zeros(n, bool),
        )
    write_ref_actions(path, rng.integers(0, 2, n))
    write_decision(path, {"kept": True, "reason": "kept"})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve_dataset")
    for env_id, returns in ENVS.items():
        write_run(root, env_id, returns)
    write_index(root)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(dataset, out, **kw):
    return TrainConfig(
        model="tiny",
        data_root=dataset,
        batch_size=4,
        context=16,
        steps=6,
        checkpoint_every=3,
        log_every=3,
        eval_every=3,
        device="cpu",
        out=out,
        **kw,
    )


def test_the_curve_is_logged_kept_across_a_resume_and_matches_a_direct_evaluation(
    dataset, tmp_path
):
    out = tmp_path / "run"
    cfg = config(dataset, out)
    paused = train(cfg, stop_after=3, progress=False, callbacks=[TrainingEvaluator(PROTOCOL)])
    assert paused.paused and paused.step == 3
    assert read_curve(out / CURVE_FILE)["step"].to_list() == [3]
    # an evaluation past the checkpoint (a crash after it): the resumed run evaluates it again
    rows = read_curve(out / CURVE_FILE)
    fake = rows.with_columns(pl.lit(5, pl.Int64).alias("step"), pl.lit(0.0).alias("share_ge_80"))
    pl.concat([rows, fake]).write_csv(out / CURVE_FILE)

    copy = tmp_path / "report"
    done = train(cfg, progress=False, callbacks=[TrainingEvaluator(PROTOCOL, copy_to=copy)])
    assert not done.paused and done.step == 6
    assert 0 < done.eval_seconds < done.wall_seconds

    curve = pl.read_csv(out / CURVE_FILE)
    assert tuple(curve.columns) == CURVE_COLUMNS
    assert curve["step"].to_list() == [3, 6]  # the fake row is gone, no step twice
    assert curve["transitions"].to_list()[0] < curve["transitions"].to_list()[1]
    assert curve["envs"].to_list() == [2, 2] and curve["envs_scored"].to_list() == [2, 2]
    for col in ("share_ge_80", "share_ge_100"):
        assert all(0.0 <= v <= 1.0 for v in curve[col])
    assert (curve["train_seconds"] >= curve["eval_seconds"]).all()
    assert (out / CURVE_PNG).is_file() and (copy / CURVE_FILE).is_file()
    assert (copy / CURVE_PNG).is_file()

    # the same shares as the protocol run on the checkpoint saved at that step
    checkpoint = out / CHECKPOINTS_DIR / step_dir_name(6)
    envs = [EnvTarget(library="toy", env_id=e) for e in ENVS]
    from ldm_envs.dataset.index import read_index
    from ldm_eval.normalize import reference_runs

    refs = reference_runs(*read_index(dataset), [("toy", e) for e in ENVS])
    direct = score_policies(envs, {"ldm": LDMPolicyFactory(checkpoint)}, refs, PROTOCOL)
    scores = direct.filter(pl.col("scored"))["score"].to_numpy()
    last = curve.row(-1, named=True)
    assert last["share_ge_80"] == pytest.approx(float(np.mean(scores >= 0.8)))
    assert last["share_ge_100"] == pytest.approx(float(np.mean(scores >= 1.0)))
    assert last["share_ge_100"] == 0.5  # CartPole at >= 100%, ShortCartPole below

    # MLflow: the metrics at the evaluated steps, on the training run, and the figure
    tracking.setup()
    client = MlflowClient(tracking.tracking_uri())
    assert done.mlflow_run_id == paused.mlflow_run_id
    for key, col in (("eval/share_ge_80", "share_ge_80"), ("eval/share_ge_100", "share_ge_100")):
        history = {m.step: m.value for m in client.get_metric_history(done.mlflow_run_id, key)}
        assert set(history) == {3, 6}
        assert history[6] == pytest.approx(last[col])
    seen = client.get_metric_history(done.mlflow_run_id, "eval/transitions")
    assert {m.step: m.value for m in seen}[6] == last["transitions"]
    names = {a.path for a in client.list_artifacts(done.mlflow_run_id)}
    assert {CURVE_PNG, CURVE_FILE} <= names

    html = curve_html(out / CURVE_FILE)
    assert "eval during training:" in html and "%)" in html and "<img" in html


def test_the_evaluator_is_found_through_the_entry_point(tmp_path):
    assert discover_callbacks(TrainConfig(out=tmp_path)) == []
    found = discover_callbacks(TrainConfig(out=tmp_path, eval_every=5, eval_episodes=3))
    assert len(found) == 1 and isinstance(found[0], TrainingEvaluator)
    assert isinstance(found[0], TrainerCallback) and found[0].config.episodes == 3
    assert from_train_config(TrainConfig(out=tmp_path)) is None
    with pytest.raises(CallbackPluginError, match="install ldm-eval"):
        discover_callbacks(TrainConfig(out=tmp_path, eval_every=5), eps=[])


def test_eval_settings_do_not_change_the_run():
    base = TrainConfig()
    other = TrainConfig(eval_every=100, eval_episodes=2)
    assert base.run_key() == other.run_key() and not base.resume_differences(other)


def test_ldm_model_never_imports_ldm_eval():
    code = (
        "import sys, ldm_model.training.trainer, ldm_model.training.callbacks, ldm_model.cli, "
        "ldm_model.policy; bad = sorted(m for m in sys.modules if m.startswith('ldm_eval')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_suite_passes_its_settings_and_they_retrain_nothing(tmp_path):
    from ldm_eval.suite import _model_key, _train_config, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text("name: curve\nlibraries: [{name: toy, envs: [CartPole-v1]}]\n")
    plain = load_suite(path)
    path.write_text(
        "name: curve\nlibraries: [{name: toy, envs: [CartPole-v1]}]\n"
        "model: {eval_every: 50, eval_episodes: 2}\n"
    )
    curved = load_suite(path)
    assert plain.fingerprints() == curved.fingerprints()
    assert _model_key(plain) == _model_key(curved)
    config = _train_config(curved)
    assert (config.eval_every, config.eval_episodes) == (50, 2)
    assert config.run_key() == _train_config(plain).run_key()
