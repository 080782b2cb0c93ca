"""Browsing: the MLflow UI, started on the embedded store as the README says, shows every stage.

A small but real store is built through the code paths the stages use: `ldm_envs.tracking`
runs for ranking and reference runs (with learning curves and the ranking table), the filter's
decision tags set as `ldm_autorl.pipeline.filter_runs` sets them, a 3-step LDM training run by
`ldm_model.training.train` (which logs its checkpoint), and an evaluation run with the
threshold curve drawn by `ldm_eval.plots`. Then `mlflow ui` is started on a free loopback port
and headless Chromium, driven over the DevTools protocol, opens the pages a person would click
through; each page must show (as visible text) the names, tags and artifacts it is for, and the
threshold-curve image must load.

Screenshots are written under the test's temporary folder (pytest keeps the last three runs'
under its base temp folder) and, when `$LDM_UI_SHOTS` names a folder, copied there for a person
to look at; the test writes and deletes nothing outside its temporary folders otherwise.

Needs Chromium (Debian's `chromium`; `.ci/run` installs it): skipped without it, except under
`CI=true`, where its absence is a failure.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytestmark = pytest.mark.slow

LIBRARY = "toy"
ENV_IDS = ("VecDiscrete-v0", "VecBox-v0")
SERVER_START_S = 120.0
#: How long a page may take to show what a test waits for.
PAGE_TIMEOUT_S = 60.0
#: How long one DevTools command may take.
CDP_TIMEOUT_S = 30.0
WINDOW = (1600, 1000)


# --------------------------------------------------------------------------------------------
# The store


@dataclass
class Store:
    """What the test logged: experiment ids by stage, run ids by role."""

    home: Path
    experiments: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    checkpoint: Path | None = None


def _returns(start: float, end: float, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return (np.linspace(start, end, n) + rng.normal(0, 2, n)).tolist()


def _log_ranking(store: Store) -> None:
    from ldm_autorl import layout
    from ldm_autorl.stats import rank_candidates, window
    from ldm_envs import tracking

    budget = 1000
    curves = {"ppo": (10.0, 120.0), "dqn": (10.0, 60.0), "a2c": (10.0, 12.0)}
    last: dict[str, dict[str, list[float]]] = {}
    with tracking.tracked_run(
        "ranking",
        LIBRARY,
        layout.stage_key("ranking", LIBRARY, budget),
        name=f"ranking {LIBRARY}",
        params={"budget": budget, "seeds": "0", "backend": "inprocess"},
        reuse_finished=True,
    ) as parent:
        for k, (candidate, (lo, hi)) in enumerate(curves.items()):
            env_id = ENV_IDS[0]
            returns = _returns(lo, hi, 60, seed=k)
            with tracking.tracked_run(
                "ranking",
                LIBRARY,
                layout.run_key("ranking", LIBRARY, env_id, candidate, 0, budget),
                name=f"{env_id} · {candidate} · s0",
                tags={
                    tracking.TAG_ENV: env_id,
                    tracking.TAG_CANDIDATE: candidate,
                    tracking.TAG_SEED: "0",
                },
                params={"algorithm": candidate.upper(), "budget": budget},
                parent_run_id=parent.run_id,
            ) as run:
                run.log_learning_curve(returns, title=f"{env_id} · {candidate} · s0")
            last.setdefault(env_id, {})[candidate] = window(returns, "last").tolist()
        parent.log_table(rank_candidates(last), "ranking")
        parent.log_metrics({"runs": len(curves), "failures": 0})
    store.experiments["ranking"] = parent.experiment_id
    store.runs["ranking"] = parent.run_id


def _log_reference_and_filter(store: Store) -> None:
    """Two reference runs of one env, then the filter's decisions, tagged on them."""
    from ldm_autorl import layout
    from ldm_autorl.stats import decide
    from ldm_envs import tracking

    budget = 2000
    env_id = ENV_IDS[0]
    curves = {"ppo": (10.0, 150.0), "dqn": (10.0, 10.0)}
    returns: dict[str, list[float]] = {}
    run_ids: dict[str, str] = {}
    with tracking.tracked_run(
        "reference",
        LIBRARY,
        layout.stage_key("reference", LIBRARY, budget),
        name=f"reference runs {LIBRARY}",
        params={"budget": budget, "top_n": 2, "backend": "inprocess"},
        reuse_finished=True,
    ) as parent:
        for k, (candidate, (lo, hi)) in enumerate(curves.items()):
            key = layout.run_key("reference", LIBRARY, env_id, candidate, 0, budget)
            with tracking.tracked_run(
                "reference",
                LIBRARY,
                key,
                name=f"{env_id} · {candidate} · s0",
                tags={
                    tracking.TAG_ENV: env_id,
                    tracking.TAG_CANDIDATE: candidate,
                    tracking.TAG_SEED: "0",
                },
                params={"algorithm": candidate.upper(), "budget": budget},
                parent_run_id=parent.run_id,
            ) as run:
                returns[key] = _returns(lo, hi, 80, seed=10 + k)
                run.log_learning_curve(returns[key], title=f"{env_id} · {candidate} · s0")
            run_ids[candidate] = run.run_id
    store.experiments["reference"] = parent.experiment_id
    store.runs["reference_kept"] = run_ids["ppo"]
    store.runs["reference_dropped"] = run_ids["dqn"]

    # as ldm_autorl.pipeline.filter_runs does it
    rows = []
    with tracking.tracked_run(
        "filter",
        LIBRARY,
        layout.stage_key("filter", LIBRARY),
        name=f"filter {LIBRARY}",
        reuse_finished=True,
    ) as filt:
        decisions = decide(returns)
        for candidate, run_id in run_ids.items():
            key = layout.run_key("reference", LIBRARY, env_id, candidate, 0, budget)
            d = decisions[key]
            tracking.set_run_tags(
                run_id,
                {
                    tracking.TAG_DECISION: "kept" if d.kept else "dropped",
                    tracking.TAG_REASON: d.reason,
                },
            )
            rows.append(
                {"env_id": env_id, "candidate": candidate, "kept": d.kept, "reason": d.reason}
            )
        table = pl.DataFrame(rows)
        filt.log_table(table, "filter_decisions")
        filt.log_metrics({"kept": int(table["kept"].sum()), "runs": table.height})
    store.experiments["filter"] = filt.experiment_id
    store.runs["filter"] = filt.run_id
    assert decisions[layout.run_key("reference", LIBRARY, env_id, "ppo", 0, budget)].kept
    assert not decisions[layout.run_key("reference", LIBRARY, env_id, "dqn", 0, budget)].kept


def _log_model(store: Store, tmp: Path) -> None:
    """Three steps of the tiny LDM on a synthetic dataset; the trainer logs its checkpoint."""
    import torch

    from ldm_model.training import TrainConfig, train
    from tests.ldm_model.datasets import make_dataset

    data = tmp / "dataset"
    make_dataset(data)
    config = TrainConfig(
        model="tiny",
        data_root=data,
        libraries=[LIBRARY],
        batch_size=4,
        context=8,
        steps=3,
        log_every=1,
        checkpoint_every=3,
        device="cpu",
        out=tmp / "model",
        mlflow=True,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.mlflow_run_id
    store.runs["model"] = result.mlflow_run_id
    store.checkpoint = result.checkpoint


def _log_eval(store: Store) -> None:
    """An evaluation run with its threshold curve (table and plot), as ldm_eval logs them."""
    from ldm_envs import tracking
    from ldm_eval.aggregate import threshold_curve
    from ldm_eval.pipeline import TAG_CHECKPOINT_PATH, TAG_CHECKPOINT_RUN, TAG_POLICIES
    from ldm_eval.plots import threshold_figure

    scores = pl.DataFrame(
        {
            "policy": ["ldm", "ldm", "random", "random"],
            "library": [LIBRARY] * 4,
            "env_id": list(ENV_IDS) * 2,
            "status": ["ok"] * 4,
            "score": [0.92, 0.55, 0.03, -0.02],
            "scored": [True] * 4,
        }
    )
    curve = threshold_curve(scores)
    with tracking.tracked_run(
        "eval",
        LIBRARY,
        "eval/ui-test",
        name="eval tiny-ui-test",
        tags={
            TAG_CHECKPOINT_RUN: store.runs["model"],
            TAG_CHECKPOINT_PATH: str(store.checkpoint),
            TAG_POLICIES: "ldm,random",
        },
        params={"episodes": 1, "envs": len(ENV_IDS)},
    ) as run:
        run.log_metrics({"ldm/frac_at_least_80": 0.5, "random/frac_at_least_80": 0.0})
        run.log_table(curve, "threshold_curve")
        run.log_figure(threshold_figure(curve), "threshold_curve.png")
    store.experiments["eval"] = run.experiment_id
    store.runs["eval"] = run.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A fresh embedded store under a temporary LDM_HOME, holding one run of every stage."""
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LDM_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from ldm_envs import tracking

        result = Store(home=home)
        _log_ranking(result)
        _log_reference_and_filter(result)
        _log_model(result, tmp)
        result.experiments["model"] = tracking.experiment_id("model", LIBRARY)
        _log_eval(result)
        yield result


# --------------------------------------------------------------------------------------------
# The server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow ui` on the store (the README's command), on loopback; yields its base URL."""
    port = _free_port()
    cwd = tmp_path_factory.mktemp("ui-server")
    log = cwd / "mlflow-ui.log"
    db = store.home.resolve() / "mlflow" / "mlflow.db"
    assert db.is_file()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_cli) if mlflow_cli.is_file() else "mlflow",
        "ui",
        "--workers",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{db}",
    ]
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                if _get(f"{base}/health", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow ui not up in {SERVER_START_S:.0f}s:\n{log.read_text()[-4000:]}"
                )
            time.sleep(0.5)
        yield base
    finally:
        # the server runs its workers in its own session: end the whole group
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# Chromium, driven over the DevTools protocol on a pipe (no client library needed)


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _high_fd(fd: int) -> int:
    """`fd` moved to a number >= 10, so redirecting to 3 and 4 in the child cannot clobber it."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    """Headless Chromium with `--remote-debugging-pipe`: commands on fd 3, replies on fd 4.

    Each message is one JSON object followed by a NUL byte. Pages are opened one tab each.
    """

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        cmd_r, cmd_w = map(_high_fd, os.pipe())
        out_r, out_w = map(_high_fd, os.pipe())
        args = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # bash puts the pipe ends on fds 3 and 4, where Chromium expects them
        redirect = f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", redirect, *args],
                pass_fds=(cmd_r, out_w),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        os.close(cmd_r)
        os.close(out_w)
        self._w, self._r = cmd_w, out_r
        self._buf = b""
        self._id = 0
        self.log = log

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events in between are dropped)."""
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + CDP_TIMEOUT_S
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {method} in {CDP_TIMEOUT_S}s")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited:\n{self.log.read_text()[-3000:]}")
                self._buf += chunk

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self._w)
        os.close(self._r)


class Tab:
    """One page of the UI in its own tab."""

    def __init__(self, browser: Chromium, url: str) -> None:
        self.browser = browser
        self.url = url
        self.target = browser.send("Target.createTarget", {"url": url})["targetId"]
        self.session = browser.send(
            "Target.attachToTarget", {"targetId": self.target, "flatten": True}
        )["sessionId"]

    def eval(self, expression: str) -> object:
        result = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            self.session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        """What the page shows (`innerText`: collapsed and hidden elements left out), with
        runs of whitespace made one space ("ldm.stage\\n: model" reads "ldm.stage : model")."""
        return " ".join(str(self.eval("document.body ? document.body.innerText : ''")).split())

    def wait_for(
        self, *needles: str, ready: str | None = None, timeout: float = PAGE_TIMEOUT_S
    ) -> str:
        """Wait until the page shows every needle (and the JS expression `ready` is truthy);
        returns its text. Fails naming what is missing."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing and ready is not None and not self.eval(ready):
                missing = [ready]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.url} does not show {missing} after {timeout:.0f}s; it shows:\n"
                    f"{text[:3000]}"
                )
            time.sleep(0.25)

    def settle(self) -> None:
        """Wait for running animations (a folder unfolding) to end, and for the next frame."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.eval(
            "document.getAnimations().filter(a => a.playState === 'running').length"
        ):
            time.sleep(0.1)
        time.sleep(0.3)

    def screenshot(self, path: Path) -> None:
        self.settle()
        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, self.session)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.send("Target.closeTarget", {"targetId": self.target})


@dataclass
class UI:
    """The UI at `base`, seen through `browser`; screenshots go to `shots` (and `copies`)."""

    browser: Chromium
    base: str
    shots: Path
    copies: Path | None

    @contextlib.contextmanager
    def open(
        self, fragment: str, shot: str, *needles: str, ready: str | None = None
    ) -> Iterator[tuple[Tab, str]]:
        """Open `#/<fragment>` in a new tab, wait until it shows `needles` (and `ready` holds),
        screenshot it as `shot` (also when it does not), yield the tab and the text it shows."""
        tab = Tab(self.browser, f"{self.base}/#/{fragment}")
        try:
            try:
                text = tab.wait_for(*needles, ready=ready)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.shoot(tab, shot)  # what it showed instead
                raise
            self.shoot(tab, shot)
            yield tab, text
        finally:
            tab.close()

    def show(self, fragment: str, shot: str, *needles: str, ready: str | None = None) -> str:
        """`open`, for a page that only has to show `needles`; returns its text."""
        with self.open(fragment, shot, *needles, ready=ready) as (_, text):
            return text

    def shoot(self, tab: Tab, shot: str) -> None:
        png = self.shots / shot
        tab.screenshot(png)
        if self.copies is not None:
            shutil.copy2(png, self.copies / shot)


def _click_model_training(ui: UI) -> None:
    """What the README tells a person to do once: pick "Model training" in the sidebar switch.

    MLflow 3.17's UI picks the view of every experiment from this switch (kept in the
    browser's local storage, GenAI by default), not from the experiment's kind tag.
    """
    with ui.open("experiments", "00-experiments-genai-default.png", "Model training") as (tab, _):
        clicked = tab.eval(
            "(() => { const s = [...document.querySelectorAll('[role=button] span')]"
            ".find(e => e.textContent.trim() === 'Model training');"
            " if (!s) return false; s.closest('[role=button]').click(); return true; })()"
        )
        assert clicked, "no 'Model training' switch in the sidebar"
        # the assistant panel opens by itself on a first visit; closed, pages get wider
        tab.eval(
            "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
            "?.click()"
        )
        deadline = time.monotonic() + 10
        while tab.eval("localStorage.getItem('mlflow.workflowType_v1')") != '"machine_learning"':
            assert time.monotonic() < deadline, "the 'Model training' switch did not stick"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = _find_chromium()
    if binary is None:
        reason = "headless Chromium not found (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def ui(chromium: str, server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """The UI in a fresh Chromium profile, switched to "Model training" as the README says."""
    tmp = tmp_path_factory.mktemp("chromium")
    shots = tmp / "shots"
    shots.mkdir()
    # Opt-in, and never emptied: the folder is the person's, the fixed shot names overwrite
    # the previous run's.
    wanted = os.environ.get("LDM_UI_SHOTS")
    copies: Path | None = Path(wanted) if wanted else None
    if copies is not None:
        try:
            copies.mkdir(parents=True, exist_ok=True)
        except OSError:
            copies = None
    browser = Chromium(chromium, tmp / "profile", tmp / "chromium.log")
    try:
        view = UI(browser, server, shots, copies)
        _click_model_training(view)
        yield view
    finally:
        browser.close()


# --------------------------------------------------------------------------------------------
# The pages a person clicks through


def test_experiments_list_shows_every_stage(ui: UI) -> None:
    names = [
        f"ldm-{stage}/{LIBRARY}" for stage in ("ranking", "reference", "filter", "model", "eval")
    ]
    ui.show("experiments", "01-experiments.png", *names, "ldm.stage")


def test_ranking_run_and_its_table(ui: UI, store: Store) -> None:
    run = f"experiments/{store.experiments['ranking']}/runs/{store.runs['ranking']}"
    ui.show(
        run,
        "02-ranking-run.png",
        f"ranking {LIBRARY}",
        "ldm.stage : ranking",
        "Child runs",
        "VecDiscrete-v0 · ppo · s0",
    )
    ui.show(
        f"{run}/artifacts/ranking.csv",
        "03-ranking-table.png",
        "ranking.html",
        "candidate",
        "points",
        "ppo",
        "dqn",
        "a2c",
    )


def test_reference_run_shows_its_filter_decision(ui: UI, store: Store) -> None:
    exp = store.experiments["reference"]
    ui.show(
        f"experiments/{exp}/runs/{store.runs['reference_dropped']}",
        "04-reference-run-dropped.png",
        "VecDiscrete-v0 · dqn · s0",
        f"reference runs {LIBRARY}",  # its parent
        "ldm.filter.decision : dropped",
        "ldm.filter.reason : no significant improvement",
        "ldm.candidate : dqn",
    )
    # the experiment's runs, filtered on the decision tag (sorted on a metric, so the kept run
    # is listed on its own rather than folded under its parent)
    query = urllib.parse.urlencode(
        {
            "searchFilter": "tags.`ldm.filter.decision` = 'kept'",
            "orderByKey": "metrics.`episode_return`",
            "orderByAsc": "false",
        },
        quote_via=urllib.parse.quote,
    )
    text = ui.show(
        f"experiments/{exp}/runs?{query}",
        "05-reference-runs-kept.png",
        "VecDiscrete-v0 · ppo · s0",
        "1 matching run",
    )
    assert "VecDiscrete-v0 · dqn · s0" not in text


def test_model_run_lists_its_checkpoint(ui: UI, store: Store) -> None:
    run = f"experiments/{store.experiments['model']}/runs/{store.runs['model']}"
    ui.show(
        run,
        "06-model-run.png",
        "ldm.stage : model",
        "ldm.model : tiny",
        f"ldm.checkpoint : {store.checkpoint}",
        "accuracy",
    )
    ui.show(
        f"{run}/artifacts/checkpoint",
        "07-model-checkpoint.png",
        "checkpoint.json",
        "model.safetensors",
        "optimizer.safetensors",
        "dataset_index",
        "loss_curve.png",
    )


def test_eval_run_shows_the_threshold_curve(ui: UI, store: Store) -> None:
    exp, run_id = store.experiments["eval"], store.runs["eval"]
    run = f"experiments/{exp}/runs/{run_id}"
    # the evaluation names the training run whose checkpoint it evaluated
    ui.show(
        run,
        "08-eval-run.png",
        "eval tiny-ui-test",
        f"ldm.checkpoint_run_id : {store.runs['model']}",
        "ldm/frac_at_least_80",
    )
    # the preview is an <img> the UI fills from /get-artifact: it must have loaded
    image = "document.querySelector('img[alt=\"threshold_curve.png\"]')"
    with ui.open(
        f"{run}/artifacts/threshold_curve.png",
        "09-eval-threshold-curve.png",
        "threshold_curve.png",
        "threshold_curve.csv",
        "threshold_curve.html",
        ready=f"{image}?.complete && {image}.naturalWidth > 0",
    ) as (tab, _):
        size = tab.eval(f"[{image}.naturalWidth, {image}.naturalHeight]")
    assert isinstance(size, list) and size[0] > 400 and size[1] > 200, size
    query = urllib.parse.urlencode({"path": "threshold_curve.png", "run_uuid": run_id})
    status, kind, body = _get(f"{ui.base}/get-artifact?{query}")
    assert status == 200 and body.startswith(b"\x89PNG\r\n\x1a\n"), (status, kind, body[:16])
