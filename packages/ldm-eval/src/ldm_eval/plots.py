"""Figures of an evaluation, drawn from its tables (plots never step envs).

Each function returns a `matplotlib.figure.Figure` built without pyplot, so it works headless
and in threads; `figures(tables)` gives all of them by file name for MLflow and the report.
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ldm_eval.aggregate import ALL

__all__ = [
    "env_scores_figure",
    "figure_png",
    "figures",
    "library_bars_figure",
    "threshold_figure",
]

_POLICY_STYLE = {"ldm": {"color": "tab:blue"}, "random": {"color": "tab:gray"}}


def _style(policy: str, k: int) -> dict:
    return _POLICY_STYLE.get(policy, {"color": f"C{(k + 2) % 10}"})


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _empty(ax: object, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)  # type: ignore[attr-defined]


def threshold_figure(curve: pl.DataFrame) -> Figure:
    """Share of envs at >= x% of reference, x from 0 to 150%: pooled (thick) and per library.

    Left panel: every policy pooled over libraries; right panel: each library (first policy,
    usually the LDM, solid; the others dotted).
    """
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_all, ax_lib = fig.subplots(1, 2, sharey=True)
    policies = curve["policy"].unique(maintain_order=True).to_list()
    for k, policy in enumerate(policies):
        part = curve.filter((pl.col("policy") == policy) & (pl.col("library") == ALL))
        if part.is_empty() or part["scored_envs"][0] == 0:
            continue
        n, failed = part["scored_envs"][0], part["failed_envs"][0]
        label = f"{policy} ({n} envs" + (f", {failed} failed)" if failed else ")")
        ax_all.step(
            part["threshold_pct"],
            part["fraction"],
            where="post",
            lw=2.2,
            label=label,
            **_style(policy, k),
        )
    libraries = sorted(set(curve["library"].to_list()) - {ALL})
    for k, policy in enumerate(policies):
        for j, library in enumerate(libraries):
            part = curve.filter((pl.col("policy") == policy) & (pl.col("library") == library))
            if part.is_empty() or part["scored_envs"][0] == 0:
                continue
            ax_lib.step(
                part["threshold_pct"],
                part["fraction"],
                where="post",
                lw=1.6 if k == 0 else 1.0,
                ls="-" if k == 0 else ":",
                color=f"C{j % 10}",
                label=f"{library} ({policy}, {part['scored_envs'][0]})",
            )
    for ax, title in ((ax_all, "all libraries"), (ax_lib, "per library")):
        ax.axvline(80, color="k", lw=0.6, ls="--", alpha=0.5)
        ax.axvline(100, color="k", lw=0.6, alpha=0.5)
        ax.set_xlim(0, 150)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("threshold (% of reference)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="lower left")
        else:
            _empty(ax, "no scored env")
    ax_all.set_ylabel("fraction of envs at or above threshold")
    fig.suptitle("performance-threshold curve")
    return fig


def library_bars_figure(summary: pl.DataFrame) -> Figure:
    """IQM of normalized scores per library (and pooled) with its bootstrap CI, per policy."""
    fig = Figure(
        figsize=(max(6.0, 1.2 * summary["library"].n_unique() + 3), 4.5), layout="constrained"
    )
    ax = fig.subplots()
    policies = summary["policy"].unique(maintain_order=True).to_list()
    libraries = [ALL, *sorted(set(summary["library"].to_list()) - {ALL})]
    width = 0.8 / max(1, len(policies))
    x = np.arange(len(libraries))
    drawn = False
    for k, policy in enumerate(policies):
        rows = {
            r["library"]: r
            for r in summary.filter(pl.col("policy") == policy).iter_rows(named=True)
        }
        vals, lows, highs = [], [], []
        for lib in libraries:
            r = rows.get(lib, {})
            v = r.get("iqm")
            vals.append(np.nan if v is None else 100 * v)
            lo, hi = r.get("iqm_low"), r.get("iqm_high")
            lows.append(np.nan if v is None or lo is None or np.isnan(lo) else 100 * (v - lo))
            highs.append(np.nan if v is None or hi is None or np.isnan(hi) else 100 * (hi - v))
        if np.all(np.isnan(vals)):
            continue
        drawn = True
        ax.bar(
            x + (k - (len(policies) - 1) / 2) * width,
            vals,
            width,
            yerr=[np.nan_to_num(lows), np.nan_to_num(highs)],
            capsize=3,
            label=policy,
            **_style(policy, k),
        )
    ax.axhline(100, color="k", lw=0.6)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, libraries, rotation=20, ha="right")
    ax.set_ylabel("IQM normalized score (% of reference)")
    ax.set_title("IQM per library (95% stratified bootstrap CI)")
    ax.grid(axis="y", alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    else:
        _empty(ax, "no scored env")
    return fig


def env_scores_figure(scores: pl.DataFrame, max_envs: int = 120) -> Figure:
    """Normalized score of every env (first policy as bars, the others as markers).

    Envs without a score are drawn as a labeled gap (failed, missing, no reference), so a
    failure is visible rather than absent. Past `max_envs`, the lowest and highest scores are
    shown (the tables hold every env).
    """
    policies = scores["policy"].unique(maintain_order=True).to_list()
    main = scores.filter(pl.col("policy") == policies[0]) if policies else scores
    ordered = main.sort(["scored", "score"], descending=[True, False], nulls_last=True)
    if ordered.height > max_envs:
        half = max_envs // 2
        ordered = pl.concat([ordered.head(half), ordered.tail(max_envs - half)])
    n = ordered.height
    fig = Figure(figsize=(9, max(3.0, 0.24 * n + 1.5)), layout="constrained")
    ax = fig.subplots()
    if n == 0:
        _empty(ax, "no env")
        return fig
    labels = [f"{r['library']}/{r['env_id']}" for r in ordered.iter_rows(named=True)]
    libraries = sorted(set(ordered["library"].to_list()))
    colors = [f"C{libraries.index(lib) % 10}" for lib in ordered["library"].to_list()]
    y = np.arange(n)
    values = np.array([np.nan if v is None else 100 * v for v in ordered["score"].to_list()])
    ax.barh(y, np.nan_to_num(values), color=colors, alpha=0.85)
    handles: list[Artist] = [
        Patch(color=f"C{j % 10}", alpha=0.85, label=f"{policies[0]}: {lib}")
        for j, lib in enumerate(libraries)
    ]
    for i, r in enumerate(ordered.iter_rows(named=True)):
        if not r["scored"]:
            why = r["status"] if r["status"] != "ok" else "no reference"
            ax.text(1, i, why, va="center", fontsize="x-small", color="tab:red")
    for k, policy in enumerate(policies[1:], start=1):
        other = {
            (r["library"], r["env_id"]): r["score"]
            for r in scores.filter(pl.col("policy") == policy).iter_rows(named=True)
        }
        xs = [other.get((r["library"], r["env_id"])) for r in ordered.iter_rows(named=True)]
        handles.append(
            ax.scatter(
                [np.nan if v is None else 100 * v for v in xs],
                y,
                marker="|",
                s=120,
                label=policy,
                zorder=3,
                **_style(policy, k),
            )
        )
    ax.axvline(0, color="k", lw=0.6)
    ax.axvline(100, color="k", lw=0.6, ls="--")
    ax.set_yticks(y, labels, fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("normalized score (% of reference)")
    ax.set_title("per-env scores")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def figures(
    threshold: pl.DataFrame, summary: pl.DataFrame, scores: pl.DataFrame
) -> dict[str, Figure]:
    """Every figure of an evaluation, by file name."""
    return {
        "threshold_curve.png": threshold_figure(threshold),
        "library_iqm.png": library_bars_figure(summary),
        "env_scores.png": env_scores_figure(scores),
    }
