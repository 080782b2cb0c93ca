"""A whole evaluation on the toy library: folder, tables, report, MLflow, resume, partial runs."""

import re
import time

import numpy as np
import polars as pl
import pytest
import torch

from ldm_envs import tracking
from ldm_envs.dataset import ShardMeta, ShardWriter, write_decision, write_index
from ldm_envs.plugins import get_library
from ldm_eval.checkpoint import CheckpointInfo
from ldm_eval.pipeline import eval_key, evaluate, plan_envs, policy_context, score_policies
from ldm_eval.policies import LDMPolicyFactory, RandomPolicy, RandomPolicyFactory
from ldm_eval.protocol import EnvTarget, EvalConfig
from ldm_eval.results import EvalRunDir
from ldm_eval.tables import compute_tables
from ldm_model.config import NAMED_CONFIGS
from ldm_model.model import LDM

SHORT, PENDULUM = "ShortCartPole-v1", "Pendulum-v1"
CONFIG = EvalConfig(backend="inprocess", episodes=2, retries=1)


def write_reference(root, env_id, returns, *, kept=True, seed=0):
    """A one-shard reference run of the toy env whose episodes have these returns."""
    env = get_library("toy").env(env_id)
    meta = ShardMeta(
        library="toy",
        env_id=env_id,
        candidate="ppo",
        seed=seed,
        run_key=f"toy/{env_id}/ppo/{seed}",
        mlflow_run_id=None,
        observation_space=env.observation_space,
        action_space=env.action_space,
        created=time.time(),
    )
    length = 4
    n = length * len(returns)
    obs_shape = env.observation_space.shape
    act = np.zeros(
        (n, *env.action_space.to_gymnasium().shape), env.action_space.to_gymnasium().dtype
    )
    step = np.tile(np.arange(length), len(returns))
    path = root / "toy" / env_id / f"run-{seed}.arrow"
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path, meta) as writer:
        writer.append(
            obs=np.zeros((n, *obs_shape), np.float32),
            action=act,
            reward=np.repeat(np.asarray(returns, np.float32) / length, length),
            episode=np.repeat(np.arange(len(returns)), length),
            step=step,
            terminated=step == length - 1,
            truncated=np.zeros(n, bool),
        )
    write_decision(path, {"kept": kept, "reason": "kept" if kept else "dropped"})


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model steps a few envs: threads only fight over a busy CI machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_dataset")
    # ShortCartPole: 0% at return 0, 100% at 20 (random play scores 10: 50%)
    write_reference(root, SHORT, [0.0] * 9 + [20.0])
    write_reference(root, SHORT, [0.0] * 9 + [15.0], seed=1)  # kept, not the best
    write_reference(root, PENDULUM, [-1600.0] * 9 + [-200.0])
    write_index(root)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint record trained on the two envs, its training run in MLflow."""
    with tracking.tracked_run("model", "toy", "train-test", name="train") as run:
        pass
    return CheckpointInfo(
        path=tmp_path_factory.mktemp("ckpt") / "tiny.pt",
        run_id=run.run_id,
        envs=[EnvTarget(library="toy", env_id=e) for e in (SHORT, PENDULUM)],
    )


def tiny_ldm_factory():
    """`LDMPolicyFactory` over a randomly initialized tiny LDM (no checkpoint file needed)."""
    torch.manual_seed(0)
    factory = LDMPolicyFactory("unused.pt")
    factory._model = LDM(NAMED_CONFIGS["tiny"]).eval()
    return factory


class CountingFactory:
    """Random actions; counts policies built and steps, can interrupt after `stop_after`."""

    def __init__(self, stop_after=None):
        self.built = 0
        self.steps = 0
        self.stop_after = stop_after

    def __call__(self, slots):
        self.built += 1
        inner = RandomPolicy([s.action_space for s in slots], [3] * len(slots))
        outer = self

        class Counting:
            def reset(self, envs=None):
                inner.reset(envs)

            def act(self, obs, reward=None, done=None):
                outer.steps += 1
                if outer.stop_after is not None and outer.steps > outer.stop_after:
                    raise KeyboardInterrupt
                return inner.act(obs, reward, done)

        return Counting()


def test_plan_flags_untrained_libraries(checkpoint):
    envs, warnings = plan_envs(checkpoint)
    assert [(e.env_id, e.trained_library, e.trained_env) for e in envs] == [
        (SHORT, True, True),
        (PENDULUM, True, True),
    ]
    assert envs[1].action_space.startswith("box") and not warnings
    other = checkpoint.model_copy(
        update={"envs": [EnvTarget(library="classic-control", env_id="CartPole-v1")]}
    )
    envs, warnings = plan_envs(other, ["toy"], [SHORT])
    assert [(e.env_id, e.trained_library, e.trained_env) for e in envs] == [(SHORT, False, False)]
    assert "not trained on library 'toy'" in warnings[0]
    envs, warnings = plan_envs(None, ["toy"], [SHORT])
    assert envs[0].trained_library is None and not warnings
    with pytest.raises(ValueError, match=r"declared: .*CartPole-v1"):
        plan_envs(None, ["toy"], ["Nope-v0"])
    with pytest.raises(KeyError, match=r"unknown env library 'nope'; known libraries: .*toy"):
        plan_envs(None, ["nope"])


def test_a_non_default_context_is_another_evaluation(checkpoint):
    """Context changes results: it keys the evaluation, but the default keeps the old keys."""
    envs, _ = plan_envs(checkpoint)
    config = EvalConfig(episodes=1, rollouts=1)
    trained = {"ldm": LDMPolicyFactory(checkpoint.path)}
    short = {"ldm": LDMPolicyFactory(checkpoint.path, context=4)}
    plain = eval_key(checkpoint, envs, ["ldm"], config)
    assert eval_key(checkpoint, envs, ["ldm"], config, context=policy_context(trained)) == plain
    keyed = eval_key(checkpoint, envs, ["ldm"], config, context=policy_context(short))
    assert keyed != plain
    assert keyed == eval_key(checkpoint, envs, ["ldm"], config, context=4)


def test_evaluation_writes_tables_report_and_mlflow(tmp_path, dataset, checkpoint):
    envs, warnings = plan_envs(checkpoint)
    out = tmp_path / "eval"
    outcome = evaluate(
        envs,
        {"ldm": tiny_ldm_factory(), "random": RandomPolicyFactory(0)},
        CONFIG,
        out_dir=out,
        checkpoint=checkpoint,
        dataset_root=dataset,
        warnings=warnings,
        n_resamples=200,
    )
    run_dir = outcome.run_dir
    for name in ("eval.json", "references.parquet", "rollouts.parquet", "report.html"):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "plots").iterdir()} == {
        "threshold_curve.png",
        "library_iqm.png",
        "env_scores.png",
    }
    manifest = run_dir.read_manifest()
    assert manifest.status == "complete" and manifest.mlflow_run_id == outcome.mlflow_run_id
    rollouts = pl.read_parquet(out / "rollouts.parquet")
    assert rollouts.height == 2 * 2 * 2  # policies x envs x rollouts
    assert (rollouts["status"] == "ok").all()
    assert rollouts["returns"].list.len().to_list() == [2] * 8

    tables = outcome.tables
    assert tables.complete
    per_env = {r["env_id"]: r for r in tables.per_env.iter_rows(named=True)}
    short = per_env[SHORT]
    assert (short["ref_first10"], short["ref_last10"]) == (0.0, 20.0)
    assert short["reference_run_key"] == "toy/ShortCartPole-v1/ppo/0"  # the best kept run
    assert short["random_return"] == 10.0 and short["random_score"] == pytest.approx(0.5)
    assert short["ldm_status"] == "ok"
    assert short["ldm_score"] == pytest.approx(short["ldm_return"] / 20.0)
    assert short["trained_library"] and short["observation_space"].startswith("box")
    pend = per_env[PENDULUM]
    assert pend["random_score"] == pytest.approx((pend["random_return"] + 1600.0) / 1400.0)
    summary = {(r["policy"], r["library"]): r for r in tables.summary.iter_rows(named=True)}
    assert summary[("random", "all")]["scored_envs"] == 2
    assert set(tables.threshold["library"]) == {"all", "toy"}

    html = outcome.report.read_text()
    assert len(re.findall(r"<img alt='[a-z_]+\.png' src='data:image/png;base64,", html)) == 3
    assert "Partial evaluation" not in html and "ShortCartPole-v1" in html
    assert "http" not in html.replace(checkpoint.run_id, "")  # nothing fetched from outside

    client = tracking._client()
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ldm.checkpoint_run_id"] == checkpoint.run_id
    assert run.data.tags["ldm.stage"] == "eval" and run.data.tags["ldm.library"] == "toy"
    assert run.data.tags["ldm.eval.partial"] == "false"
    assert run.data.metrics["random/scored_envs"] == 2
    assert run.data.metrics["random/median/toy"] == pytest.approx(
        summary[("random", "toy")]["median"]
    )
    curve = client.get_metric_history(outcome.mlflow_run_id, "random/frac_at_least")
    assert sorted(m.step for m in curve) == list(range(0, 151, 5))
    assert run.data.params["episodes"] == "2"
    files = {
        f.path
        for folder in ("", "eval", "eval/tables")
        for f in client.list_artifacts(outcome.mlflow_run_id, folder or None)
    }
    for name in (
        "per_env.csv",
        "summary.html",
        "threshold_curve.png",
        "report.html",
        "eval/eval.json",
        "eval/rollouts.parquet",
        "eval/tables/scores.parquet",
    ):
        assert name in files, name

    # the same evaluation again: nothing to run, the same MLflow run
    again = CountingFactory()
    second = evaluate(
        envs,
        {"ldm": again, "random": RandomPolicyFactory(0)},
        CONFIG,
        out_dir=out,
        checkpoint=checkpoint,
        dataset_root=dataset,
        n_resamples=50,
    )
    assert again.built == 0 and second.mlflow_run_id == outcome.mlflow_run_id
    assert pl.read_parquet(out / "rollouts.parquet").height == 8


def test_an_interrupted_evaluation_leaves_a_partial_report_and_resumes(
    tmp_path, dataset, checkpoint
):
    envs, _ = plan_envs(checkpoint)
    out = tmp_path / "partial"
    # ShortCartPole's rollouts end within 20 steps, Pendulum's need 400: stop in between
    stopping = CountingFactory(stop_after=60)
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            envs,
            {"ldm": stopping},
            CONFIG,
            out_dir=out,
            checkpoint=checkpoint,
            dataset_root=dataset,
            n_resamples=50,
        )
    run_dir = EvalRunDir(out)
    manifest = run_dir.read_manifest()
    assert manifest.status == "interrupted"
    tables = compute_tables(run_dir, n_resamples=50)
    assert not tables.complete
    assert tables.missing.rows() == [("ldm", "toy", PENDULUM)]
    html = (out / "report.html").read_text()
    assert "Partial evaluation" in html and "missing" in html
    assert "partial evaluation: the run is &#x27;interrupted&#x27;" in html
    run = tracking._client().get_run(manifest.mlflow_run_id)
    assert run.info.status == "KILLED" and run.data.tags["ldm.eval.partial"] == "true"

    resumed = CountingFactory()
    outcome = evaluate(
        envs,
        {"ldm": resumed},
        CONFIG,
        out_dir=out,
        checkpoint=checkpoint,
        dataset_root=dataset,
        n_resamples=50,
    )
    assert outcome.tables.complete and outcome.mlflow_run_id == manifest.mlflow_run_id
    rollouts = pl.read_parquet(out / "rollouts.parquet")
    assert sorted(rollouts.select("env_id", "rollout").rows()) == [
        (PENDULUM, 0),
        (PENDULUM, 1),
        (SHORT, 0),
        (SHORT, 1),
    ]  # ShortCartPole was not run twice
    assert "Partial evaluation" not in (out / "report.html").read_text()
    assert tracking._client().get_run(manifest.mlflow_run_id).info.status == "FINISHED"


def test_failed_and_untrained_envs_are_reported_not_scored(tmp_path, dataset, checkpoint):
    other = checkpoint.model_copy(
        update={"envs": [EnvTarget(library="classic-control", env_id="CartPole-v1")]}
    )
    envs, warnings = plan_envs(other, ["toy"], [SHORT, "Unmakeable-v0", "CartPole-v1"])
    outcome = evaluate(
        envs,
        {"random": RandomPolicyFactory(0)},
        CONFIG,
        out_dir=tmp_path / "f",
        checkpoint=other,
        dataset_root=dataset,
        warnings=warnings,
        track=False,
        n_resamples=50,
    )
    assert outcome.mlflow_run_id is None
    per_env = {r["env_id"]: r for r in outcome.tables.per_env.iter_rows(named=True)}
    assert per_env["Unmakeable-v0"]["random_status"] == "failed"
    assert "no_such_argument" in per_env["Unmakeable-v0"]["random_cause"]
    assert per_env["Unmakeable-v0"]["random_score"] is None
    assert per_env["CartPole-v1"]["reference_status"] == "not in index"
    assert per_env[SHORT]["trained_library"] is False
    summary = outcome.tables.summary.filter(pl.col("library") == "all").row(0, named=True)
    assert (summary["scored_envs"], summary["failed_envs"], summary["unreferenced_envs"]) == (
        1,
        1,
        1,
    )
    html = outcome.report.read_text()
    assert "not trained on library &#x27;toy&#x27;" in html
    assert "1 failed (not scored" in html
    # the headline: the paper beside this run, the denominator and who is left out of it
    headline = html[html.index("Headline: the paper") : html.index("<h2>Run</h2>")]
    assert "LDM-v0 (paper)" in headline and "53.0%" in headline and "33.0%" in headline
    assert "1 / 3" in headline  # scored / planned
    assert "toy/Unmakeable-v0: failed" in headline
    assert "/CartPole-v1: reference not in index" in headline


def test_score_policies_in_memory(dataset):
    from ldm_envs.dataset import read_index
    from ldm_eval.normalize import reference_runs

    runs, episodes = read_index(dataset)
    refs = reference_runs(runs, episodes)
    scores = score_policies(
        [EnvTarget(library="toy", env_id=SHORT)], {"random": RandomPolicyFactory(0)}, refs, CONFIG
    )
    assert scores.row(0, named=True)["score"] == pytest.approx(0.5)
