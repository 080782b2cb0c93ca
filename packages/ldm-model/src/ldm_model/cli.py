"""The `ldm-model` command line: train, show (a checkpoint), list (the named configs).

`ldm-model train` runs in one process, or as every rank of a `torchrun` launch:

    uv run ldm-model train --library classic-control
    uv run torchrun --standalone --nproc_per_node 2 -m ldm_model.cli train --library classic-control

Running the same command again resumes from the latest checkpoint of its run folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ldm_envs.cli_app import make_app
from ldm_envs.cli_options import config_options, field_option
from ldm_envs.console import make_console
from ldm_model.training.config import TrainConfig

app = make_app(
    "The Large Decision Model: train it on the dataset (one process or torchrun DDP), "
    "inspect checkpoints, list the named configs.",
    renamed_options={
        "--root": "--dataset",
        "--env-id": "--env",
        "--mlflow": "--track",
        "--no-mlflow": "--no-track",
        "--num-workers": "--loader-workers",
    },
    renamed_commands={"info": "show", "configs": "list"},
    add_completion=False,
)
# wide enough off a terminal (`> log`): see ldm_envs.console
console = make_console()
err = make_console(stderr=True)


def _model_arg(value: str) -> Any:
    """A named config, or a JSON file holding a ModelConfig."""
    from ldm_model.config import NAMED_CONFIGS, ModelConfig

    if value in NAMED_CONFIGS:
        return value
    path = Path(value)
    if path.suffix == ".json" and path.is_file():
        return ModelConfig.model_validate_json(path.read_text(encoding="utf-8"))
    raise KeyError(
        f"unknown model config {value!r}: give one of {', '.join(NAMED_CONFIGS)} or a JSON file "
        "of a ModelConfig"
    )


def _check_train(values: Mapping[str, Any]) -> None:
    """The checks that name the option, before the config is built (not at the first batch)."""
    from ldm_envs.inputs import require_positive
    from ldm_model.devices import check_device

    check_device(values["device"], field="--device", allow_auto=True)
    require_positive("--stop-after", values["stop_after"])


def _no_clip(value: float) -> float | None:
    return value or None


@app.command()
@config_options(
    TrainConfig,
    field_option("model", "--model", "-m", type=str, parse=_model_arg),
    field_option("data_root", "--dataset", "-d", type=str),
    field_option("libraries", "--library", "-l", type=list[str] | None),
    field_option("env_ids", "--env", type=list[str] | None),
    field_option("weighting", type=str),
    "batch_size",
    "context",
    "steps",
    "lr",
    "weight_decay",
    field_option("grad_clip", type=float, parse=_no_clip),
    field_option("precision", type=str),
    "seed",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    field_option("num_workers", "--loader-workers"),
    "micro_batch",
    "device",
    "store_cache_gb",
    field_option("fused_adamw", "--fused-adamw/--no-fused-adamw", show_default=False),
    field_option("attention", type=str),
    field_option("compile", "--compile/--no-compile"),
    field_option("parallel", type=str),
    field_option("out", "--out", "-o", type=str),
    field_option("mlflow", "--track/--no-track"),
    "eval_every",
    "eval_episodes",
    check=_check_train,
)
def train(
    config: TrainConfig,
    stop_after: Annotated[
        int | None, typer.Option(help="stop after this many steps (resume by running again)")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    allow_data_change: Annotated[
        bool, typer.Option(help="resume even if the dataset's runs changed")
    ] = False,
) -> None:
    """Train (or resume) the LDM on the dataset; run it under torchrun for DDP."""
    from ldm_model.training import train as run_training

    run_training(
        config,
        stop_after=stop_after,
        progress=progress,
        console=err,
        allow_data_change=allow_data_change,
    )


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, _fmt(value))
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return "-" if value is None else str(value)


@app.command("show")
def show(
    checkpoint: Annotated[Path, typer.Argument(help="a checkpoint folder or a run folder")],
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="check the files' sha256")
    ] = True,
) -> None:
    """Show a checkpoint's config, parameter count, step, metrics and training data."""
    from ldm_model.training.checkpoint import load_checkpoint, read_info

    if verify:
        ckpt = load_checkpoint(checkpoint)
        path, record = ckpt.path, ckpt.info
    else:
        from ldm_model.training.checkpoint import resolve_checkpoint

        path, record = resolve_checkpoint(checkpoint), read_info(checkpoint)
    train_cfg = record.train
    console.print(
        _kv_table(
            "checkpoint",
            [
                ("path", str(path)),
                ("step", record.step),
                ("created", record.created.isoformat(timespec="seconds")),
                ("parameters", record.num_parameters),
                ("world size", record.world_size),
                ("mlflow run id", record.mlflow_run_id),
                ("torch", record.torch_version),
                ("files verified", "yes (sha256)" if verify else "no"),
            ],
        )
    )
    console.print(_kv_table(f"model config {record.model.name!r}", list(record.model)))
    skip = {"model"}
    console.print(
        _kv_table(
            "training config",
            [(k, v) for k, v in train_cfg.model_dump(mode="json").items() if k not in skip]
            + [("window", train_cfg.window), ("run key", train_cfg.run_key())],
        )
    )
    console.print(_kv_table("metrics", sorted(record.metrics.items())))
    data = record.dataset
    console.print(
        _kv_table(
            "dataset",
            [
                ("root", data.root),
                ("index sha256 (runs.parquet)", data.index_sha256),
                ("sampled runs sha256", data.runs_sha256),
                ("transitions", data.transitions),
                ("envs", len(data.envs)),
                ("skipped shards", len(data.skipped)),
            ],
        )
    )
    envs = Table(title="envs", title_justify="left")
    for col in ("library", "env_id", "runs", "transitions", "weight"):
        envs.add_column(
            col, justify="right" if col in ("runs", "transitions", "weight") else "left"
        )
    for e in data.envs:
        envs.add_row(e.library, e.env_id, f"{e.runs:,}", f"{e.transitions:,}", f"{e.weight:.4f}")
    console.print(envs)


def meta_parameters(name: str) -> int:
    """Parameter count of a named config, built on the meta device (no memory, no init)."""
    import torch

    from ldm_model.config import get_config
    from ldm_model.model import LDM

    with torch.device("meta"):
        return LDM(get_config(name)).num_parameters()


@app.command("list")
def list_configs() -> None:
    """List the named model configs and their parameter counts (vs the paper's)."""
    from ldm_model.config import NAMED_CONFIGS, PAPER_PARAMETERS

    table = Table(title="named model configs")
    for col in (
        "name",
        "layers",
        "heads",
        "hidden",
        "mlp",
        "context",
        "token dim",
        "parameters",
        "paper",
        "difference",
    ):
        table.add_column(col, justify="left" if col == "name" else "right")
    for name, cfg in NAMED_CONFIGS.items():
        count = meta_parameters(name)
        paper = PAPER_PARAMETERS.get(name)
        diff = f"{(count - paper) / paper:+.2%}" if paper else "-"
        table.add_row(
            name,
            str(cfg.num_layers),
            str(cfg.num_heads),
            str(cfg.hidden_size),
            str(cfg.intermediate_size),
            str(cfg.context),
            str(cfg.token_dim),
            f"{count:,}",
            f"{paper:,}" if paper else "-",
            diff,
        )
    console.print(table)


if __name__ == "__main__":  # `python -m ldm_model.cli`, what torchrun launches
    app()
