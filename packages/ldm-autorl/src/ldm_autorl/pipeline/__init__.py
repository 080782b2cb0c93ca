"""The stages of the paper's dataset generation: rank, train (record + relabel), filter, index.

Every stage is resumable: runs are tasks whose result records are written last, a stage only
submits the runs without a record, and MLflow runs are found again by their run keys. A run
whose shards are gone (deleted, or quarantined as corrupt) is not finished any more: `train`
and `filter` first put it back to to-do (`ldm_autorl.verify.reconcile`), saying so.

One process at a time runs a stage of a library on a data root (`ldm_envs.locks`): a second
`rank`/`train`/`filter` of the same library and root is refused, naming the holder's pid,
while other libraries run alongside. A stage's parent MLflow run is keyed by its budget alone;
the seeds, backends and top-N of the calls that added to it are tags that grow, so calling a
stage again with another seed or backend at the same budget extends it (the ranking then
pools every finished seed at that budget).

Modules: `stages` (what the run stages share: planning, submitting, the lock and parent run),
`ranking` (`rank`), `reference` (`train`), `filtering` (`filter_runs`).
"""

from __future__ import annotations

from ldm_autorl.candidates import registry as candidate_registry
from ldm_autorl.errors import EmptyRankingError
from ldm_autorl.jobs import MAX_WORKER_RESTARTS
from ldm_autorl.pipeline.filtering import ZooComparison, filter_runs
from ldm_autorl.pipeline.ranking import (
    DEFAULT_RANK_BUDGET,
    _without_episodes,
    load_ranking,
    rank,
)
from ldm_autorl.pipeline.reference import DEFAULT_TRAIN_BUDGET, MAX_ENVS_PER_LIBRARY, train
from ldm_autorl.pipeline.stages import (
    TASK_TARGET,
    StageOutcome,
    _plan,
    compatible_pairs,
    stage_parent,
)
from ldm_autorl.random_baseline import DEFAULT_EPISODES as DEFAULT_RANDOM_EPISODES

__all__ = [
    "DEFAULT_RANDOM_EPISODES",
    "DEFAULT_RANK_BUDGET",
    "DEFAULT_TRAIN_BUDGET",
    "MAX_ENVS_PER_LIBRARY",
    "MAX_WORKER_RESTARTS",
    "TASK_TARGET",
    "EmptyRankingError",
    "StageOutcome",
    "ZooComparison",
    "candidate_registry",
    "compatible_pairs",
    "filter_runs",
    "load_ranking",
    "rank",
    "stage_parent",
    "train",
]
# private names tests reach for, kept at their old address
_ = (_plan, _without_episodes)
