"""The suite's HTML report: the evaluation report with the pipeline's section in it.

The evaluation's own report (`ldm_eval.report`) stays the body, headline first; the suite
adds, right after the headline, the envs left out of the denominator and its own section
(stages and wall times, dataset, the curve of the evaluations during training, where things
are, the commands and the suite), and retitles the page. Written atomically.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path
from typing import Any

import yaml

from ldm_envs import tracking
from ldm_envs.atomic import atomic_write_bytes, atomic_write_text
from ldm_eval.suite.config import STAGES, Suite
from ldm_eval.suite.context import StageContext
from ldm_eval.suite.dataset import dataset_summary
from ldm_eval.suite.stages.train import train_config

__all__ = ["fmt_wall", "mlflow_ui_command", "when", "write_suite_report"]


def fmt_wall(seconds: float | None) -> str:
    """`m:ss`, or `s.s s` under a minute (`-` for none)."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes else f"{seconds:.1f} s"


def when(ts: float | None) -> str:
    """A timestamp as local ISO time to the second (`-` for none)."""
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _suite_html(ctx: StageContext) -> str:
    """The suite's section of the report: stages with wall times, dataset, where things are."""
    suite, record = ctx.suite, ctx.record
    esc = html.escape
    rows = []
    total = all_attempts = 0.0
    for stage in STAGES:
        rec = record.stages.get(stage)
        if rec is None:
            rows.append(
                f"<tr><td class='l'>{stage}</td><td class='l'>not run</td>"
                + "<td></td>" * 5
                + "</tr>"
            )
            continue
        total += rec.wall_s or 0.0
        all_attempts += rec.total_wall_s or rec.wall_s or 0.0
        rows.append(
            "<tr>"
            f"<td class='l'>{stage}</td><td class='l'>{esc(rec.status)}</td>"
            f"<td>{fmt_wall(rec.wall_s)}</td><td>{fmt_wall(rec.total_wall_s)}</td>"
            f"<td>{rec.attempts}</td>"
            f"<td class='l'>{when(rec.started)}</td><td class='l'>{when(rec.ended)}</td>"
            "</tr>"
        )
    rows.append(
        f"<tr><th class='l'>total</th><th></th><th>{fmt_wall(total)}</th>"
        f"<th>{fmt_wall(all_attempts)}</th>" + "<th></th>" * 3 + "</tr>"
    )
    stage_table = (
        "<table><thead><tr><th class='l'>stage</th><th class='l'>status</th>"
        "<th>wall time (last attempt)</th><th>wall time (all attempts since the stage last "
        "finished)</th><th>attempts</th><th class='l'>started</th>"
        f"<th class='l'>ended</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    commands = "".join(
        f"<li><b>{s}</b>: <code>{esc(c)}</code></li>"
        for s in STAGES
        for c in (record.stages[s].commands if s in record.stages else [])
    )
    try:
        summary = dataset_summary(suite.dataset_root, suite)
        head = "".join(f"<th>{esc(c)}</th>" for c in summary.columns)
        body = "".join(
            "<tr>"
            + "".join(f"<td>{esc(f'{v:,}' if isinstance(v, int) else str(v))}</td>" for v in r)
            + "</tr>"
            for r in summary.iter_rows()
        )
        dataset = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    except (FileNotFoundError, OSError, ValueError) as exc:
        dataset = f"<p>no dataset index: {esc(str(exc))}</p>"
    uri = tracking.tracking_uri()
    config = yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
    curve = _training_curve_html(suite)
    return (
        f"<h2>Pipeline: suite {esc(suite.name)}</h2>"
        + (f"<p>{esc(suite.description)}</p>" if suite.description else "")
        + stage_table
        + "<h3>Dataset (suite envs)</h3>"
        + dataset
        + curve
        + "<h3>Where things are</h3><table class='meta'>"
        + f"<tr><th class='l'>suite file</th><td>{esc(str(suite.source or '-'))}</td></tr>"
        + f"<tr><th class='l'>suite folder</th><td>{esc(str(suite.folder))}</td></tr>"
        + f"<tr><th class='l'>dataset root</th><td>{esc(str(suite.dataset_root))}</td></tr>"
        + f"<tr><th class='l'>MLflow store</th><td>{esc(uri)}</td></tr>"
        + f"<tr><th class='l'>browse</th><td><code>{esc(mlflow_ui_command(uri))}</code></td></tr>"
        + "</table>"
        + f"<details><summary>commands</summary><ul>{commands}</ul></details>"
        + f"<details><summary>suite</summary><pre>{esc(config)}</pre></details>"
    )


def _training_curve_html(suite: Suite) -> str:
    """The curve of the model's evaluations during training, copied beside the report."""
    from ldm_eval.training_curve import CURVE_FILE, CURVE_PNG, curve_html

    out = train_config(suite).out
    assert out is not None
    model_dir = Path(out)  # a suite trains into its own folder, never a store URL
    if not (model_dir / CURVE_FILE).is_file():
        return ""
    atomic_write_text(suite.folder / CURVE_FILE, (model_dir / CURVE_FILE).read_text())
    png = (model_dir / CURVE_PNG).read_bytes() if (model_dir / CURVE_PNG).is_file() else None
    if png is not None:
        atomic_write_bytes(suite.folder / CURVE_PNG, png)
    return curve_html(suite.folder / CURVE_FILE, png)


def _unreferenced_html(references: Any) -> str:
    """Suite envs the model was never trained on, each with the filter's reasons.

    The evaluation only plans envs with a kept reference, so without this list an env whose
    runs were all dropped would vanish from the headline's denominator without a word.
    """
    if references is None:
        return ""
    rows = [r for r in references.iter_rows(named=True) if r.get("reference_status") != "ok"]
    if not rows:
        return "<p>Every env of the suite kept a reference run.</p>"
    items = "".join(
        f"<li>{html.escape(r['library'])}/{html.escape(r['env_id'])}: "
        f"{html.escape(str(r.get('reference_status')))}"
        f"{' (' + html.escape(r['dropped']) + ')' if r.get('dropped') else ''}</li>"
        for r in rows
    )
    return (
        f"<p>{len(rows)} of the suite's {references.height} envs kept no reference run, so the "
        f"model was not trained or scored on them:</p><ul>{items}</ul>"
    )


def write_suite_report(ctx: StageContext) -> None:
    """Write the suite report: the headline, its own section, then the evaluation report's."""
    from ldm_eval.report import HEADLINE_END

    page = ctx.eval_html or ""
    section = _suite_html(ctx)
    if HEADLINE_END in page:  # the headline stays first; unscored suite envs named right below
        page = page.replace(HEADLINE_END, _unreferenced_html(ctx.references) + HEADLINE_END, 1)
        head, tail = page.split(HEADLINE_END, 1)
        page, section = head + HEADLINE_END + section + tail, ""
    title = f"LDM suite {html.escape(ctx.suite.name)}"
    page = re.sub(r"<title>.*?</title>", f"<title>{title}</title>", page, count=1)
    start, end = page.find("<h1>"), page.find("</h1>")
    if 0 <= start < end:
        evaluation = page[start + 4 : end].removeprefix("LDM evaluation: ")
        heading = f"<h1>{title}: evaluation {evaluation}</h1>"
        page = page[:start] + heading + section + page[end + 5 :]
    else:
        head = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        page = f"{head}<body><h1>{title}</h1>{section}{page}</body></html>"
    atomic_write_text(ctx.suite.report_path, page)


def mlflow_ui_command(uri: str) -> str:
    """How to browse the store at `uri`."""
    if uri.startswith("sqlite:"):
        return (
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false uv run mlflow ui --workers 1 "
            f"--backend-store-uri {uri}"
        )
    return f"open {uri} in a browser"
