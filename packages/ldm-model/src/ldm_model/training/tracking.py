"""The training run's MLflow side, through `ldm_envs.tracking` (rank 0 only).

Everything goes through `ldm_envs.tracking`'s public functions (`tracked_run`, the run
handle's `log_*`/`set_tags`) so the trainer logs like every other stage. The one thing that
module does not offer is deleting a tag: a resumed run must drop the `ldm.error` and
`ldm.paused_at_step` of its previous attempt, or the MLflow UI would show a finished run as
failed or paused. `delete_run_tags` does that, here rather than in ldm-envs because only the
trainer reopens a run whose state its tags describe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ldm_envs.tracking import TAG_ERROR
from ldm_model.training.checkpoint import DatasetInfo, index_files
from ldm_model.training.config import EXECUTION_FIELDS, TrainConfig
from ldm_model.training.metrics import LOSS_CURVE_FILE, loss_curve_figure, read_metrics

if TYPE_CHECKING:
    from ldm_envs.tracking import RunHandle
    from ldm_model.training.distributed import DistContext

__all__ = [
    "TAG_CHECKPOINT",
    "TAG_DATASET",
    "TAG_ERROR",
    "TAG_INDEX_SHA",
    "TAG_PAUSED",
    "TrainTracking",
    "delete_run_tags",
]

TAG_CHECKPOINT = "ldm.checkpoint"
TAG_DATASET = "ldm.dataset"
TAG_INDEX_SHA = "ldm.dataset.index_sha256"
TAG_PAUSED = "ldm.paused_at_step"


def delete_run_tags(run_id: str, *keys: str) -> None:
    """Delete those of `keys` the run holds (best effort: a failed delete is not an error)."""
    from mlflow.tracking import MlflowClient

    from ldm_envs.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    have = client.get_run(run_id).data.tags
    for key in keys:
        if key in have:
            with contextlib.suppress(Exception):
                client.delete_tag(run_id, key)


class TrainTracking:
    """The MLflow side of a run; every method is a no-op when tracking is off."""

    def __init__(self, config: TrainConfig, enabled: bool) -> None:
        self.config = config
        self.enabled = enabled
        self.handle: RunHandle | None = None

    @contextlib.contextmanager
    def run(
        self, *, dataset: DatasetInfo, num_parameters: int, out: Path, ctx: DistContext
    ) -> Iterator[TrainTracking]:
        if not self.enabled:
            yield self
            return
        # looked up at call time: tests replace `tracked_run` on the module
        from ldm_envs import tracking

        config = self.config
        model = config.resolved_model()
        # how the run is carried out may change on resume: tags, not (immutable) params
        params = {k: v for k, v in config.flat_params().items() if k not in EXECUTION_FIELDS}
        params["num_parameters"] = num_parameters
        # the dataset may change under --allow-data-change: tags, which may change
        tags = {
            "ldm.dataset.envs": str(len(dataset.envs)),
            "ldm.dataset.transitions": str(dataset.transitions),
            "ldm.model": model.name,
            TAG_DATASET: dataset.root,
            TAG_INDEX_SHA: dataset.index_sha256 or "",
            "ldm.dataset.runs_sha256": dataset.runs_sha256,
            "ldm.out": str(out),
            "ldm.world_size": str(ctx.world),
            "ldm.device": str(ctx.device),
        }
        name = f"{model.name}-{config.library_label()}-{config.run_key()[-8:]}"
        with tracking.tracked_run(
            "model",
            config.library_label(),
            config.run_key(),
            name=name,
            tags=tags,
            params=params,
        ) as handle:
            self.handle = handle
            if handle.resumed:
                self.clear_tags(TAG_ERROR, TAG_PAUSED)
            yield self

    @property
    def run_id(self) -> str | None:
        return self.handle.run_id if self.handle else None

    def clear_tags(self, *keys: str) -> None:
        if self.handle is not None:
            delete_run_tags(self.handle.run_id, *keys)

    def log(self, record: dict[str, float]) -> None:
        if self.handle is not None:
            metrics = {k: v for k, v in record.items() if k != "step"}
            self.handle.log_metrics(metrics, step=int(record["step"]))

    def checkpoint(self, path: Path) -> None:
        if self.handle is not None:
            self.handle.set_tags({TAG_CHECKPOINT: str(path)})

    def paused(self, step: int) -> None:
        """Mark the run paused at `step` (it stays open: the next call resumes it)."""
        if self.handle is not None:
            self.clear_tags(TAG_ERROR)
            self.handle.set_tags({TAG_PAUSED: str(step)})

    def finish(self, out: Path, checkpoint: Path, dataset: DatasetInfo) -> None:
        if self.handle is None:
            return
        records = read_metrics(out)
        fig = loss_curve_figure(records, f"{self.config.resolved_model().name}: training loss")
        self.handle.log_figure(fig, LOSS_CURVE_FILE)
        self.handle.log_artifact(checkpoint, "checkpoint")
        for file in index_files(Path(dataset.root)):
            self.handle.log_artifact(file, "dataset_index")
        self.handle.set_tags({TAG_CHECKPOINT: str(checkpoint)})
