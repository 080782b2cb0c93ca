"""ldm_envs.tracking against a real embedded SQLite store and a real MLflow server."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from ldm_envs import tracking


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LDM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def client() -> MlflowClient:
    return MlflowClient(tracking_uri=tracking.tracking_uri())


def artifact_files(run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in client().list_artifacts(run_id, path)}


def test_default_store_lives_under_the_data_home(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{home.resolve() / 'mlflow' / 'mlflow.db'}"
    assert (home / "mlflow").is_dir()
    assert tracking.artifact_root() == str(home.resolve() / "mlflow" / "artifacts")
    tracking.setup()
    tracking.setup()  # idempotent
    assert (home / "mlflow" / "mlflow.db").is_file()
    import mlflow

    assert mlflow.get_tracking_uri() == uri
    assert "MLFLOW_TRACKING_URI" not in os.environ  # not leaked: the default follows LDM_HOME
    monkeypatch.setenv("LDM_HOME", str(home / "elsewhere"))
    tracking.setup()
    assert mlflow.get_tracking_uri() == tracking.tracking_uri() != uri


def test_tracking_uri_respects_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking.tracking_uri() == "http://127.0.0.1:9"


def test_experiments_per_stage_and_library(home: Path) -> None:
    exp_id = tracking.experiment_id("ranking", "toy")
    assert tracking.experiment_id("ranking", "toy") == exp_id
    assert tracking.experiment_id("reference", "toy") != exp_id
    exp = client().get_experiment(exp_id)
    assert exp.name == "ldm-ranking/toy"
    assert exp.tags[tracking.TAG_STAGE] == "ranking"
    assert exp.tags[tracking.TAG_LIBRARY] == "toy"
    assert exp.artifact_location.startswith(Path(tracking.artifact_root()).as_uri())
    with pytest.raises(ValueError, match="ranking, reference"):
        tracking.experiment_id("rankin", "toy")


def test_tracked_run_tags_params_and_finishes(home: Path) -> None:
    assert tracking.find_run("reference", "toy", "k1") is None
    with tracking.tracked_run(
        "reference",
        "toy",
        "k1",
        name="ppo on CartPole",
        tags={tracking.TAG_ENV: "CartPole-v1", tracking.TAG_SEED: "0"},
        params={"algo": "ppo", "hp": {"lr": 3e-4, "layers": [64, 64]}},
    ) as run:
        assert not run.resumed
        run.log_metrics({"a": 1.0, "b": 2}, step=3)
        run.log_params({"algo": "ppo"})  # same value again: fine
    found = tracking.find_run("reference", "toy", "k1")
    assert found is not None and found.info.run_id == run.run_id
    assert found.info.status == "FINISHED"
    assert found.info.run_name == "ppo on CartPole"
    tags = found.data.tags
    assert tags[tracking.TAG_STAGE] == "reference"
    assert tags[tracking.TAG_LIBRARY] == "toy"
    assert tags[tracking.TAG_RUN_KEY] == "k1"
    assert tags[tracking.TAG_ENV] == "CartPole-v1"
    assert found.data.params == {"algo": "ppo", "hp.lr": "0.0003", "hp.layers": "[64, 64]"}
    assert found.data.metrics == {"a": 1.0, "b": 2.0}
    assert client().get_metric_history(run.run_id, "a")[0].step == 3


def test_failed_run_is_resumed_not_duplicated(home: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="interrupted"),
        tracking.tracked_run("reference", "toy", "k2", name="first", params={"seed": 1}) as run,
    ):
        raise RuntimeError("interrupted")
    failed = tracking.find_run("reference", "toy", "k2")
    assert failed is not None and failed.info.status == "FAILED"
    assert "interrupted" in failed.data.tags[tracking.TAG_ERROR]

    with tracking.tracked_run("reference", "toy", "k2", name="second", params={"seed": 1}) as again:
        assert again.resumed and again.run_id == run.run_id
    exp_id = tracking.experiment_id("reference", "toy")
    runs = client().search_runs([exp_id])
    assert [r.info.run_id for r in runs] == [run.run_id]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].info.run_name == "second"

    # A finished key: a new run (callers check find_run first), and find_run sees the newest.
    time.sleep(0.01)
    with tracking.tracked_run("reference", "toy", "k2", name="third") as third:
        assert not third.resumed and third.run_id != run.run_id
    newest = tracking.find_run("reference", "toy", "k2")
    assert newest is not None and newest.info.run_id == third.run_id


def test_changed_param_on_resume_is_refused(home: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        tracking.tracked_run("reference", "toy", "k3", name="r", params={"lr": 0.1}),
    ):
        raise RuntimeError("crash")
    with (
        pytest.raises(tracking.TrackingError, match=r"lr: '0.1' -> '0.2'"),
        tracking.tracked_run("reference", "toy", "k3", name="r", params={"lr": 0.2}),
    ):
        pass


def test_keyboard_interrupt_marks_killed(home: Path) -> None:
    with pytest.raises(KeyboardInterrupt), tracking.tracked_run("model", "all", "k4", name="m"):
        raise KeyboardInterrupt
    found = tracking.find_run("model", "all", "k4")
    assert found is not None and found.info.status == "KILLED"


def test_nested_runs_and_quotes_in_keys(home: Path) -> None:
    with tracking.tracked_run("ranking", "toy", "parent", name="ranking") as parent:  # noqa: SIM117
        with tracking.tracked_run(
            "ranking", "toy", "it's a child", name="child", parent_run_id=parent.run_id
        ) as child:
            assert child.run_id != parent.run_id
    found = tracking.find_run("ranking", "toy", "it's a child")
    assert found is not None and found.info.run_id == child.run_id
    assert found.data.tags["mlflow.parentRunId"] == parent.run_id


def test_learning_curve_is_batched_and_idempotent(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), synchronous=None):  # type: ignore[no-untyped-def]
        calls.append(len(metrics))
        return original(self, run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    returns = [float(i) for i in range(2500)]
    with tracking.tracked_run("reference", "toy", "curve", name="curve") as run:
        calls.clear()
        run.log_learning_curve(returns, title="ppo / CartPole-v1")
        assert calls == [1000, 1000, 500]
        run.log_learning_curve(returns, title="again")  # no duplicate points
    history = client().get_metric_history(run.run_id, "episode_return")
    assert sorted(m.step for m in history) == list(range(2500))
    assert artifact_files(run.run_id) >= {"learning_curve.png"}
    png = Path(client().download_artifacts(run.run_id, "learning_curve.png", str(home)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_figures_artifacts_and_late_tags(home: Path, tmp_path: Path) -> None:
    df = pl.DataFrame({"candidate": ["ppo-a", "a2c<b>"], "score": [3.0, 1.25], "wins": [1, 0]})
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 10)
    (tmp_path / "note.txt").write_text("hello")
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    with tracking.tracked_run("ranking", "toy", "tables", name="tables") as run:
        run.log_table(df, "ranking")
        run.log_table(df, "tables/per_env.csv")
        run.log_figure(fig, "wins")
        run.log_artifact(tmp_path / "note.txt")
        run.log_artifact(folder, "checkpoints")
        with pytest.raises(FileNotFoundError):
            run.log_artifact(tmp_path / "missing")
    assert artifact_files(run.run_id) >= {
        "ranking.csv",
        "ranking.html",
        "wins.png",
        "note.txt",
        "tables",
        "checkpoints",
    }
    assert artifact_files(run.run_id, "tables") == {"tables/per_env.csv", "tables/per_env.html"}
    assert artifact_files(run.run_id, "checkpoints") == {"checkpoints/weights.bin"}
    out = Path(client().download_artifacts(run.run_id, "ranking.csv", str(tmp_path)))
    assert pl.read_csv(out).equals(df)
    page = Path(client().download_artifacts(run.run_id, "ranking.html", str(tmp_path)))
    assert "a2c&lt;b&gt;" in page.read_text()

    tracking.set_run_tags(run.run_id, {tracking.TAG_DECISION: "drop", tracking.TAG_REASON: "flat"})
    tags = client().get_run(run.run_id).data.tags
    assert tags[tracking.TAG_DECISION] == "drop" and tags[tracking.TAG_REASON] == "flat"
    assert client().get_run(run.run_id).info.status == "FINISHED"
    assert not (Path.cwd() / "mlruns").exists()


def test_two_processes_log_to_one_new_store_at_once(home: Path) -> None:
    from tests.ldm_envs.tracking_tasks import log_concurrently

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=log_concurrently, args=(str(home), f"proc-{i}", barrier, 3000))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    exp_id = tracking.experiment_id("reference", "toy")
    runs = client().search_runs([exp_id])
    assert sorted(r.data.tags[tracking.TAG_RUN_KEY] for r in runs) == ["proc-0", "proc-1"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert len(client().get_metric_history(r.info.run_id, "episode_return")) == 3000
        assert len(client().get_metric_history(r.info.run_id, "loss")) == 20


def test_processes_opening_one_key_at_once_share_one_run(home: Path, tmp_path: Path) -> None:
    """Find-or-create is atomic: two `ldm-autorl run` at once used to make duplicate runs."""
    from tests.ldm_envs.tracking_tasks import open_same_key

    tracking.setup()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"run-{i}.txt" for i in range(2)]
    procs = [
        ctx.Process(target=open_same_key, args=(str(home), "ranking/toy/b100", barrier, str(o)))
        for o in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    runs = client().search_runs([tracking.experiment_id("ranking", "toy")])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert {o.read_text() for o in outs} == {runs[0].info.run_id}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_logs_to_a_tracking_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    port = _free_port()
    served = tmp_path / "served-artifacts"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(served),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.5)

        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        assert tracking.tracking_uri() == url
        with tracking.tracked_run(
            "reference", "toy", "remote", name="remote", params={"algo": "dqn"}
        ) as run:
            run.log_learning_curve([1.0, 2.0, 3.0], title="remote")
            run.log_table(pl.DataFrame({"a": [1]}), "t")
        remote = MlflowClient(tracking_uri=url)
        got = remote.get_run(run.run_id)
        assert got.info.status == "FINISHED"
        assert got.data.params == {"algo": "dqn"}
        assert got.data.tags[tracking.TAG_RUN_KEY] == "remote"
        assert remote.get_experiment(got.info.experiment_id).name == "ldm-reference/toy"
        found = tracking.find_run("reference", "toy", "remote")
        assert found is not None and found.info.run_id == run.run_id
        # Artifacts went through the server into its artifact destination, not the data home.
        landed = {p.name for p in served.rglob("*") if p.is_file()}
        assert {"learning_curve.png", "t.csv", "t.html"} <= landed
        assert not (home / "mlflow" / "mlflow.db").exists()
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()


def test_locked_database_is_retried() -> None:
    from mlflow.exceptions import MlflowException

    calls: list[int] = []

    def locked_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "done"

    assert tracking._retry(locked_twice) == "done" and len(calls) == 3

    def other() -> None:
        calls.append(1)
        raise MlflowException("no such run")

    calls.clear()
    with pytest.raises(MlflowException, match="no such run"):
        tracking._retry(other)
    assert len(calls) == 1


def test_importing_is_cheap() -> None:
    code = (
        "import sys, ldm_envs, ldm_envs.tracking; "
        "heavy = {'mlflow', 'polars', 'matplotlib'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_is_named(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As if mlflow/matplotlib were not installed: importing the module still works, using it
    # says which extra to install.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match=r"pip install 'ldm-envs\[tracking\]'"):
        tracking.setup()
    with pytest.raises(ImportError, match=r"ldm-envs\[tracking\]"):
        tracking.find_run("reference", "toy", "k")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"needs 'matplotlib'.*ldm-envs\[tracking\]"):
        tracking._learning_curve_figure([1.0], "t")
