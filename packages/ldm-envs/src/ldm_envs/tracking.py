"""MLflow tracking for ldm: the one module that talks to MLflow, shared by every stage.

It lives in ldm-envs, the package every other one depends on, so that ldm-autorl (ranking,
reference, filter, dataset), ldm-model and ldm-eval all log the same way without depending on
each other. It needs the optional extra `ldm-envs[tracking]` (mlflow, matplotlib); without it,
`import ldm_envs` and even `import ldm_envs.tracking` still work, and the first call that needs
MLflow raises an ImportError that says what to install.

By default everything goes to an embedded store under the data home: a SQLite database at
`<data_home>/mlflow/mlflow.db` and artifacts under `<data_home>/mlflow/artifacts`. Setting
`MLFLOW_TRACKING_URI` (for example `http://head-node:5000`) sends everything to a shared server
instead, which is what a multi-node run wants.

One experiment per stage and library (`ldm-<stage>/<library>`). Every run carries the tags
`ldm.stage`, `ldm.library` and `ldm.run_key`; the run key is what makes a pipeline resumable: a
FINISHED run with that key means the work is done, an unfinished one (RUNNING after a crash,
FAILED, KILLED) is reopened by `tracked_run` rather than duplicated. Finding that run and
creating it when there is none is one atomic step: on the embedded store under a file lock
next to the database, on a server by looking again after creating and keeping only the oldest
run with the key. So two processes opening the same key at once share one run.

Several processes may log to the same SQLite store at once (a local process pool): the store is
created under a file lock, and writes that meet `database is locked` are retried with backoff.

MLflow and matplotlib (slow to import) are imported on first use, so importing this module is
cheap.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from ldm_envs.errors import LDMEnvsError
from ldm_envs.paths import data_home

if TYPE_CHECKING:
    import polars
    from matplotlib.figure import Figure
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "STAGES",
    "TAG_BACKEND",
    "TAG_CANDIDATE",
    "TAG_DECISION",
    "TAG_ENV",
    "TAG_LIBRARY",
    "TAG_REASON",
    "TAG_RUN_KEY",
    "TAG_SEED",
    "TAG_SEEDS",
    "TAG_STAGE",
    "TAG_TOP_N",
    "RunHandle",
    "TrackingError",
    "artifact_root",
    "experiment_id",
    "find_run",
    "set_run_tags",
    "setup",
    "tracked_run",
    "tracking_uri",
]

TAG_STAGE = "ldm.stage"
TAG_LIBRARY = "ldm.library"
TAG_ENV = "ldm.env_id"
TAG_CANDIDATE = "ldm.candidate"
TAG_SEED = "ldm.seed"
TAG_RUN_KEY = "ldm.run_key"
#: The isolation backend a run used (last): a tag, not a param, so another backend can resume it.
TAG_BACKEND = "ldm.backend"
#: On a stage's parent run: every seed its child runs used so far ("0,1"), grown by each call.
TAG_SEEDS = "ldm.seeds"
#: On the reference stage's parent run: every top-N it was called with.
TAG_TOP_N = "ldm.top_n"
#: Marks an experiment as model training (MLflow 3.17's UI does not yet pick its view from it).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
TAG_DECISION = "ldm.filter.decision"
TAG_REASON = "ldm.filter.reason"
TAG_ERROR = "ldm.error"
"""Set on a run that ended with an exception: the exception's type and message (truncated)."""

STAGES = ("ranking", "reference", "filter", "dataset", "model", "eval")
"""The pipeline stages; each has one experiment per library."""

LEARNING_CURVE_METRIC = "episode_return"
LEARNING_CURVE_FILE = "learning_curve.png"

# MLflow's limits (mlflow.utils.validation); values beyond them are truncated, batches split.
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_HTML_ROWS = 10_000

#: How far other nodes' clocks may lag ours when telling a rival new run from an old attempt.
_CLOCK_SKEW_MS = 60_000

_LOCKED_MARKERS = ("database is locked", "database table is locked", "database is busy")
_RETRY_SECONDS = 180.0

_T = TypeVar("_T")

_state_lock = threading.Lock()
_ready_uris: set[str] = set()
_clients: dict[str, MlflowClient] = {}
_experiments: dict[tuple[str, str], str] = {}


class TrackingError(LDMEnvsError, RuntimeError):
    """Tracking failed in a way the caller must fix (a changed param, a deleted experiment).

    An `LDMEnvsError`, so the CLIs print it as one `error: ...` line, not a traceback.
    """


_EXTRA_HINT = "pip install 'ldm-envs[tracking]'"


def _require(module: str) -> None:
    """Import `module` (mlflow, matplotlib), or say which extra provides it.

    Raises:
        ImportError: the module is not installed; the message names the tracking extra.
    """
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise ImportError(
            f"ldm_envs.tracking needs {module!r}, which is not installed; install the tracking "
            f"extra: {_EXTRA_HINT} (or, in the ldm workspace, `uv sync`)"
        ) from exc


# --------------------------------------------------------------------------------------------
# Where things go


def tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else the embedded SQLite store under the data home.

    The embedded store's folder is created here; the database itself on first use.
    """
    if uri := os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return uri
    folder = data_home().expanduser().resolve() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_root() -> str:
    """Where the embedded store keeps artifacts: `<data_home>/mlflow/artifacts`."""
    return str(data_home().expanduser().resolve() / "mlflow" / "artifacts")


def _is_embedded(uri: str) -> bool:
    """A SQLite store: no server decides where artifacts go, so we do (under the data home)."""
    return uri.startswith("sqlite:")


# --------------------------------------------------------------------------------------------
# Setup, clients, retries


class _DropLockedErrors(logging.Filter):
    """MLflow logs a full traceback for every `database is locked` before raising; we retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(marker in msg for marker in _LOCKED_MARKERS)


def _quiet_logging() -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db_logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _DropLockedErrors) for f in db_logger.filters):
        db_logger.addFilter(_DropLockedErrors())


def setup() -> None:
    """Point MLflow at `tracking_uri()` and make sure the store exists. Idempotent, cheap.

    MLflow's fluent API (`mlflow.search_runs`, ...) then uses the same store. Unlike a bare
    `mlflow.set_tracking_uri`, this leaves `MLFLOW_TRACKING_URI` unset when it was unset.

    On SQLite, the first process to get here creates the tables (MLflow's migrations, a few
    seconds) while holding a file lock next to the database, so processes starting together do
    not race on the schema.

    Raises:
        ImportError: mlflow is not installed (the `ldm-envs[tracking]` extra).
    """
    _require("mlflow")
    import mlflow

    uri = tracking_uri()
    _quiet_logging()
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    had_env = "MLFLOW_TRACKING_URI" in os.environ
    mlflow.set_tracking_uri(uri)
    if not had_env:
        # MLflow also exports the URI to the environment; undo that, so the default keeps
        # following the data home (LDM_HOME) here and in child processes.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    with _state_lock:
        if uri in _ready_uris:
            return
        if _is_embedded(uri) and (db := _sqlite_path(uri)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(db.with_name(db.name + ".init.lock")):
                _retry(lambda: _client_for(uri).search_experiments(max_results=1))
        _ready_uris.add(uri)


def _sqlite_path(uri: str) -> Path | None:
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:" or uri.startswith("sqlite:///:memory:"):
        return None
    return Path(path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no inter-process lock, MLflow's own checks
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _client_for(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    if (client := _clients.get(uri)) is None:
        client = _clients[uri] = MlflowClient(tracking_uri=uri)
    return client


def _client() -> MlflowClient:
    setup()
    return _client_for(tracking_uri())


def _is_locked(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(marker in str(cur) for marker in _LOCKED_MARKERS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _retry(call: Callable[[], _T]) -> _T:
    """Run `call`, retrying with jittered backoff while SQLite says the database is locked.

    A failed write is rolled back by MLflow's session, so retrying never duplicates it.
    """
    deadline = time.monotonic() + _RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            return call()
        except Exception as exc:
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


# --------------------------------------------------------------------------------------------
# Experiments and runs


def _experiment_name(stage: str, library: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; the stages are: {', '.join(STAGES)}")
    if not library or not library.strip():
        raise ValueError("library must be a non-empty name")
    return f"ldm-{stage}/{library}"


def experiment_id(stage: str, library: str) -> str:
    """Id of the experiment `ldm-<stage>/<library>`, created (with stage/library tags) if new.

    On the embedded store its artifacts go to `<artifact_root>/<stage>/<library>`; on a server,
    to the server's default artifact location.

    Raises:
        ValueError: `stage` is not one of `STAGES` or `library` is empty.
        TrackingError: the experiment exists but was deleted (restore it, or purge it with
            `mlflow gc`, before running again).
    """
    _require("mlflow")
    from mlflow.exceptions import MlflowException

    name = _experiment_name(stage, library)
    client = _client()
    uri = tracking_uri()
    if (cached := _experiments.get((uri, name))) is not None:
        return cached
    exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp is None:
        location = None
        if _is_embedded(uri):
            safe = library.replace(os.sep, "_").replace("/", "_")
            location = (Path(artifact_root()) / stage / safe).as_uri()
        try:
            exp_id = _retry(
                lambda: client.create_experiment(
                    name,
                    artifact_location=location,
                    # marks these as model-training experiments; MLflow 3.17's UI still opens
                    # in its GenAI view until "Model training" is picked once (README)
                    tags={
                        TAG_STAGE: stage,
                        TAG_LIBRARY: library,
                        TAG_EXPERIMENT_KIND: MODEL_TRAINING,
                    },
                )
            )
        except MlflowException:
            # Another process created it between our lookup and our insert.
            exp = _retry(lambda: client.get_experiment_by_name(name))
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        if exp.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment {name!r} (id {exp.experiment_id}) is deleted: restore it "
                f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or purge it "
                "(`mlflow gc`) before logging to it again"
            )
        exp_id = exp.experiment_id
    _experiments[(uri, name)] = exp_id
    return exp_id


def _run_key_filter(run_key: str) -> str:
    if not run_key:
        raise ValueError("run_key must be non-empty")
    if "'" not in run_key:
        return f"tags.`{TAG_RUN_KEY}` = '{run_key}'"
    if '"' not in run_key:
        return f'tags.`{TAG_RUN_KEY}` = "{run_key}"'
    raise ValueError(f"run_key {run_key!r} holds both quote characters; use at most one kind")


def find_run(stage: str, library: str, run_key: str) -> Run | None:
    """The most recent live run of `ldm-<stage>/<library>` tagged `ldm.run_key = run_key`.

    Deleted runs are ignored. Its `info.status` tells the caller what to do: FINISHED means the
    work is done; anything else is an interrupted attempt that `tracked_run` will reopen.
    Does not create the experiment.
    """
    _require("mlflow")
    from mlflow.entities import ViewType

    name = _experiment_name(stage, library)
    flt = _run_key_filter(run_key)
    client = _client()
    exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp is None or exp.lifecycle_stage != "active":
        return None
    runs = _retry(
        lambda: client.search_runs(
            [exp.experiment_id],
            filter_string=flt,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
    )
    return runs[0] if runs else None


@contextlib.contextmanager
def tracked_run(
    stage: str,
    library: str,
    run_key: str,
    *,
    name: str,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    reuse_finished: bool = False,
) -> Iterator[RunHandle]:
    """Open the run keyed `run_key` in `ldm-<stage>/<library>` for the duration of a block.

    With `reuse_finished`, a FINISHED run with that key is reopened too: stage-level parent
    runs use it, so running a stage again (or resuming the pipeline after it) adds to the same
    run instead of starting a duplicate.

    An unfinished run with that key (RUNNING after a crash, FAILED, KILLED) is reopened and set
    RUNNING again, so an interrupted pipeline does not leave duplicates; otherwise (no run, or
    only a FINISHED one) a new run is started. Callers that must not redo finished work check
    `find_run` first.

    The run gets the tags `ldm.stage`, `ldm.library`, `ldm.run_key`, the given `tags`, MLflow's
    source/user tags, and `mlflow.parentRunId` when `parent_run_id` is given (it then shows
    nested under that run in the UI). `params` are logged at once (nested mappings flattened
    with dots). The block's exception marks the run FAILED (KILLED for KeyboardInterrupt and
    other non-`Exception`s), records it in the tag `ldm.error` and is re-raised; a clean exit
    marks it FINISHED.

    Uses `MlflowClient` only: it neither needs nor changes MLflow's "active run", so it is safe
    in threads and can be nested freely.

    Yields:
        The run's handle.
    """
    _require("mlflow")
    from mlflow.tracking.context import registry as context_registry
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = _client()
    exp_id = experiment_id(stage, library)
    base_tags = {TAG_STAGE: stage, TAG_LIBRARY: library, TAG_RUN_KEY: run_key, **(tags or {})}
    if parent_run_id:
        base_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    asked_ms = int(time.time() * 1000)
    with _creation_lock():  # find-or-create is one step: two processes never both create
        existing = find_run(stage, library, run_key)
        if existing is not None and (reuse_finished or existing.info.status != "FINISHED"):
            handle = RunHandle(existing.info.run_id, experiment_id=exp_id, resumed=True)
        else:
            all_tags = context_registry.resolve_tags({**base_tags, MLFLOW_RUN_NAME: name})
            all_tags = {k: _truncate(str(v), _MAX_TAG_LEN) for k, v in all_tags.items()}
            run = _retry(lambda: client.create_run(exp_id, tags=all_tags, run_name=name))
            handle = _keep_oldest(run_key, run.info.run_id, exp_id, since_ms=asked_ms)
    if handle.resumed:
        _retry(lambda: client.update_run(handle.run_id, status="RUNNING", name=name))
        handle.set_tags(base_tags)
    try:
        if params:
            handle.log_params(params)
        yield handle
    except BaseException as exc:
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        with contextlib.suppress(Exception):
            handle.set_tags({TAG_ERROR: f"{type(exc).__name__}: {exc}"})
        _retry(lambda: client.set_terminated(handle.run_id, status=status))
        raise
    _retry(lambda: client.set_terminated(handle.run_id, status="FINISHED"))


@contextlib.contextmanager
def _creation_lock() -> Iterator[None]:
    """Serialize find-or-create of runs among the processes sharing this tracking store.

    The embedded SQLite store gets a file lock next to its database (held for one search and
    at most one insert); a server has no lock we could share, and relies on `_keep_oldest`.
    """
    uri = tracking_uri()
    db = _sqlite_path(uri) if _is_embedded(uri) else None
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(db.with_name(db.name + ".runs.lock")):
        yield


def _keep_oldest(run_key: str, created: str, exp_id: str, *, since_ms: int) -> RunHandle:
    """After creating run `created`, make sure it is the only new live run with `run_key`.

    Where no lock serialized the creation (a tracking server shared by several nodes), another
    process may have created a run with the same key meanwhile: among the RUNNING runs with the
    key started since `since_ms` (when this process looked for one, less a minute for clocks
    of other nodes; older runs are earlier attempts, not rivals), every process keeps the
    oldest (earliest start, then smallest id), and a process whose run lost deletes its own
    and reopens the winner, so the key still names one run.
    """
    _require("mlflow")
    from mlflow.entities import ViewType

    client = _client()
    runs = _retry(
        lambda: client.search_runs(
            [exp_id],
            filter_string=_run_key_filter(run_key),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50,
        )
    )
    recent = since_ms - _CLOCK_SKEW_MS
    runs = [r for r in runs if r.info.status == "RUNNING" and (r.info.start_time or 0) >= recent]
    if len(runs) <= 1:
        return RunHandle(created, experiment_id=exp_id, resumed=False)
    oldest = min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    if oldest.info.run_id == created:
        return RunHandle(created, experiment_id=exp_id, resumed=False)
    _retry(lambda: client.delete_run(created))
    return RunHandle(oldest.info.run_id, experiment_id=exp_id, resumed=True)


def set_run_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Tag a run after the fact (a filter decision on a finished reference run)."""
    client = _client()
    from mlflow.entities import RunTag

    items = [RunTag(k, _truncate(str(v), _MAX_TAG_LEN)) for k, v in tags.items()]
    for chunk in _chunks(items, _MAX_PARAMS_TAGS_PER_BATCH):
        _retry(lambda chunk=chunk: client.log_batch(run_id, tags=chunk))


# --------------------------------------------------------------------------------------------
# The run handle


class RunHandle:
    """What a `tracked_run` block logs through. Thin: every call goes straight to MLflow.

    Attributes:
        run_id: The MLflow run id (record it next to what the run produced).
        experiment_id: The run's experiment.
        resumed: True when an interrupted run with the same key was reopened.
    """

    def __init__(self, run_id: str, *, experiment_id: str = "", resumed: bool = False) -> None:
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.resumed = resumed

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, resumed={self.resumed})"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics in one batch, at `step` (0 when None), stamped now."""
        _require("mlflow")
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items()]
        self._log_metric_items(items)

    def log_summary(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Log a run's summary values (counts, totals) once, however often the run is reopened.

        A stage's parent run is reopened by every resume of the stage, which used to log its
        counts again at step 0 each time: duplicate points in the metric history. Here a value
        the run already holds as that metric's latest is skipped; a changed one (a resume that
        finished more runs) becomes the next point of its history (step = points so far), so
        the history reads as the stage's progress.

        Returns:
            The metrics that were logged.
        """
        _require("mlflow")
        from mlflow.entities import Metric

        client = _client()
        have = _retry(lambda: client.get_run(self.run_id)).data.metrics
        fresh = {k: float(v) for k, v in metrics.items() if k not in have or not _same(have[k], v)}
        ts = int(time.time() * 1000)
        items = []
        for key, value in fresh.items():
            points = (
                len(_retry(lambda key=key: client.get_metric_history(self.run_id, key)))
                if key in have
                else 0
            )
            items.append(Metric(key, value, ts, points))
        self._log_metric_items(items)
        return fresh

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested mappings flattened to `a.b`; values stringified as MLflow does).

        Params the run already holds with the same value are skipped, so a resumed run can log
        its config again.

        Raises:
            TrackingError: a param already holds a different value (MLflow params are
                immutable; a resumed run whose config changed needs a new run key).
        """
        _require("mlflow")
        from mlflow.entities import Param

        flat = {k: _truncate(_param_str(v), _MAX_PARAM_LEN) for k, v in _flatten(params).items()}
        if not flat:
            return
        client = _client()
        have = _retry(lambda: client.get_run(self.run_id)).data.params
        changed = {k: (have[k], v) for k, v in flat.items() if k in have and have[k] != v}
        if changed:
            detail = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise TrackingError(
                f"run {self.run_id} already holds different values for params ({detail}); "
                "MLflow params cannot change, use a new run key for a changed config"
            )
        items = [Param(k, v) for k, v in flat.items() if k not in have]
        for chunk in _chunks(items, _MAX_PARAMS_TAGS_PER_BATCH):
            _retry(lambda chunk=chunk: client.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags."""
        set_run_tags(self.run_id, tags)

    def add_tag_values(self, tags: Mapping[str, Sequence[Any]]) -> dict[str, str]:
        """Grow comma-separated set tags: each becomes the sorted union of its old and new values.

        For what a stage's parent run accumulates over calls (the seeds of its child runs, the
        backends they used): unlike a param, it may change when a later call adds a seed.
        Returns the tags as set.
        """
        have = _retry(lambda: _client().get_run(self.run_id)).data.tags
        merged: dict[str, str] = {}
        for tag, values in tags.items():
            old = [v for v in have.get(tag, "").split(",") if v]
            union = set(old) | {str(v) for v in values}
            merged[tag] = ",".join(sorted(union, key=_natural))
        self.set_tags(merged)
        return merged

    def log_learning_curve(self, returns: Sequence[float], *, title: str) -> None:
        """Log one `episode_return` point per episode (step = episode index) and a PNG plot.

        The points go in batches of 1000 (one `log_batch` each). Logging the same curve again
        (a resumed run) does not duplicate the points. The plot, `learning_curve.png`, shows
        the returns, a moving mean, and the means of the first and last 10% of episodes (what
        the filter compares).
        """
        _require("mlflow")
        from mlflow.entities import Metric

        values = [float(r) for r in returns]
        client = _client()
        run = _retry(lambda: client.get_run(self.run_id))
        already = LEARNING_CURVE_METRIC in run.data.metrics and [
            (m.step, m.value)
            for m in _retry(lambda: client.get_metric_history(self.run_id, LEARNING_CURVE_METRIC))
        ] == list(enumerate(values))
        if values and not already:
            ts = int(time.time() * 1000)
            self._log_metric_items(
                [Metric(LEARNING_CURVE_METRIC, v, ts, i) for i, v in enumerate(values)]
            )
        self.log_figure(_learning_curve_figure(values, title), LEARNING_CURVE_FILE)

    def log_table(self, df: polars.DataFrame, name: str) -> None:
        """Log a table as `<name>.csv` and `<name>.html` (`name` may hold folders: `a/b`)."""
        rel = PurePosixPath(name)
        stem = rel.name.removesuffix(".csv").removesuffix(".html")
        folder = None if str(rel.parent) == "." else str(rel.parent)
        with tempfile.TemporaryDirectory(prefix="ldm-table-") as tmp:
            csv_path = Path(tmp) / f"{stem}.csv"
            html_path = Path(tmp) / f"{stem}.html"
            df.write_csv(csv_path)
            html_path.write_text(_table_html(df, stem), encoding="utf-8")
            self.log_artifact(csv_path, folder)
            self.log_artifact(html_path, folder)

    def log_figure(self, fig: Figure, name: str) -> None:
        """Log a matplotlib figure as an image artifact (`.png` added when `name` has no suffix).

        The figure is not closed: that stays with the caller.
        """
        if not PurePosixPath(name).suffix:
            name = f"{name}.png"
        client = _client()
        _retry(lambda: client.log_figure(self.run_id, fig, artifact_file=name))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log a file, or a folder's contents, under `artifact_path` (the root when None)."""
        path = Path(path)
        client = _client()
        if path.is_dir():
            _retry(lambda: client.log_artifacts(self.run_id, str(path), artifact_path))
        elif path.is_file():
            _retry(lambda: client.log_artifact(self.run_id, str(path), artifact_path))
        else:
            raise FileNotFoundError(f"no file or folder to log at {path}")

    def _log_metric_items(self, items: list[Any]) -> None:
        client = _client()
        for chunk in _chunks(items, _MAX_METRICS_PER_BATCH):
            _retry(lambda chunk=chunk: client.log_batch(self.run_id, metrics=chunk))


# --------------------------------------------------------------------------------------------
# Helpers


def _natural(value: str) -> tuple[int, int | str]:
    """Order numbers as numbers ("2" before "10"), then everything else by name."""
    try:
        return (0, int(value))
    except ValueError:
        return (1, value)


def _same(old: float, new: float) -> bool:
    """Equal metric values, NaN equal to NaN (a summary that stays NaN is not re-logged)."""
    old, new = float(old), float(new)
    return old == new or (math.isnan(old) and math.isnan(new))


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def _param_str(value: Any) -> str:
    """Lists and tuples as JSON (stable across a JSON round trip), the rest as MLflow does."""
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), default=str, sort_keys=True)
    return str(value)


def _learning_curve_figure(values: list[float], title: str) -> Figure:
    _require("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    n = len(values)
    if n == 0:
        ax.text(0.5, 0.5, "no completed episode", ha="center", va="center", transform=ax.transAxes)
    else:
        episodes = list(range(n))
        ax.plot(episodes, values, lw=0.8, alpha=0.45, color="tab:blue", label="episode return")
        window = max(1, n // 20)
        if window > 1:
            ax.plot(
                episodes[window - 1 :],
                _moving_mean(values, window),
                lw=1.8,
                color="tab:blue",
                label=f"moving mean ({window} episodes)",
            )
        tenth = max(1, math.ceil(n / 10))
        first, last = values[:tenth], values[-tenth:]
        ax.hlines(
            sum(first) / len(first), 0, tenth - 1, colors="tab:orange", lw=2, label="first 10%"
        )
        ax.hlines(
            sum(last) / len(last), n - tenth, n - 1, colors="tab:green", lw=2, label="last 10%"
        )
        ax.legend(loc="best", fontsize="small")
    ax.set_title(title)
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    return fig


def _moving_mean(values: list[float], window: int) -> list[float]:
    out: list[float] = []
    total = sum(values[:window])
    out.append(total / window)
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        out.append(total / window)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def _table_html(df: polars.DataFrame, title: str) -> str:
    head = "".join(
        f"<th>{html.escape(name)}<br><small>{html.escape(str(dtype))}</small></th>"
        for name, dtype in df.schema.items()
    )
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
        for row in df.head(_MAX_HTML_ROWS).iter_rows()
    )
    note = (
        f"<p>first {_MAX_HTML_ROWS} of {df.height} rows; the CSV holds them all</p>"
        if df.height > _MAX_HTML_ROWS
        else f"<p>{df.height} rows</p>"
    )
    style = (
        "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3;position:sticky;top:0}tr:nth-child(even){background:#fafafa}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n<h3>{html.escape(title)}</h3>{note}\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>\n</body></html>\n"
    )
