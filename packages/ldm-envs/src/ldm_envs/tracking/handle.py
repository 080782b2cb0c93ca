"""The run handle a `tracked_run` block logs through, and tagging a run after the fact."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ldm_envs.tracking.artifacts import _learning_curve_figure, _table_html
from ldm_envs.tracking.store import TrackingError, _client, _require, _retry
from ldm_envs.tracking.tags import LEARNING_CURVE_FILE, LEARNING_CURVE_METRIC
from ldm_envs.tracking.values import (
    _MAX_METRICS_PER_BATCH,
    _MAX_PARAM_LEN,
    _MAX_PARAMS_TAGS_PER_BATCH,
    _MAX_TAG_LEN,
    _chunks,
    _flatten,
    _natural,
    _param_str,
    _same,
    _truncate,
)

if TYPE_CHECKING:
    import polars
    from matplotlib.figure import Figure


def set_run_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Tag a run after the fact (a filter decision on a finished reference run)."""
    client = _client()
    from mlflow.entities import RunTag

    items = [RunTag(k, _truncate(str(v), _MAX_TAG_LEN)) for k, v in tags.items()]
    for chunk in _chunks(items, _MAX_PARAMS_TAGS_PER_BATCH):
        _retry(partial(client.log_batch, run_id, tags=chunk))


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
                len(_retry(partial(client.get_metric_history, self.run_id, key)))
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
            _retry(partial(client.log_batch, self.run_id, params=chunk))

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
            _retry(partial(client.log_batch, self.run_id, metrics=chunk))
