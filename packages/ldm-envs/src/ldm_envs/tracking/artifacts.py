"""How run artifacts look: the learning-curve figure and the HTML view of a table.

matplotlib is imported on first use (`_require` names the extra when it is missing).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from ldm_envs.stats import first_last_window
from ldm_envs.tracking.store import _require

if TYPE_CHECKING:
    import polars
    from matplotlib.figure import Figure

_MAX_HTML_ROWS = 10_000


def _learning_curve_figure(values: list[float], title: str) -> Figure:
    _require("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    n = len(values)
    if n == 0:
        ax.text(0.5, 0.5, "no completed episode", ha="center", va="center", transform=ax.transAxes)
    else:
        episodes = list(range(n))
        ax.plot(episodes, values, lw=0.8, alpha=0.45, color="tab:blue", label="episode return")
        window = max(1, n // 20)
        if window > 1:
            ax.plot(
                episodes[window - 1 :],
                _moving_mean(values, window),
                lw=1.8,
                color="tab:blue",
                label=f"moving mean ({window} episodes)",
            )
        first, last = first_last_window(values)
        tenth = len(first)
        ax.hlines(
            sum(first) / len(first), 0, tenth - 1, colors="tab:orange", lw=2, label="first 10%"
        )
        ax.hlines(
            sum(last) / len(last), n - tenth, n - 1, colors="tab:green", lw=2, label="last 10%"
        )
        ax.legend(loc="best", fontsize="small")
    ax.set_title(title)
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    return fig


def _moving_mean(values: list[float], window: int) -> list[float]:
    out: list[float] = []
    total = sum(values[:window])
    out.append(total / window)
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        out.append(total / window)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def _table_html(df: polars.DataFrame, title: str) -> str:
    head = "".join(
        f"<th>{html.escape(name)}<br><small>{html.escape(str(dtype))}</small></th>"
        for name, dtype in df.schema.items()
    )
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
        for row in df.head(_MAX_HTML_ROWS).iter_rows()
    )
    note = (
        f"<p>first {_MAX_HTML_ROWS} of {df.height} rows; the CSV holds them all</p>"
        if df.height > _MAX_HTML_ROWS
        else f"<p>{df.height} rows</p>"
    )
    style = (
        "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3;position:sticky;top:0}tr:nth-child(even){background:#fafafa}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n<h3>{html.escape(title)}</h3>{note}\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>\n</body></html>\n"
    )
