"""Training data: windows of consecutive transitions sampled from the dataset's shards."""

from ldm_model.data.integrity import ShardUnavailableError
from ldm_model.data.loader import StepBatches, StepLoader, make_loader
from ldm_model.data.windows import (
    ENVS_SCHEMA,
    WEIGHTINGS,
    Draw,
    PackedBatch,
    Weighting,
    WindowSampler,
)

__all__ = [
    "ENVS_SCHEMA",
    "WEIGHTINGS",
    "Draw",
    "PackedBatch",
    "ShardUnavailableError",
    "StepBatches",
    "StepLoader",
    "Weighting",
    "WindowSampler",
    "make_loader",
]
