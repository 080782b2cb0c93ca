"""The paper's model-size comparison, at small scale: several configs, same data, same budget.

`compare_sizes(SizesConfig(...))` trains each named config on the same dataset for the same
number of steps of the same batch of windows (same seed, same window length: every size sees
the same transitions), evaluates each checkpoint with the paper's protocol (the code behind
`ldm-eval evaluate`: `pipeline.plan_envs` + `pipeline.evaluate`), and puts one row per size in a
table: parameters, transitions seen, train seconds, envs scored, the shares of envs at >= 80% and
>= 100% of reference, and the IQM of the normalized scores with its stratified bootstrap CI
(`aggregate.summarize`, as in every evaluation's summary).

Folder (default `<data home>/model-sizes/<key>`)::

    model_sizes.csv            one row per size (COLUMNS, then provenance columns)
    model_sizes_per_env.csv    one row per (size, env): status, return, normalized score
    model_sizes.png            shares and IQM [95% CI] against parameters (log scale)
    models/<config>-<key>/     the training run folder, and `size.json` once it finished
    eval/<config>-<key>/       the evaluation run folder (`ldm-eval report` opens it)

Resume: a size's folders are keyed by what decides its weights (the `TrainConfig` identity:
model, data root, steps, batch, window, lr, seed, ...) and the dataset index's sha256, so a
finished size is neither retrained (its `size.json` records the checkpoint and train seconds)
nor re-evaluated (the evaluation's own resume); an interrupted training resumes from its last
checkpoint; another step count, batch or dataset trains fresh folders beside the old ones.
Adding a config to the list trains only that one.

MLflow: every training in `ldm-model/<libraries>` and every evaluation in `ldm-eval/<library>`
as usual, and the comparison in `ldm-eval/model-sizes` (one run per settings key, reopened on a
re-run): metrics `<config>/<column>` and the series `share_ge_80`, `share_ge_100`, `iqm` with
step = parameters, the two CSVs as tables, the plot, and tags linking each size's training and
evaluation runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from rich.console import Console

from ldm_envs import tracking
from ldm_envs.atomic import atomic_write_bytes
from ldm_envs.manifest import atomic_write_text
from ldm_envs.paths import data_home
from ldm_eval.aggregate import ALL
from ldm_eval.errors import ModelSizesError
from ldm_eval.model_sizes_plot import sizes_figure
from ldm_eval.protocol import EvalConfig
from ldm_eval.threads import torch_threads
from ldm_model.training.config import TrainConfig

__all__ = [
    "COLUMNS",
    "EXPERIMENT_LIBRARY",
    "SIZES_CSV",
    "SIZES_PER_ENV_CSV",
    "SIZES_PNG",
    "ModelSizesError",
    "SizeResult",
    "SizesConfig",
    "SizesOutcome",
    "compare_sizes",
    "sizes_figure",
]

SIZES_CSV = "model_sizes.csv"
SIZES_PER_ENV_CSV = "model_sizes_per_env.csv"
SIZES_PNG = "model_sizes.png"
#: Written in a size's model folder once its training finished.
SIZE_RECORD = "size.json"
#: The comparison's MLflow experiment is `ldm-eval/<this>`.
EXPERIMENT_LIBRARY = "model-sizes"
TAG_CONFIGS = "ldm.sizes.configs"

#: The table's columns, in order (provenance columns follow them in the CSV).
COLUMNS: tuple[str, ...] = (
    "config",
    "parameters",
    "transitions",
    "train_seconds",
    "envs_scored",
    "share_ge_80",
    "share_ge_100",
    "iqm",
    "iqm_ci_low",
    "iqm_ci_high",
)
SCHEMA: dict[str, pl.DataType] = {
    "config": pl.String(),
    "parameters": pl.Int64(),
    "transitions": pl.Int64(),
    "train_seconds": pl.Float64(),
    "envs_scored": pl.Int64(),
    "share_ge_80": pl.Float64(),
    "share_ge_100": pl.Float64(),
    "iqm": pl.Float64(),
    "iqm_ci_low": pl.Float64(),
    "iqm_ci_high": pl.Float64(),
    # provenance
    "envs": pl.Int64(),
    "steps": pl.Int64(),
    "batch_size": pl.Int64(),
    "window": pl.Int64(),
    "checkpoint": pl.String(),
    "eval_dir": pl.String(),
    "train_run_id": pl.String(),
    "eval_run_id": pl.String(),
}
PER_ENV_SCHEMA: dict[str, pl.DataType] = {
    "config": pl.String(),
    "parameters": pl.Int64(),
    "library": pl.String(),
    "env_id": pl.String(),
    "status": pl.String(),
    "scored": pl.Boolean(),
    "return_mean": pl.Float64(),
    "score": pl.Float64(),
}


class SizesConfig(BaseModel):
    """Everything `ldm-eval sizes` needs: the data, the sizes, one training budget, the protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Dataset root holding `index/` (an ldm-autorl data root).
    data_root: Path
    #: Named model configs (`ldm-model list`), in the order of the table.
    configs: tuple[str, ...] = Field(min_length=1)
    #: Optimizer steps of every size.
    steps: int = Field(gt=0)
    #: Windows per step of every size.
    batch_size: int = Field(gt=0)
    #: Window length in transitions (None: the smallest context among the configs).
    context: int | None = Field(default=None, gt=0)
    libraries: tuple[str, ...] | None = None
    env_ids: tuple[str, ...] | None = None
    weighting: Literal["env", "transitions", "library"] = "env"
    lr: float = Field(default=TrainConfig.model_fields["lr"].default, gt=0)
    seed: int = 0
    #: Where training runs ("auto": CUDA when available).
    device: str = "auto"
    #: Steps between checkpoints (None: only the last step).
    checkpoint_every: int | None = Field(default=None, gt=0)
    #: The paper's protocol (2 rollouts x 10 episodes by default).
    protocol: EvalConfig = Field(default_factory=EvalConfig)
    #: Where the model acts during the evaluation.
    eval_device: str = "cpu"
    #: Torch threads while the model acts (None: torch's default).
    torch_threads: int | None = Field(default=None, gt=0)
    resamples: int = Field(default=2000, gt=0)
    #: Output folder (None: `<data home>/model-sizes/<key>`).
    out: Path | None = None
    track: bool = True

    @field_validator("configs", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        from ldm_model.config import NAMED_CONFIGS

        names = (value,) if isinstance(value, str) else tuple(value)
        unknown = [n for n in names if n not in NAMED_CONFIGS]
        if unknown:
            raise ValueError(
                f"unknown model config(s) {', '.join(map(repr, unknown))}; named configs: "
                f"{', '.join(NAMED_CONFIGS)}"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"config(s) given twice: {', '.join(dupes)}")
        return names

    @field_validator("libraries", "env_ids", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        if value is not None and len(value) == 0:
            return None
        return value

    @field_validator("device", "eval_device")
    @classmethod
    def _device(cls, value: str, info: ValidationInfo) -> str:
        from ldm_model.devices import validate_device

        # the name only here: a mistyped device fails now, not after the first size trained
        return validate_device(value, allow_auto=info.field_name == "device", available=False)

    @model_validator(mode="after")
    def _window_fits(self) -> SizesConfig:
        from ldm_model.config import get_config

        if self.context is not None:
            small = [c for c in self.configs if get_config(c).context < self.context]
            if small:
                raise ValueError(
                    f"context {self.context} exceeds the context of {', '.join(small)}: every "
                    "size must train on the same windows"
                )
        return self

    @property
    def window(self) -> int:
        """Transitions per window, the same for every size."""
        from ldm_model.config import get_config

        return self.context or min(get_config(c).context for c in self.configs)

    def train_config(self, name: str, out: Path | None = None) -> Any:
        """The `TrainConfig` of one size (`out`: its run folder)."""
        from ldm_model.training import TrainConfig

        return TrainConfig(
            model=name,
            data_root=self.data_root,
            libraries=self.libraries,
            env_ids=self.env_ids,
            weighting=self.weighting,
            batch_size=self.batch_size,
            context=self.window,
            steps=self.steps,
            lr=self.lr,
            seed=self.seed,
            device=self.device,
            checkpoint_every=self.checkpoint_every or self.steps,
            keep_checkpoints=1,
            mlflow=self.track,
            out=out,
        )

    def key(self, index_sha: str) -> str:
        """The comparison's key: the settings that decide its numbers, and the dataset."""
        data = self.model_dump(
            mode="json",
            exclude={"out", "track", "device", "eval_device", "torch_threads", "checkpoint_every"},
        )
        data["protocol"] = self.protocol.model_dump(mode="json", exclude={"num_workers"})
        data["data_root"] = str(self.data_root.expanduser().resolve())
        data["index_sha256"] = index_sha
        return _digest(data)


class SizeResult(BaseModel):
    """One size: its row of the table and where its runs are (`size.json` holds the training)."""

    config: str
    parameters: int
    transitions: int
    train_seconds: float | None
    step: int
    checkpoint: str
    model_dir: str
    train_run_id: str | None = None
    envs: int = 0
    envs_scored: int = 0
    share_ge_80: float | None = None
    share_ge_100: float | None = None
    iqm: float | None = None
    iqm_ci_low: float | None = None
    iqm_ci_high: float | None = None
    eval_dir: str | None = None
    eval_run_id: str | None = None
    #: Whether this call trained it (False: found finished).
    trained_now: bool = False


@dataclass
class SizesOutcome:
    """What `compare_sizes` wrote."""

    out: Path
    table: pl.DataFrame
    per_env: pl.DataFrame
    csv: Path
    per_env_csv: Path
    png: Path
    sizes: list[SizeResult]
    mlflow_run_id: str | None = None


def _digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _index_sha(root: Path) -> str:
    from ldm_model.training.checkpoint import sha256_file

    runs = Path(root).expanduser() / "index" / "runs.parquet"
    if not runs.is_file():
        raise ModelSizesError(
            f"no dataset index at {runs}: give an ldm-autorl data root (`ldm-autorl filter "
            "--dataset <root>` writes its index)"
        )
    return sha256_file(runs)


def _size_key(config: SizesConfig, name: str, index_sha: str) -> str:
    """A size's folder key: its training identity (steps included) and the index's content."""
    identity = config.train_config(name).identity()
    return _digest({"train": identity, "index_sha256": index_sha})


def _read_record(model_dir: Path, steps: int) -> SizeResult | None:
    """The finished training recorded in `model_dir` (None: none, or its checkpoint is gone)."""
    path = model_dir / SIZE_RECORD
    if not path.is_file():
        return None
    try:
        record = SizeResult.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if record.step < steps or not Path(record.checkpoint).exists():
        return None
    return record


def _train_size(
    config: SizesConfig, name: str, model_dir: Path, console: Console
) -> tuple[SizeResult, bool]:
    """Train one size (or find it trained); returns its record and whether it trained now."""
    from ldm_model.training import TrainingError
    from ldm_model.training import train as run_training
    from ldm_model.training.checkpoint import CheckpointError, read_info

    done = _read_record(model_dir, config.steps)
    if done is not None:
        console.print(
            f"[green]{name}: already trained[/] ({done.step} steps, {done.parameters:,} "
            f"parameters) in {model_dir}",
            highlight=False,
        )
        return done, False
    train_config = config.train_config(name, model_dir)
    console.rule(f"train {name} ({config.steps} steps x {config.batch_size} x {config.window})")
    try:
        result = run_training(
            train_config, console=console, progress=console.is_terminal, callbacks=[]
        )
    except (TrainingError, CheckpointError, ValueError) as exc:
        raise ModelSizesError(f"training {name!r} failed: {exc}") from None
    if result.checkpoint is None or result.step < config.steps:
        raise ModelSizesError(f"training {name!r} ended without a final checkpoint in {model_dir}")
    info = read_info(result.checkpoint)
    trained = result.step > result.start_step
    record = SizeResult(
        config=name,
        parameters=info.num_parameters,
        transitions=int(info.metrics.get("transitions", 0)),
        # a run finished before this call (no record left): its time is unknown
        train_seconds=result.wall_seconds if trained else None,
        step=info.step,
        checkpoint=str(result.checkpoint),
        model_dir=str(model_dir),
        train_run_id=info.mlflow_run_id,
    )
    atomic_write_text(model_dir / SIZE_RECORD, record.model_dump_json(indent=1))
    return record, trained


def _evaluate_size(
    config: SizesConfig, record: SizeResult, eval_root: Path, console: Console
) -> tuple[SizeResult, pl.DataFrame]:
    """The protocol on one size's checkpoint, as `ldm-eval evaluate` runs it."""
    from ldm_envs.errors import LDMError
    from ldm_eval.checkpoint import read_checkpoint
    from ldm_eval.pipeline import eval_key, evaluate, plan_envs
    from ldm_eval.policies import LDMPolicyFactory, PolicyFactory

    name = record.config
    info = read_checkpoint(record.checkpoint)
    try:
        envs, warnings = plan_envs(info, None, None)
    except (LDMError, ValueError) as exc:
        raise ModelSizesError(f"evaluating {name!r}: {exc}") from None
    policies: dict[str, PolicyFactory] = {
        "ldm": LDMPolicyFactory(info.path, device=config.eval_device)
    }
    out = eval_root / f"{name}-{eval_key(info, envs, list(policies), config.protocol)[:12]}"
    p = config.protocol
    console.rule(f"eval {name}: {len(envs)} env(s), {p.rollouts} x {p.episodes} episodes")
    try:
        with torch_threads(config.torch_threads):
            outcome = evaluate(
                envs,
                policies,
                p,
                out_dir=out,
                checkpoint=info,
                dataset_root=config.data_root,
                warnings=warnings,
                track=config.track,
                resume=True,
                n_resamples=config.resamples,
                console=console,
            )
    except (LDMError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise ModelSizesError(f"evaluating {name!r}: {exc}") from None
    pooled = (pl.col("policy") == "ldm") & (pl.col("library") == ALL)
    summary = outcome.tables.summary.filter(pooled)
    row = summary.row(0, named=True) if summary.height else {}
    updated = record.model_copy(
        update={
            "envs": int(row.get("envs") or 0),
            "envs_scored": int(row.get("scored_envs") or 0),
            "share_ge_80": row.get("frac_at_least_80"),
            "share_ge_100": row.get("frac_at_least_100"),
            "iqm": row.get("iqm"),
            "iqm_ci_low": row.get("iqm_low"),
            "iqm_ci_high": row.get("iqm_high"),
            "eval_dir": str(outcome.run_dir.path),
            "eval_run_id": outcome.mlflow_run_id,
        }
    )
    scores = outcome.tables.scores.filter(pl.col("policy") == "ldm")
    per_env = scores.select(
        pl.lit(name).alias("config"),
        pl.lit(record.parameters, pl.Int64).alias("parameters"),
        "library",
        "env_id",
        "status",
        "scored",
        "return_mean",
        "score",
    )
    return updated, per_env.cast(PER_ENV_SCHEMA)  # type: ignore[arg-type]


def _table(sizes: Sequence[SizeResult], config: SizesConfig) -> pl.DataFrame:
    rows = [
        {
            **{c: getattr(s, c) for c in COLUMNS},
            "envs": s.envs,
            "steps": s.step,
            "batch_size": config.batch_size,
            "window": config.window,
            "checkpoint": s.checkpoint,
            "eval_dir": s.eval_dir,
            "train_run_id": s.train_run_id,
            "eval_run_id": s.eval_run_id,
        }
        for s in sizes
    ]
    return pl.DataFrame(rows, schema=SCHEMA)


def _log(
    config: SizesConfig,
    key: str,
    table: pl.DataFrame,
    per_env: pl.DataFrame,
    fig: Any,
    files: Sequence[Path],
) -> str:
    tags = {
        TAG_CONFIGS: ",".join(config.configs),
        "ldm.dataset.root": str(config.data_root),
    }
    for row in table.iter_rows(named=True):
        if row["train_run_id"]:
            tags[f"ldm.sizes.{row['config']}.train_run_id"] = row["train_run_id"]
        if row["eval_run_id"]:
            tags[f"ldm.sizes.{row['config']}.eval_run_id"] = row["eval_run_id"]
    params = config.model_dump(mode="json", exclude={"out", "track"})
    params["window"] = config.window
    with tracking.tracked_run(
        "eval",
        EXPERIMENT_LIBRARY,
        f"model-sizes/{key}",
        name=f"model sizes {' < '.join(config.configs)}",
        tags=tags,
        params=params,
        reuse_finished=True,
    ) as run:
        metrics: dict[str, float] = {}
        for row in table.iter_rows(named=True):
            for col in COLUMNS[1:]:
                value = row[col]
                if value is not None and math.isfinite(float(value)):
                    metrics[f"{row['config']}/{col}"] = float(value)
            series = {
                c: float(row[c])
                for c in ("share_ge_80", "share_ge_100", "iqm")
                if row[c] is not None and math.isfinite(float(row[c]))
            }
            if series:
                run.log_metrics(series, step=int(row["parameters"]))
        run.log_summary(metrics)  # the run is reopened by every comparison
        run.log_table(table, "model_sizes")
        run.log_table(per_env, "model_sizes_per_env")
        run.log_figure(fig, SIZES_PNG)
        for path in files:
            run.log_artifact(path, "files")
        return run.run_id


def compare_sizes(config: SizesConfig, *, console: Console | None = None) -> SizesOutcome:
    """Train and evaluate every size (skipping finished ones), then write and log the table.

    Raises:
        ModelSizesError: no dataset index, or a size whose training or evaluation failed
            (sizes finished before it keep their folders: running again resumes).
    """
    from ldm_eval.plots import figure_png

    console = console or Console(stderr=True)
    index_sha = _index_sha(config.data_root)
    key = config.key(index_sha)
    out = (config.out or data_home() / "model-sizes" / key).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    sizes: list[SizeResult] = []
    per_env: list[pl.DataFrame] = []
    for name in config.configs:
        size_key = _size_key(config, name, index_sha)
        record, trained = _train_size(config, name, out / "models" / f"{name}-{size_key}", console)
        record, scores = _evaluate_size(config, record, out / "eval", console)
        sizes.append(record.model_copy(update={"trained_now": trained}))
        per_env.append(scores)
    # same seed, batch and windows: the counts differ only if the sampler changed between sizes
    if len({s.transitions for s in sizes}) > 1:
        console.print(
            f"[yellow]warning:[/] the sizes saw different transition counts: "
            f"{', '.join(f'{s.config} {s.transitions:,}' for s in sizes)}",
            highlight=False,
        )
    table = _table(sizes, config)
    envs = pl.concat(per_env) if per_env else pl.DataFrame(schema=PER_ENV_SCHEMA)
    csv, per_env_csv, png = out / SIZES_CSV, out / SIZES_PER_ENV_CSV, out / SIZES_PNG
    atomic_write_text(csv, table.write_csv())
    atomic_write_text(per_env_csv, envs.write_csv())
    fig = sizes_figure(table)
    atomic_write_bytes(png, figure_png(fig))
    run_id = _log(config, key, table, envs, fig, [csv, per_env_csv]) if config.track else None
    return SizesOutcome(
        out=out,
        table=table,
        per_env=envs,
        csv=csv,
        per_env_csv=per_env_csv,
        png=png,
        sizes=sizes,
        mlflow_run_id=run_id,
    )
