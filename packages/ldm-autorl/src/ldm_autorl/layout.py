"""Where ldm-autorl keeps its results under the data root (default `<data home>/autorl`).

```
runs/<stage>/<library>/<env>/<cand>-s<seed>-b<budget>.json    a finished run (written last)
shards/<library>/<env>/<cand>-s<seed>-b<budget>/part-<k>.arrow  a part per sub-env
models/<library>/<env>/<cand>-s<seed>-b<budget>.zip          the final SB3 policy
ranking/<library>.json                                   the library's candidate ranking
index/                                                   the Polars index over shards/ (ldm-envs)
```
"""

from __future__ import annotations

import re
from pathlib import Path

from ldm_envs.paths import dataset_root


def default_root() -> Path:
    """`<data home>/autorl` (`ldm_envs.paths.dataset_root`)."""
    return dataset_root()


def safe(name: str) -> str:
    """A path component for an env id or candidate (ids may hold '/', as ALE's do)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "__", name)


def run_key(stage: str, library: str, env_id: str, candidate: str, seed: int, budget: int) -> str:
    """The identity of one training run, used for resume and for MLflow de-duplication.

    The budget is part of it: a run at another budget is another run, never a reused one.
    """
    return f"{stage}/{library}/{env_id}/{candidate}/s{seed}/b{budget}"


def stage_key(stage: str, library: str, budget: int | None = None) -> str:
    """The key of a stage's parent run (per budget where the stage has one)."""
    return f"{stage}/{library}" + (f"/b{budget}" if budget is not None else "")


def _stem(candidate: str, seed: int, budget: int) -> str:
    return f"{safe(candidate)}-s{seed}-b{budget}"


def result_path(
    root: Path, stage: str, library: str, env_id: str, candidate: str, seed: int, budget: int
) -> Path:
    """The JSON record of a finished run."""
    stem = _stem(candidate, seed, budget)
    return root / "runs" / stage / library / safe(env_id) / f"{stem}.json"


def shard_dir(
    root: Path, library: str, env_id: str, candidate: str, seed: int, budget: int
) -> Path:
    """The folder holding a reference run's shard parts."""
    return root / "shards" / library / safe(env_id) / _stem(candidate, seed, budget)


def model_path(
    root: Path, library: str, env_id: str, candidate: str, seed: int, budget: int
) -> Path:
    """The saved final policy of a reference run."""
    return root / "models" / library / safe(env_id) / f"{_stem(candidate, seed, budget)}.zip"


def ranking_path(root: Path, library: str) -> Path:
    """The ranking of a library's candidates."""
    return root / "ranking" / f"{library}.json"
