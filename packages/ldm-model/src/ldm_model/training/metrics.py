"""What the trainer logs as it goes: `metrics.jsonl`, the loss curve, and the progress bar.

`metrics.jsonl` is the run's own record (one line per `log_every` steps, MLflow or not), so a
resumed run truncates it to its checkpoint's step and appends from there: the file always reads
as one uninterrupted run. The step sums behind each record (`MetricsAccumulator`) and the bar
live here too, so the loop itself only hands them the numbers of each step.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "LOSS_CURVE_FILE",
    "METRICS_FILE",
    "MetricsAccumulator",
    "StepProgress",
    "append_metrics",
    "loss_curve_figure",
    "read_metrics",
    "truncate_metrics",
]

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"


def read_metrics(out: Path) -> list[dict[str, float]]:
    """The records of `out/metrics.jsonl` (one per logged step)."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def truncate_metrics(out: Path, step: int) -> None:
    """Forget records past `step` (they will be logged again by the resumed run)."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(out) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)


def loss_curve_figure(records: list[dict[str, float]], title: str) -> Any:
    """Loss (log scale) and accuracy against step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    if records:
        ax.plot(steps, [r["loss"] for r in records], color="tab:blue", lw=1.2, label="loss")
        ax.set_yscale("log")
        acc = ax.twinx()
        acc.plot(
            steps, [r["accuracy"] for r in records], color="tab:orange", lw=1.0, label="accuracy"
        )
        acc.set_ylim(0, 1)
        acc.set_ylabel("accuracy")
        lines = ax.get_lines() + acc.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="center right")
    else:
        ax.text(0.5, 0.5, "no step logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    return fig


def append_metrics(out: Path, record: dict[str, float]) -> None:
    """Add one record to `out/metrics.jsonl`."""
    with open(Path(out) / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


class MetricsAccumulator:
    """Sums of the steps since the last log record."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.ce = self.hits = self.count = self.real = self.grad = 0.0
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, out: dict[str, float]) -> None:
        self.ce += out["ce_sum"]
        self.hits += out["hits"]
        self.count += out["count"]
        self.real += out["transitions"]
        self.grad += out["grad_norm"]
        self.steps += 1

    def record(self, step: int, lr: float, transitions: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        denom = max(self.count, 1.0)
        rec = {
            "step": step,
            "loss": self.ce / denom,
            "accuracy": self.hits / denom,
            "lr": lr,
            "grad_norm": self.grad / max(self.steps, 1),
            "transitions_per_s": self.real / elapsed,
            "transitions": float(transitions),
        }
        self._reset()
        return rec


class StepProgress:
    """A rich progress bar (steps, loss, transitions/s) on rank 0; nothing elsewhere."""

    def __init__(self, console: Console | None, *, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("{task.fields[tps]} transitions/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.bar.add_task(
            "train", total=total, completed=done, loss="-", acc="-", tps="-"
        )

    def __enter__(self) -> StepProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int, record: dict[str, float] | None) -> None:
        if self.bar is None:
            return
        fields: dict[str, Any] = {}
        if record is not None:
            fields = {
                "loss": f"{record['loss']:.4f}",
                "acc": f"{record['accuracy']:.3f}",
                "tps": f"{record['transitions_per_s']:,.0f}",
            }
        self.bar.update(self.task, completed=done, **fields)
