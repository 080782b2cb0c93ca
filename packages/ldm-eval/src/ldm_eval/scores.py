"""From rollout attempts to one score per (policy, env), and the per-env table people read.

An env's outcome for a policy is decided by the last attempt of each of its rollouts:

* `ok`: every rollout has its episodes; the return is the mean over all of them (2 x 10 in the
  paper) and the score is that return normalized against the env's reference;
* `failed` / `timeout`: some rollout's last attempt failed (its cause is kept); no return, no
  score: a failure is reported, never averaged in;
* `missing`: some rollout was never recorded (an interrupted evaluation).

Only `ok` envs with a usable reference are `scored`; every other env stays in the table with
the reason it has no score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from ldm_eval.normalize import normalized_score

__all__ = ["ROLLOUT_SCHEMA", "SCORE_SCHEMA", "env_table", "score_envs"]

ROLLOUT_SCHEMA: dict[str, pl.DataType] = {
    "policy": pl.String(),
    "library": pl.String(),
    "env_id": pl.String(),
    "rollout": pl.Int64(),
    "attempt": pl.Int64(),
    "seed": pl.Int64(),
    "status": pl.String(),
    "cause": pl.String(),
    "returns": pl.List(pl.Float64()),
    "lengths": pl.List(pl.Int64()),
    "terminated": pl.List(pl.Boolean()),
    "steps": pl.Int64(),
    "wall_s": pl.Float64(),
}

SCORE_SCHEMA: dict[str, pl.DataType] = {
    "policy": pl.String(),
    "library": pl.String(),
    "env_id": pl.String(),
    "status": pl.String(),
    "cause": pl.String(),
    "attempts": pl.Int64(),
    "rollouts_ok": pl.Int64(),
    "episodes": pl.Int64(),
    "return_mean": pl.Float64(),
    "return_std": pl.Float64(),
    "rollout_means": pl.List(pl.Float64()),
    "score": pl.Float64(),
    "scored": pl.Boolean(),
}

_PRECEDENCE = {"failed": 0, "timeout": 1, "missing": 2, "ok": 3}


def score_envs(
    rollouts: pl.DataFrame,
    references: pl.DataFrame,
    envs: Sequence[tuple[str, str]],
    policies: Sequence[str],
    n_rollouts: int,
) -> pl.DataFrame:
    """One row per (policy, env) of `envs` x `policies`, with `SCORE_SCHEMA` + reference columns.

    Args:
        rollouts: every attempt (`ROLLOUT_SCHEMA`).
        references: `normalize.reference_runs` for (at least) these envs.
        envs: the planned (library, env_id) pairs, in table order.
        policies: the planned policy names.
        n_rollouts: rollouts per env the plan asked for.
    """
    latest: dict[tuple[str, str, str], dict[int, dict]] = {}
    attempts: dict[tuple[str, str, str], int] = {}
    for row in rollouts.sort("attempt").iter_rows(named=True):
        key = (row["policy"], row["library"], row["env_id"])
        latest.setdefault(key, {})[row["rollout"]] = row
        attempts[key] = attempts.get(key, 0) + 1
    refs = {(r["library"], r["env_id"]): r for r in references.iter_rows(named=True)}
    out = []
    for policy in policies:
        for library, env_id in envs:
            key = (policy, library, env_id)
            done = latest.get(key, {})
            states = [
                (done[r]["status"], done[r]["cause"]) if r in done else ("missing", None)
                for r in range(n_rollouts)
            ]
            status, cause = min(states, key=lambda s: _PRECEDENCE.get(s[0], 0))
            ok_rows = [
                done[r] for r in range(n_rollouts) if r in done and done[r]["status"] == "ok"
            ]
            returns = [x for row in ok_rows for x in row["returns"]]
            mean = float(np.mean(returns)) if status == "ok" and returns else None
            ref = refs.get((library, env_id), {})
            score = (
                normalized_score(mean, ref.get("ref_first10"), ref.get("ref_last10"))
                if ref.get("reference_status") == "ok"
                else None
            )
            out.append(
                {
                    "policy": policy,
                    "library": library,
                    "env_id": env_id,
                    "status": status,
                    "cause": cause,
                    "attempts": attempts.get(key, 0),
                    "rollouts_ok": len(ok_rows),
                    "episodes": len(returns),
                    "return_mean": mean,
                    "return_std": float(np.std(returns)) if mean is not None else None,
                    "rollout_means": [float(np.mean(row["returns"])) for row in ok_rows],
                    "score": score,
                    "scored": score is not None,
                }
            )
    scores = pl.DataFrame(out, schema=SCORE_SCHEMA)
    ref_cols = [c for c in references.columns if c not in ("library", "env_id")]
    return scores.join(
        references.select("library", "env_id", *ref_cols), on=["library", "env_id"], how="left"
    )


def env_table(scores: pl.DataFrame, envs: pl.DataFrame, policies: Sequence[str]) -> pl.DataFrame:
    """The per-env table: env, spaces, reference, and each policy's results side by side.

    Per policy: its mean return, normalized score, status and failure cause (`ldm_score`
    next to `random_score`).

    Args:
        scores: `score_envs`'s frame.
        envs: the planned envs with `library`, `env_id`, `observation_space`, `action_space`,
            `trained_library`, `trained_env` columns.
        policies: which policies' columns to add, in order.
    """
    ref_cols = [
        "reference_status",
        "reference_run_key",
        "ref_first10",
        "ref_last10",
        "ref_random_mean",
        "zoo_best",
        "zoo_algo",
        "ref_pct_of_zoo",
        "ref_final_mean",
        "ref_final_pct_of_zoo",
        "ref_ill_conditioned",
    ]
    first = scores.filter(pl.col("policy") == policies[0]) if policies else scores.head(0)
    table = envs.join(
        first.select("library", "env_id", *[c for c in ref_cols if c in scores.columns]),
        on=["library", "env_id"],
        how="left",
    )
    for p in policies:
        part = scores.filter(pl.col("policy") == p).select(
            "library",
            "env_id",
            pl.col("return_mean").alias(f"{p}_return"),
            pl.col("score").alias(f"{p}_score"),
            pl.col("status").alias(f"{p}_status"),
            pl.col("cause").alias(f"{p}_cause"),
        )
        table = table.join(part, on=["library", "env_id"], how="left")
        if {"ref_random_mean", "zoo_best"} <= set(table.columns):
            # the policy on the zoo's scale: 0 = random policy, 1 = the zoo's best
            table = table.with_columns(
                pl.when(pl.col("zoo_best") > pl.col("ref_random_mean"))
                .then(
                    (pl.col(f"{p}_return") - pl.col("ref_random_mean"))
                    / (pl.col("zoo_best") - pl.col("ref_random_mean"))
                )
                .otherwise(None)
                .alias(f"{p}_pct_of_zoo")
            )
    return table
