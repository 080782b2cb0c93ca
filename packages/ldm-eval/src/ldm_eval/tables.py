"""Every derived table of an evaluation, recomputed from its folder alone.

Reports, MLflow logging and `ldm-eval report` all go through `compute_tables`, so a table never
disagrees with the rollouts it came from, and a partial evaluation (some rollouts missing) gives
the same tables with those envs marked `missing` and listed in `notes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ldm_eval.aggregate import summarize, threshold_curve
from ldm_eval.results import EvalManifest, EvalRunDir
from ldm_eval.scores import env_table, score_envs

__all__ = ["EvalTables", "compute_tables", "planned_envs_frame"]

_PLANNED_SCHEMA: dict[str, pl.DataType] = {
    "library": pl.String(),
    "env_id": pl.String(),
    "observation_space": pl.String(),
    "action_space": pl.String(),
    "trained_library": pl.Boolean(),
    "trained_env": pl.Boolean(),
}


def planned_envs_frame(manifest: EvalManifest) -> pl.DataFrame:
    """The planned envs as a frame (one row each, in plan order)."""
    return pl.DataFrame([e.model_dump() for e in manifest.envs], schema=_PLANNED_SCHEMA)


@dataclass
class EvalTables:
    """The tables of one evaluation and what a reader must know about them.

    Attributes:
        manifest: the evaluation's plan and status.
        scores: one row per (policy, env): outcome, return, normalized score, reference.
        per_env: one row per env, the policies side by side (the paper's per-env table).
        threshold: the performance-threshold curves (`aggregate.threshold_curve`).
        summary: IQM / median / mean with CIs per policy and library (`aggregate.summarize`).
        missing: (policy, library, env_id) with rollouts never recorded.
        notes: warnings to show above the tables (partial eval, untrained libraries, failures).
    """

    manifest: EvalManifest
    scores: pl.DataFrame
    per_env: pl.DataFrame
    threshold: pl.DataFrame
    summary: pl.DataFrame
    missing: pl.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every planned rollout has an outcome and the run finished."""
        return self.manifest.status == "complete" and self.missing.is_empty()

    def write(self, run_dir: EvalRunDir) -> list[Path]:
        """Write the tables as Parquet under `tables/`; returns the paths."""
        return [
            run_dir.write_table(df, name)
            for name, df in (
                ("scores", self.scores),
                ("per_env", self.per_env),
                ("threshold_curve", self.threshold),
                ("summary", self.summary),
            )
        ]


def compute_tables(
    run_dir: EvalRunDir | str | Path,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> EvalTables:
    """Score, aggregate and annotate an evaluation folder (complete or not)."""
    run_dir = run_dir if isinstance(run_dir, EvalRunDir) else EvalRunDir(run_dir)
    manifest = run_dir.read_manifest()
    envs = planned_envs_frame(manifest)
    pairs = list(zip(envs["library"].to_list(), envs["env_id"].to_list(), strict=True))
    scores = score_envs(
        run_dir.read_rollouts(),
        run_dir.read_references(),
        pairs,
        manifest.policies,
        manifest.config.rollouts,
    )
    scores = scores.join(
        envs.select("library", "env_id", "trained_library", "trained_env"),
        on=["library", "env_id"],
        how="left",
    )
    missing = scores.filter(pl.col("status") == "missing").select("policy", "library", "env_id")
    notes = list(manifest.warnings)
    if manifest.status != "complete":
        notes.append(
            f"partial evaluation: the run is {manifest.status!r}; "
            f"{missing.height} (policy, env) pairs have rollouts missing"
        )
    elif not missing.is_empty():
        notes.append(f"{missing.height} (policy, env) pairs have rollouts missing")
    failed = scores.filter(pl.col("status").is_in(["failed", "timeout"]))
    if not failed.is_empty():
        names = ", ".join(
            f"{r['library']}/{r['env_id']} ({r['policy']})" for r in failed.iter_rows(named=True)
        )
        notes.append(f"{failed.height} failed (not scored, listed in the table): {names}")
    unref = scores.filter((pl.col("status") == "ok") & ~pl.col("scored"))
    if not unref.is_empty():
        names = ", ".join(
            sorted({f"{r['library']}/{r['env_id']}" for r in unref.iter_rows(named=True)})
        )
        notes.append(f"no usable reference run, not scored: {names}")
    return EvalTables(
        manifest=manifest,
        scores=scores,
        per_env=env_table(scores, envs, manifest.policies),
        threshold=threshold_curve(scores),
        summary=summarize(scores, confidence=confidence, n_resamples=n_resamples, seed=seed),
        missing=missing,
        notes=notes,
    )
