"""A self-contained HTML report of an evaluation: one file, images inlined, opens in a browser.

It shows what was evaluated and with what (checkpoint, training run, config, reference rule),
warnings first (partial evaluation, failed envs, libraries the checkpoint was not trained on),
then the summary (IQM / median with CIs), the figures, the threshold curve at a few thresholds,
and the per-env table. Nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from ldm_envs.manifest import atomic_write_text
from ldm_eval.normalize import REFERENCE_RULE
from ldm_eval.plots import figure_png, figures
from ldm_eval.tables import EvalTables

__all__ = ["render_report", "write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;font-size:14px;margin:24px auto;max-width:1400px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;font-size:12.5px}
th{background:#f3f3f3;position:sticky;top:0}td.l,th.l{text-align:left}
tr:nth-child(even){background:#fafafa}
.note{background:#fff6e0;border-left:4px solid #e0a000;padding:6px 10px;margin:4px 0}
.partial{background:#fde8e8;border-left:4px solid #d03030;padding:8px 12px;margin:8px 0;
 font-weight:600}
.bad{color:#c02020;font-weight:600}.warn{color:#a06000}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
.meta td{text-align:left}
"""

_SHOWN_THRESHOLDS = (0.0, 0.25, 0.5, 0.8, 1.0, 1.25, 1.5)

#: LDM-v0's headline (Kulak, 2026): the share of its ~3,000 training envs at >= 80% and >= 100%
#: of reference. The paper gives them for all envs pooled, not per library.
PAPER_SHARE_80 = 0.53
PAPER_SHARE_100 = 0.33

#: Marks the end of the headline block, so a suite report can put its own section after it.
HEADLINE_END = "<!-- end of headline -->"


def _fmt(value: Any, *, pct: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        return f"{100 * value:.1f}%" if pct else f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return html.escape(str(value))


def _table(df: pl.DataFrame, *, pct: tuple[str, ...] = (), left: tuple[str, ...] = ()) -> str:
    head = "".join(
        f"<th class='{'l' if c in left else ''}'>{html.escape(c)}</th>" for c in df.columns
    )
    body = []
    for row in df.iter_rows(named=True):
        cells = []
        for c in df.columns:
            v = row[c]
            cls = "l" if c in left else ""
            text = _fmt(v, pct=c in pct)
            if c.endswith("status") and v not in (None, "ok"):
                cls += " bad" if v in ("failed", "timeout", "missing") else " warn"
            if c in ("trained_library", "trained_env") and v is False:
                cls += " warn"
                text = "NO"
            cells.append(f"<td class='{cls.strip()}'>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ci(row: Mapping[str, Any], stat: str) -> str:
    v, lo, hi = row.get(stat), row.get(f"{stat}_low"), row.get(f"{stat}_high")
    if v is None:
        return ""
    text = f"{100 * v:.1f}%"
    if lo is not None and hi is not None and lo == lo and hi == hi:
        text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text


def _summary_html(summary: pl.DataFrame) -> str:
    rows = [
        {
            "policy": r["policy"],
            "library": r["library"],
            "envs": r["envs"],
            "scored": r["scored_envs"],
            "failed": r["failed_envs"],
            "missing": r["missing_envs"],
            "no reference": r["unreferenced_envs"],
            "IQM [95% CI]": _ci(r, "iqm"),
            "median [95% CI]": _ci(r, "median"),
            "mean [95% CI]": _ci(r, "mean"),
            ">= 80%": r["frac_at_least_80"],
            ">= 100%": r["frac_at_least_100"],
        }
        for r in summary.iter_rows(named=True)
    ]
    if not rows:
        return "<p>no scores</p>"
    df = pl.DataFrame(rows)
    return _table(df, pct=(">= 80%", ">= 100%"), left=("policy", "library"))


def _headline_html(tables: EvalTables) -> str:
    """The paper's figures beside ours: share of scored envs at >= 80% / >= 100% of reference.

    A reader compares this first, so the denominator (scored envs) sits beside every share and
    the envs left out of it are named with their reason right below.
    """
    rows: list[dict[str, Any]] = [
        {
            "policy": "LDM-v0 (paper)",
            "library": "all (~3,000 envs)",
            "scored / envs": "",
            ">= 80%": _fmt(PAPER_SHARE_80, pct=True),
            ">= 100%": _fmt(PAPER_SHARE_100, pct=True),
            "IQM [95% CI]": "",
        }
    ]
    for r in tables.summary.iter_rows(named=True):
        if r["library"] != "all" and r["policy"] != tables.summary["policy"].first():
            continue  # per library only for the first policy (the model); baselines pooled
        rows.append(
            {
                "policy": r["policy"],
                "library": r["library"],
                "scored / envs": f"{r['scored_envs']} / {r['envs']}",
                ">= 80%": _fmt(r["frac_at_least_80"], pct=True),
                ">= 100%": _fmt(r["frac_at_least_100"], pct=True),
                "IQM [95% CI]": _ci(r, "iqm"),
            }
        )
    table = _table(pl.DataFrame(rows), left=("policy", "library", "scored / envs"))
    first = tables.scores.filter(pl.col("policy") == tables.scores["policy"].first())
    left_out = []
    for r in first.iter_rows(named=True):
        why = []
        if r.get("status") not in ("ok", None):
            why.append(f"{r['status']} ({r.get('cause') or 'no cause recorded'})")
        if r.get("reference_status") not in ("ok", None):
            why.append(f"reference {r['reference_status']}")
        if why:
            left_out.append(f"{r['library']}/{r['env_id']}: {'; '.join(why)}")
    out = (
        "".join(f"<li>{html.escape(t.strip())}</li>" for t in left_out)
        or "<li>none: every planned env is scored</li>"
    )
    return (
        "<h2>Headline: the paper beside this run</h2>"
        "<p>Share of scored envs where the policy's mean return is at or above 80% / 100% of "
        "its env's reference (0% = the reference run's first 10% of episodes, 100% = its last "
        "10%). The denominator is the scored envs; envs left out of it:</p>"
        f"{table}<ul>{out}</ul>{HEADLINE_END}"
    )


def _threshold_html(curve: pl.DataFrame) -> str:
    shown = curve.filter(pl.col("threshold").is_in(list(_SHOWN_THRESHOLDS)))
    if shown.is_empty():
        return "<p>no scores</p>"
    wide = shown.with_columns(
        (
            pl.col("envs_at_least").cast(pl.String)
            + pl.lit(" (")
            + (pl.col("fraction") * 100).round(1).cast(pl.String)
            + pl.lit("%)")
        )
        .fill_null("-")
        .alias("cell"),
        pl.format(">= {}%", pl.col("threshold_pct").cast(pl.Int64)).alias("x"),
    ).pivot(on="x", index=["policy", "library", "scored_envs", "failed_envs"], values="cell")
    return _table(wide, left=("policy", "library"))


def _meta_html(tables: EvalTables) -> str:
    m = tables.manifest
    cfg = m.config
    items = [
        ("evaluation", m.name),
        ("status", m.status),
        ("started", dt.datetime.fromtimestamp(m.created).isoformat(timespec="seconds")),
        ("last update", dt.datetime.fromtimestamp(m.updated).isoformat(timespec="seconds")),
        ("checkpoint", str(m.checkpoint.path) if m.checkpoint else "(none: baselines only)"),
        ("checkpoint MLflow run", (m.checkpoint.run_id if m.checkpoint else None) or "unknown"),
        ("evaluation MLflow run", m.mlflow_run_id or "not tracked"),
        ("dataset (references)", m.dataset_root or "unknown"),
        ("reference rule", m.reference_rule or REFERENCE_RULE),
        ("policies", ", ".join(m.policies)),
        (
            "protocol",
            f"{cfg.rollouts} rollouts x {cfg.episodes} episodes per env, env seeds "
            f"{cfg.rollout_seeds()}, backend {cfg.backend}, retries {cfg.retries}",
        ),
        ("envs planned", str(len(m.envs))),
    ]
    rows = "".join(
        f"<tr><th class='l'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in items
    )
    return f"<table class='meta'>{rows}</table>"


#: The references table: each env's reference run against a random policy and rl-zoo.
_REFERENCE_COLUMNS = [
    "library",
    "env_id",
    "reference_status",
    "reference_candidate",
    "reference_run_key",
    "ref_first10",
    "ref_last10",
    "ref_final_mean",
    "ref_random_mean",
    "zoo_best",
    "zoo_algo",
    "zoo_budget",
    "ref_pct_of_zoo",
    "ref_final_pct_of_zoo",
    "ref_beats_random",
    "ref_ill_conditioned",
]


#: A reference whose final policy is below this share of rl-zoo's best is called out.
ZOO_TARGET = 0.9


def _budget_of(row: Mapping[str, Any]) -> str:
    """The reference run's budget, read from its run key (`.../b<budget>`)."""
    key = row.get("reference_run_key") or ""
    tail = key.rsplit("/b", 1)[-1]
    return f"{int(tail):,} transitions" if tail.isdigit() else "its budget"


def references_frame(tables: EvalTables) -> pl.DataFrame:
    """One row per planned env: its reference's raw returns beside random and rl-zoo's best."""
    first = tables.scores.filter(pl.col("policy") == tables.scores["policy"].first())
    return first.select([c for c in _REFERENCE_COLUMNS if c in first.columns])


def _references_html(tables: EvalTables) -> str:
    if tables.scores.is_empty():
        return "<p>No envs.</p>"
    df = references_frame(tables)
    flagged = []
    for row in df.iter_rows(named=True):
        if row.get("ref_beats_random") is False:
            flagged.append(f"{row['env_id']}: the reference is not better than a random policy")
        elif row.get("ref_ill_conditioned"):
            flagged.append(
                f"{row['env_id']}: the reference's improvement is within the spread of its own "
                "first/last 10% (normalized scores swing widely)"
            )
        final = row.get("ref_final_pct_of_zoo")
        if final is not None and final < ZOO_TARGET and row.get("zoo_budget"):
            flagged.append(
                f"{row['env_id']}: the reference's final policy is at {final:.0%} of rl-zoo's "
                f"best (target {ZOO_TARGET:.0%}) after {_budget_of(row)}; rl-zoo's "
                f"{row['zoo_algo']} reached {row['zoo_best']:.4g} after "
                f"{row['zoo_budget']:,} transitions"
            )
    notes = "".join(f"<div class='note'>{html.escape(f)}</div>" for f in flagged)
    pct = ("ref_pct_of_zoo", "ref_final_pct_of_zoo")
    left = ("library", "env_id", "reference_status", "reference_candidate", "zoo_algo")
    return notes + _table(df, pct=pct, left=left)


def _per_env_html(tables: EvalTables) -> str:
    df = tables.per_env
    pct = tuple(c for c in df.columns if c.endswith(("_score", "_pct_of_zoo")))
    left = ("library", "env_id", "observation_space", "action_space", "reference_status")
    return _table(df, pct=pct, left=left + tuple(c for c in df.columns if c.endswith("_cause")))


def render_report(tables: EvalTables, images: Mapping[str, bytes] | None = None) -> str:
    """The report as one HTML string (figures drawn from the tables unless given as PNGs)."""
    if images is None:
        images = {
            name: figure_png(fig)
            for name, fig in figures(tables.threshold, tables.summary, tables.scores).items()
        }
    m = tables.manifest
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>ldm-eval: {html.escape(m.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>LDM evaluation: {html.escape(m.name)}</h1>",
    ]
    if not tables.complete:
        parts.append(
            "<div class='partial'>Partial evaluation: not every planned rollout has an outcome. "
            "Envs marked <i>missing</i> below have no score yet; aggregates cover the scored "
            "envs only.</div>"
        )
    parts += [f"<div class='note'>{html.escape(n)}</div>" for n in tables.notes]
    parts += [_headline_html(tables) if not tables.summary.is_empty() else HEADLINE_END]
    parts += ["<h2>Run</h2>", _meta_html(tables)]
    parts += [
        "<h2>Summary</h2>",
        "<p>Normalized score: 0% = mean return of the reference run's first 10% of episodes, "
        "100% = of its last 10%. IQM = interquartile mean; CIs by stratified bootstrap over "
        "envs within each library. Failed, missing and unreferenced envs are counted, never "
        "scored.</p>",
        _summary_html(tables.summary),
    ]
    parts.append("<h2>Figures</h2>")
    for name, png in images.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    parts += [
        "<h2>Performance thresholds</h2>",
        "<p>Envs at or above x% of reference (fraction of scored envs); the full curve (0-150% "
        "by 1%) is in <code>tables/threshold_curve.parquet</code>.</p>",
        _threshold_html(tables.threshold),
        "<h2>References</h2>",
        "<p>Raw returns of each env's reference run: the mean of its first and last 10% of "
        "training episodes (the 0% and 100% of the normalized score), its final policy acting "
        "deterministically (10 episodes, the policy the relabeled actions come from), a random "
        "policy, and the best score rl-baselines3-zoo publishes for the env. "
        "<i>% of zoo</i> = (return &minus; random) / (zoo best &minus; random).</p>",
        _references_html(tables),
        "<h2>Per env</h2>",
        _per_env_html(tables),
    ]
    if not tables.missing.is_empty():
        parts += ["<h2>Missing</h2>", _table(tables.missing, left=tuple(tables.missing.columns))]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(
    tables: EvalTables, path: str | Path, images: Mapping[str, bytes] | None = None
) -> Path:
    """Write the report atomically; returns its path."""
    path = Path(path)
    atomic_write_text(path, render_report(tables, images))
    return path
