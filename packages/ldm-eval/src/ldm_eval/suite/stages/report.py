"""The `report` stage: `<suite folder>/report.html` and the report's tables as CSV beside it.

In this process: it only reads the evaluation's run folder (as `ldm-eval report` does) and the
dataset index, and writes files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ldm_envs.manifest import atomic_write_text
from ldm_eval.suite.commands import quote
from ldm_eval.suite.context import StageContext, StageFailure
from ldm_eval.suite.dataset import suite_references
from ldm_eval.suite.html import write_suite_report

__all__ = ["run"]


def run(ctx: StageContext) -> None:
    """The suite report: stages and wall times, dataset, then the evaluation report."""
    from ldm_eval.report import render_report
    from ldm_eval.results import EvalRunDir
    from ldm_eval.tables import compute_tables

    rec = ctx.record.stages.get("eval")
    folder = rec.outputs.get("eval_dir") if rec is not None and rec.status == "finished" else None
    if folder is None or not Path(folder).is_dir():
        raise StageFailure("no finished evaluation to report on: run the eval stage first")
    run_dir = EvalRunDir(Path(folder))
    ctx.command(quote(["ldm-eval", "report", folder, "-o", ctx.suite.report_path]))
    tables = compute_tables(run_dir, n_resamples=ctx.suite.eval.resamples)
    images = {p.name: p.read_bytes() for p in sorted(run_dir.plots.glob("*.png"))} or None
    ctx.eval_html = render_report(tables, images)
    ctx.references = references = suite_references(ctx.suite)
    write_suite_report(ctx)
    ctx.outputs["report"] = str(ctx.suite.report_path)
    written = _write_csv_tables(tables, references, ctx.suite.folder)
    ctx.outputs["tables"] = ", ".join(p.name for p in written)


def _write_csv_tables(tables: Any, references: Any, folder: Path) -> list[Path]:
    """The report's tables as CSV beside `report.html`, for a reader with a spreadsheet.

    `references.csv` (every env of the suite: its reference run against random and rl-zoo, or
    the filter's reasons for having none), `per_env.csv`, `summary.csv`,
    `threshold_curve.csv`; nested columns (lists) are written as JSON text.
    """
    import polars as pl

    frames = {
        "references": references,
        "per_env": tables.per_env,
        "summary": tables.summary,
        "threshold_curve": tables.threshold,
    }
    paths = []
    for name, df in frames.items():
        flat = df.with_columns(
            pl.col(c).map_elements(
                lambda v: json.dumps(v.to_list() if isinstance(v, pl.Series) else v),
                return_dtype=pl.String,
            )
            for c, dtype in df.schema.items()
            if dtype.is_nested()
        )
        path = folder / f"{name}.csv"
        atomic_write_text(path, flat.write_csv())
        paths.append(path)
    return paths
