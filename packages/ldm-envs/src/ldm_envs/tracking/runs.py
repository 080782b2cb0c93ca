"""Experiments and run keys: one experiment per stage and library, one run per key.

Finding the run of a key and creating it when there is none is one atomic step: under a file lock
next to the embedded store's database, or, on a server, by keeping only the oldest new run with the
key (`_keep_oldest`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm_envs.tracking.handle import RunHandle
from ldm_envs.tracking.store import (
    TrackingError,
    _client,
    _file_lock,
    _is_embedded,
    _require,
    _retry,
    _sqlite_path,
    artifact_root,
    tracking_uri,
)
from ldm_envs.tracking.tags import (
    MODEL_TRAINING,
    STAGES,
    TAG_ERROR,
    TAG_EXPERIMENT_KIND,
    TAG_LIBRARY,
    TAG_RUN_KEY,
    TAG_STAGE,
)
from ldm_envs.tracking.values import _MAX_TAG_LEN, _truncate

if TYPE_CHECKING:
    from mlflow.entities import Run

#: How far other nodes' clocks may lag ours when telling a rival new run from an old attempt.
_CLOCK_SKEW_MS = 60_000

_experiments: dict[tuple[str, str], str] = {}


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
    runs: list[Run] = _retry(
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
