"""What the evaluation needs to know about a checkpoint, read through ldm-model.

`ldm_model.training.checkpoint.load_checkpoint(path)` returns the weights, the model config,
the training data (dataset root and the envs trained on) and the MLflow run of the training.
The evaluation keeps only the last three, as a small pydantic record: which envs to evaluate by
default, which libraries the model never saw (flagged in the tables), where the references
come from, and which MLflow run the evaluation links to.

A run folder names its newest *valid* checkpoint: corrupt newer ones are skipped, and said so
(`read_checkpoint`'s `report`), so a damaged last checkpoint does not stop the evaluation. The
evaluation then loads exactly the folder recorded in `CheckpointProvenance.path`.

`CheckpointProvenance` was called `CheckpointInfo` until ldm-model's record of
`checkpoint.json` took that name for good (`ldm_model.training.checkpoint.CheckpointInfo`, a
different class); the old name stays an alias of this one for one release.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from ldm_eval.protocol import EnvTarget

__all__ = ["CheckpointInfo", "CheckpointProvenance", "read_checkpoint"]


class CheckpointProvenance(BaseModel):
    """A checkpoint's provenance as the evaluation uses it.

    Attributes:
        path: the checkpoint file or folder.
        run_id: the MLflow run that trained it (None when it was not tracked).
        dataset_root: the dataset it was trained on (None when not recorded).
        envs: the envs it was trained on (None when not recorded: trained flags are unknown).
    """

    path: Path
    run_id: str | None = None
    dataset_root: Path | None = None
    envs: list[EnvTarget] | None = None

    @property
    def libraries(self) -> list[str] | None:
        """The libraries trained on, sorted (None when unknown)."""
        return None if self.envs is None else sorted({e.library for e in self.envs})


def read_checkpoint(
    path: str | Path, *, report: Callable[[str], None] | None = None
) -> CheckpointProvenance:
    """Read a checkpoint's provenance (not its weights) from its `checkpoint.json`.

    Args:
        path: a step folder, or a run folder (its newest valid checkpoint: records read and
            files checked against their hashes, newest first).
        report: told which corrupt checkpoints were skipped, if any (default: a
            `CheckpointFallbackWarning`).

    Raises:
        ldm_model.training.checkpoint.CheckpointError: no checkpoint at `path`, an unreadable
            record (the message names the file), or a run folder whose checkpoints are all
            corrupt.
    """
    from ldm_model.training.checkpoint import read_info, valid_checkpoint

    folder = valid_checkpoint(path, report=report)
    info = read_info(folder)
    return CheckpointProvenance(
        path=folder,
        run_id=info.mlflow_run_id,
        dataset_root=Path(info.dataset.root),
        envs=[EnvTarget(library=e.library, env_id=e.env_id) for e in info.dataset.envs],
    )


#: The old name, for one release (it clashed with ldm-model's `CheckpointInfo`).
CheckpointInfo = CheckpointProvenance
