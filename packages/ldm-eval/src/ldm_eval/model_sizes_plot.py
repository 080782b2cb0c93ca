"""The model-size comparison's figure: shares of envs at a share of reference, and IQM, by size.

Drawn from the comparison's table alone (`model_sizes.csv`'s columns), so it can be redrawn
from a finished comparison without training or evaluating anything.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

__all__ = ["sizes_figure"]


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def sizes_figure(table: pl.DataFrame) -> Any:
    """Shares of envs at >= 80% / >= 100% of reference, and IQM [95% CI], against parameters."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_share, ax_iqm = fig.subplots(1, 2)
    rows = table.sort("parameters").to_dicts()
    x = [r["parameters"] for r in rows]
    for col, label, marker in (
        ("share_ge_80", ">= 80% of reference", "o"),
        ("share_ge_100", ">= 100% of reference", "s"),
    ):
        ax_share.plot(x, [100 * _nan(r[col]) for r in rows], marker=marker, label=label)
    ax_share.set_ylabel("share of scored envs (%)")
    ax_share.set_ylim(-5, 105)
    ax_share.legend(loc="best", fontsize="small")
    ax_share.set_title("envs at a share of their reference")
    iqm = [100 * _nan(r["iqm"]) for r in rows]
    low = [
        max(0.0, v - 100 * _nan(r["iqm_ci_low"])) if not math.isnan(_nan(r["iqm_ci_low"])) else 0
        for v, r in zip(iqm, rows, strict=True)
    ]
    high = [
        max(0.0, 100 * _nan(r["iqm_ci_high"]) - v) if not math.isnan(_nan(r["iqm_ci_high"])) else 0
        for v, r in zip(iqm, rows, strict=True)
    ]
    ax_iqm.errorbar(x, iqm, yerr=[low, high], marker="o", capsize=4, color="C2")
    ax_iqm.axhline(100, color="grey", lw=0.8, ls="--")
    ax_iqm.axhline(0, color="grey", lw=0.8, ls=":")
    ax_iqm.set_ylabel("IQM normalized score (% of reference)")
    ax_iqm.set_title("IQM [95% stratified bootstrap CI]")
    labels = [f"{r['config']}\n{r['parameters'] / 1e6:.1f}M" for r in rows]
    for ax in (ax_share, ax_iqm):
        ax.set_xscale("log")
        ax.set_xticks(x, labels)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.margins(x=0.12)
        ax.set_xlabel("parameters (log scale)")
        ax.grid(alpha=0.3)
    steps = {r["steps"] for r in rows if "steps" in r}
    transitions = {r["transitions"] for r in rows}
    fig.suptitle(
        "LDM model sizes: same data, "
        + (f"{next(iter(steps))} steps, " if len(steps) == 1 else "")
        + (f"{next(iter(transitions)):,} transitions each" if len(transitions) == 1 else "")
    )
    return fig
