"""Where tracking goes and how to reach it: the URI, the store's setup, clients and retries.

The embedded SQLite store is shared by the processes of a local pool: it is created under a file
lock, and writes that meet `database is locked` are retried with backoff (`_retry`). MLflow is
imported on first use (`_require` names the extra when it is missing).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ldm_envs.errors import LDMEnvsError
from ldm_envs.paths import data_home

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_LOCKED_MARKERS = ("database is locked", "database table is locked", "database is busy")
_RETRY_SECONDS = 180.0

_T = TypeVar("_T")

_state_lock = threading.Lock()
_ready_uris: set[str] = set()
_clients: dict[str, MlflowClient] = {}


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
