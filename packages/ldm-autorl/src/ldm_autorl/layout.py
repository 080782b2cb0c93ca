"""Where ldm-autorl keeps its results under the data root (default `<data home>/autorl`).

```
runs/<stage>/<library>/<env>/<cand>-s<seed>-b<budget>.json    a finished run (written last)
shards/<library>/<env>/<cand>-s<seed>-b<budget>/part-<k>.arrow  a part per sub-env
models/<library>/<env>/<cand>-s<seed>-b<budget>.zip          the final SB3 policy
ranking/<library>.json                                   the library's candidate ranking
index/                                                   the Polars index over shards/ (ldm-envs)
```

`RunId` names one training run and owns the formats of its key and of the `<cand>-s<seed>-b
<budget>` stem: existing data roots and MLflow stores hold them, so they must never change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ldm_envs.paths import dataset_root


def default_root() -> Path:
    """`<data home>/autorl` (`ldm_envs.paths.dataset_root`)."""
    return dataset_root()


def safe(name: str) -> str:
    """A path component for an env id or candidate (ids may hold '/', as ALE's do)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "__", name)


@dataclass(frozen=True)
class RunId:
    """One training run: candidate `candidate` with `seed` on `library`'s `env_id`, `budget` long.

    The budget is part of it: a run at another budget is another run, never a reused one. The
    stage (ranking, reference) is not: the same run id names a ranking run and a reference run,
    whose keys and records differ by stage.
    """

    library: str
    env_id: str
    candidate: str
    seed: int
    budget: int

    def key(self, stage: str) -> str:
        """The run's identity within `stage`, used for resume and for MLflow de-duplication."""
        return f"{stage}/{self.library}/{self.env_id}/{self.candidate}/s{self.seed}/b{self.budget}"

    @property
    def stem(self) -> str:
        """The file or folder name of the run's record, shards and model."""
        return f"{safe(self.candidate)}-s{self.seed}-b{self.budget}"

    def result_path(self, root: Path, stage: str) -> Path:
        """The JSON record of the finished run."""
        return root / "runs" / stage / self.library / safe(self.env_id) / f"{self.stem}.json"

    def shard_dir(self, root: Path) -> Path:
        """The folder holding a reference run's shard parts."""
        return root / "shards" / self.library / safe(self.env_id) / self.stem

    def model_path(self, root: Path) -> Path:
        """The saved final policy of a reference run."""
        return root / "models" / self.library / safe(self.env_id) / f"{self.stem}.zip"


def run_key(stage: str, library: str, env_id: str, candidate: str, seed: int, budget: int) -> str:
    """`RunId(...).key(stage)`, for callers holding the five apart."""
    return RunId(library, env_id, candidate, seed, budget).key(stage)


def stage_key(stage: str, library: str, budget: int | None = None) -> str:
    """The key of a stage's parent run (per budget where the stage has one)."""
    return f"{stage}/{library}" + (f"/b{budget}" if budget is not None else "")


def result_path(
    root: Path, stage: str, library: str, env_id: str, candidate: str, seed: int, budget: int
) -> Path:
    """`RunId(...).result_path(root, stage)`."""
    return RunId(library, env_id, candidate, seed, budget).result_path(root, stage)


def shard_dir(
    root: Path, library: str, env_id: str, candidate: str, seed: int, budget: int
) -> Path:
    """`RunId(...).shard_dir(root)`."""
    return RunId(library, env_id, candidate, seed, budget).shard_dir(root)


def model_path(
    root: Path, library: str, env_id: str, candidate: str, seed: int, budget: int
) -> Path:
    """`RunId(...).model_path(root)`."""
    return RunId(library, env_id, candidate, seed, budget).model_path(root)


def ranking_path(root: Path, library: str) -> Path:
    """The ranking of a library's candidates."""
    return root / "ranking" / f"{library}.json"
