"""The training configuration: one pydantic model, saved in every checkpoint and logged to MLflow.

Fields fall in three groups, and the split is what makes resuming and tracking work:

- what decides the trajectory of the weights (model, data, batch, optimizer, seed, precision):
  a checkpoint made under other values is refused on resume, because the resumed run would not
  be the run that was interrupted;
- `steps`: the length of the run. A finished run can be extended by asking for more steps with
  the same `out` (it is part of the MLflow run key, so the extension is its own MLflow run);
- how the run is carried out (`out`, `num_workers`, `device`, logging, checkpoint and
  evaluation cadence, `mlflow`, the GPU execution options `fused_adamw`, `attention`,
  `compile`, and `parallel`, DDP or FSDP): free to change between a run and its resumption.
  The execution options change the arithmetic's rounding, not the computation: the same
  weights and batch give the same logits within float tolerance under each
  (tests/ldm_model/test_gpu_path.py, tests/ldm_model/test_nodes.py).

Weight decay: the paper names AdamW (0.9, 0.999, 1e-8) at a constant 2.5e-4 and no decay value;
we keep PyTorch's AdamW default of 0.01, applied to the weights of linear and convolutional
layers only (not to embedding tables, biases or norm gains, as in GPT/Llama recipes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ldm_model.config import ModelConfig, get_config

#: Global batch (windows per step) when none is given: the paper's (384 for its 736M model,
#: 1024 for the others), a CPU-sized one for the CPU configs.
DEFAULT_BATCH_SIZE: dict[str, int] = {"tiny": 32, "small": 32, "base": 32, "736M": 384}
PAPER_BATCH_SIZE = 1024

#: Fields that only say how a run is carried out (free to change on resume, not in the run key).
EXECUTION_FIELDS: frozenset[str] = frozenset(
    {
        "out",
        "num_workers",
        "micro_batch",
        "device",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "mlflow",
        "eval_every",
        "eval_episodes",
        "fused_adamw",
        "attention",
        "compile",
        "parallel",
        "store_cache_gb",
    }
)
#: Fields that may change between a run and its resumption besides the execution ones.
EXTENSIBLE_FIELDS: frozenset[str] = frozenset({"steps"})

Precision = Literal["auto", "fp32", "bf16"]
Weighting = Literal["env", "transitions", "library"]
Attention = Literal["auto", "eager", "sdpa", "flash"]
Parallel = Literal["ddp", "fsdp"]


class TrainConfig(BaseModel):
    """Everything `ldm-model train` needs; `ldm-model train --help` documents each option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | ModelConfig = Field(
        default="tiny",
        description="named config (`ldm-model list`) or a ModelConfig JSON file",
    )
    data_root: Path | str | None = Field(
        default=None,
        description="dataset root: a folder (default <data home>/autorl) or a store URL "
        "(s3://bucket/prefix, gs://...; its shards are pulled into a bounded local cache)",
    )
    store_cache_gb: float = Field(
        default=20.0,
        gt=0,
        description="bound of the local cache of a store URL's shards, in GB",
    )
    libraries: tuple[str, ...] | None = Field(
        default=None, description="only this library (repeatable)"
    )
    env_ids: tuple[str, ...] | None = Field(
        default=None, description="only this env id (repeatable)"
    )
    weighting: Weighting = Field(
        default="env", description="window draw: env | transitions | library"
    )
    #: The resolved value is what the config holds after validation; 0 is refused, not a default.
    batch_size: int | None = Field(
        default=None,
        gt=0,
        description="global batch in windows, all DDP ranks together (default: 32 for "
        "tiny/small/base, 384 for 736M, 1024 otherwise)",
    )
    context: int | None = Field(
        default=None, gt=0, description="window length (default: the model's context)"
    )
    steps: int = Field(default=2000, gt=0, description="optimizer steps in total")
    lr: float = Field(default=2.5e-4, gt=0, description="constant AdamW learning rate")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas")
    eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(
        default=0.01, ge=0, description="AdamW decay of linear/conv weights"
    )
    grad_clip: float | None = Field(
        default=1.0, gt=0, description="max global gradient norm (0: no clipping)"
    )
    precision: Precision = Field(
        default="auto", description="auto (bf16 autocast on CUDA) | fp32 | bf16; fp32 on CPU"
    )
    seed: int = Field(default=0, description="weights init and window draws")
    log_every: int = Field(default=10, gt=0, description="steps between metric records")
    checkpoint_every: int = Field(default=500, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(default=3, gt=0, description="checkpoints kept")
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes")
    #: Gradients accumulate over the rank's share (None: the whole share at once): the same
    #: updates, less memory.
    micro_batch: int | None = Field(
        default=None,
        gt=0,
        description="windows per forward pass per process (gradient accumulation)",
    )
    device: str = Field(default="auto", description="auto (CUDA when available) | cpu | cuda")
    #: As torch's `AdamW(fused=...)`: one launch for all parameters.
    fused_adamw: bool | None = Field(
        default=None, description="AdamW's fused kernel (default: on CUDA, plain AdamW elsewhere)"
    )
    #: "eager" (matmuls and softmax), "sdpa" (PyTorch's scaled_dot_product_attention, any
    #: kernel), "flash" (SDPA restricted to its flash kernel).
    attention: Attention = Field(
        default="auto",
        description="auto (sdpa) | sdpa | eager | flash (SDPA's flash kernel only: CUDA bf16)",
    )
    #: The backbone is nearly all of the FLOPs; the first steps pay for the compilation.
    compile: bool = Field(default=False, description="torch.compile the transformer")
    #: "ddp": a full replica on each process, gradients averaged; "fsdp": parameters,
    #: gradients and AdamW's state sharded over the processes (torch's FSDP2 `fully_shard`),
    #: for a model that does not fit one device. The same updates either way; checkpoints
    #: hold full state dicts, loadable by one process.
    parallel: Parallel = Field(
        default="ddp",
        description="ddp | fsdp (shard parameters and AdamW state over the processes)",
    )
    #: Checkpoints, metrics.jsonl, loss_curve.png; the default folder is named after the run
    #: key, so the same command resumes the same run.
    #: A store URL (`s3://bucket/models/run-1`) is mirrored locally and each checkpoint is
    #: published to it (`training.checkpoint.store`).
    out: Path | str | None = Field(
        default=None,
        description="run folder or store URL (default <data home>/models/<model>-<hash>)",
    )
    mlflow: bool = Field(default=True, description="log to MLflow")
    #: Run by the training callbacks (`training.callbacks`; ldm-eval's evaluator logs the
    #: share of trained envs at >= 80% / 100% of reference).
    eval_every: int | None = Field(
        default=None,
        gt=0,
        description="evaluate every N steps and at the end (share of envs at >=80%/100% of "
        "reference; needs an `ldm.train_callbacks` plugin: ldm-eval)",
    )
    eval_episodes: int | None = Field(
        default=None,
        gt=0,
        description="episodes per rollout of those evaluations (default: the protocol's 10)",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                get_config(value)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
        return value

    @field_validator("data_root", "out", mode="after")
    @classmethod
    def _root(cls, value: Path | str | None) -> Path | str | None:
        """A store URL stays a string (a Path would fold `s3://` into `s3:/`), a folder a Path."""
        if value is None or isinstance(value, Path):
            return value
        if "://" in value and not value.startswith("file://"):
            return value.rstrip("/")
        return Path(value.removeprefix("file://"))

    @field_validator("libraries", "env_ids", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        if value is not None and len(value) == 0:
            return None
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from ldm_model.devices import validate_device

        # the name only: a checkpoint's config may be read where that device is missing
        return validate_device(value, allow_auto=True, available=False)

    @model_validator(mode="after")
    def _defaults(self) -> TrainConfig:
        model = self.resolved_model()
        if self.batch_size is None:
            object.__setattr__(
                self, "batch_size", DEFAULT_BATCH_SIZE.get(model.name, PAPER_BATCH_SIZE)
            )
        if self.context is not None and self.context > model.context:
            raise ValueError(
                f"context {self.context} exceeds the model's context {model.context} "
                f"(config {model.name!r})"
            )
        return self

    # -- derived ----------------------------------------------------------------------------

    def resolved_model(self) -> ModelConfig:
        """The model config itself (a name resolved through `NAMED_CONFIGS`)."""
        return get_config(self.model) if isinstance(self.model, str) else self.model

    @property
    def window(self) -> int:
        """Transitions per window."""
        return self.context or self.resolved_model().context

    def library_label(self) -> str:
        """The MLflow experiment's library: the library filter joined with `+`, or `all`."""
        return "+".join(sorted(self.libraries)) if self.libraries else "all"

    def identity(self, *, with_steps: bool = True) -> dict[str, Any]:
        """The fields that decide the weights, as JSON-able values (model config resolved)."""
        skip = set(EXECUTION_FIELDS) | (set() if with_steps else set(EXTENSIBLE_FIELDS))
        data = self.model_dump(mode="json", exclude=skip)
        data["model"] = self.resolved_model().model_dump(mode="json")
        root = self.data_root
        data["data_root"] = str(root.expanduser().resolve()) if isinstance(root, Path) else root
        return data

    def run_key(self) -> str:
        """MLflow run key: sha256 of `identity()` (so the same training is recognized)."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return "ldm-train-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resume_differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields deciding the weights (steps apart) where `other` differs: `{name: (self, other)}`.

        Model fields come as `model.<field>`.
        """
        mine, theirs = self.identity(with_steps=False), other.identity(with_steps=False)
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(mine) | set(theirs)):
            a, b = mine.get(key), theirs.get(key)
            if key == "model" and isinstance(a, dict) and isinstance(b, dict):
                for field in sorted(set(a) | set(b)):
                    if a.get(field) != b.get(field):
                        out[f"model.{field}"] = (a.get(field), b.get(field))
            elif a != b:
                out[key] = (a, b)
        return out

    def flat_params(self) -> dict[str, Any]:
        """Flattened config for MLflow params (`model.hidden_size`, `lr`, ...)."""
        data = self.model_dump(mode="json", exclude={"model"})
        data["model"] = self.resolved_model().model_dump(mode="json")
        data["window"] = self.window
        data["run_key"] = self.run_key()
        return data


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EXECUTION_FIELDS",
    "EXTENSIBLE_FIELDS",
    "PAPER_BATCH_SIZE",
    "Attention",
    "Parallel",
    "Precision",
    "TrainConfig",
    "Weighting",
]
