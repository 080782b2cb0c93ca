"""What an export reads: the kept shards, grouped per env, episode by episode.

Also the names an export shares between formats (formats, actions, the dataset record).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel

from ldm_autorl.errors import ExportError
from ldm_envs.dataset.index import read_index
from ldm_envs.dataset.shards import ShardReader
from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiBinarySpace, MultiDiscreteSpace

#: Output formats: a Minari dataset, or a Hugging Face `datasets` folder.
FORMATS = ("minari", "hf")
#: Which actions go in: the final policy's relabeled ones (default) or those taken in training.
ACTIONS = ("relabeled", "taken")
#: Whether a Minari dataset carries its env spec: where makeable, always (else fail), never.
ENV_SPEC_MODES = ("auto", "require", "none")
#: First part of every Minari dataset id written here.
MINARI_NAMESPACE = "ldm"
#: Version suffix of the dataset ids; bumped if what an export holds changes meaning.
DATASET_VERSION = 0
#: The extra that installs minari and datasets.
EXTRA = "ldm-autorl[export]"

_SHARD_COLUMN = {"relabeled": "ref_action", "taken": "action"}
_ACTIONS_MEANING = {
    "relabeled": "the final policy's deterministic action for every recorded observation",
    "taken": "the actions the policy took while training",
}

Say = Callable[[str], None]
#: The spaces a shard can hold (what `ShardMeta` stores).
ShardSpace = BoxSpace | DiscreteSpace | MultiDiscreteSpace | MultiBinarySpace


class ExportedDataset(BaseModel):
    """One dataset `export` wrote: where it is and what it holds."""

    format: str
    library: str
    env_id: str
    actions: str
    #: the Minari dataset id (None for hf)
    dataset_id: str | None = None
    #: the dataset's folder
    path: str
    runs: int
    shards: int
    episodes: int
    steps: int
    #: whether a Minari dataset carries its env spec (always False for hf)
    env_spec: bool = False
    #: why the env spec was left out, when it was
    env_spec_note: str | None = None


@dataclass(frozen=True)
class Episode:
    """One episode of a shard, its rows as views of the shard (actions: the chosen column)."""

    shard: str
    run_key: str
    candidate: str
    seed: int
    part: int
    shard_episode: int
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    step: np.ndarray

    @property
    def complete(self) -> bool:
        """Whether the episode ended (terminated or truncated) rather than being cut."""
        return bool(self.terminated[-1] or self.truncated[-1])


@dataclass(frozen=True)
class _EnvGroup:
    """The kept shards of one (library, env), in export order, and their common spaces."""

    library: str
    env_id: str
    shards: pl.DataFrame
    observation_space: ShardSpace
    action_space: ShardSpace

    @property
    def runs(self) -> list[str]:
        return self.shards["run_key"].unique(maintain_order=True).to_list()


def kept_shards(
    root: Path,
    *,
    libraries: Sequence[str] | None = None,
    env_ids: Sequence[str] | None = None,
    actions: str = "relabeled",
) -> pl.DataFrame:
    """The index rows of the kept shards, narrowed to `libraries` and `env_ids`.

    Raises:
        FileNotFoundError: the data root has no index yet.
        ExportError: nothing is kept there (saying how many runs are dropped or undecided),
            an asked-for env has no kept run, or a kept shard lacks relabeled actions.
    """
    runs, _ = read_index(root)
    where = [f"under {root}"]
    if libraries:
        runs = runs.filter(pl.col("library").is_in(list(libraries)))
        where.append(f"library {', '.join(libraries)}")
    if env_ids:
        runs = runs.filter(pl.col("env_id").is_in(list(env_ids)))
        where.append(f"env {', '.join(env_ids)}")
    kept = runs.filter(pl.col("kept").fill_null(False))
    if kept.height == 0:
        dropped = runs.filter(pl.col("kept") == False).height  # noqa: E712 - polars expression
        undecided = runs.filter(pl.col("kept").is_null()).height
        raise ExportError(
            f"no kept runs to export {' '.join(where)}: {runs.height} shard(s) indexed, "
            f"{dropped} dropped by the filter, {undecided} not decided yet "
            "(run `ldm-autorl filter LIB` first)"
        )
    if env_ids:
        missing = sorted(set(env_ids) - set(kept["env_id"].to_list()))
        if missing:
            raise ExportError(f"no kept runs for env(s) {', '.join(missing)} {where[0]}")
    if actions == "relabeled":
        unlabeled = kept.filter(~pl.col("has_ref_action"))["shard_path"].to_list()
        if unlabeled:
            raise ExportError(
                f"kept shard(s) without relabeled actions: {', '.join(unlabeled[:3])}"
                f"{' ...' if len(unlabeled) > 3 else ''}; export them with --actions taken"
            )
    return kept.sort(["library", "env_id", "run_key", "part"])


def _groups(root: Path, kept: pl.DataFrame) -> list[_EnvGroup]:
    """Split the kept shards by (library, env); all shards of an env must share its spaces."""
    groups = []
    for (library, env_id), shards in kept.group_by(["library", "env_id"], maintain_order=True):
        spaces = set(shards.select("observation_space", "action_space").iter_rows())
        if len(spaces) != 1:
            raise ExportError(
                f"{library} {env_id}: the kept shards disagree on the spaces "
                f"({len(spaces)} different pairs); one dataset holds one pair"
            )
        with ShardReader(root / shards["shard_path"][0]) as reader:
            obs, act = reader.meta.observation_space, reader.meta.action_space
        groups.append(_EnvGroup(str(library), str(env_id), shards, obs, act))
    return groups


def iter_episodes(root: Path, shards: pl.DataFrame, actions: str) -> Iterator[Episode]:
    """Every episode of `shards` (index rows), in order; reads check the shards' CRCs.

    Memory is one episode (views of the shard's memory map), whatever the shard's size.
    """
    column = _SHARD_COLUMN[actions]
    for row in shards.iter_rows(named=True):
        with ShardReader(root / row["shard_path"]) as reader:
            eps = reader.episodes()
            for shard_episode, start, length in eps.select("episode", "start", "length").rows():
                rows = reader.rows(start, start + length)
                yield Episode(
                    shard=row["shard_path"],
                    run_key=row["run_key"],
                    candidate=row["candidate"],
                    seed=row["seed"],
                    part=row["part"],
                    shard_episode=shard_episode,
                    obs=rows["obs"],
                    action=rows[column],
                    reward=rows["reward"],
                    terminated=rows["terminated"],
                    truncated=rows["truncated"],
                    step=rows["step"],
                )


def _import(name: str) -> Any:
    """Import minari or datasets, naming the extra that installs them when missing."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(
            f"{name} is not installed ({exc}); install the export extra: pip install '{EXTRA}'"
        ) from None


def _description(group: _EnvGroup, actions: str, format_: str) -> str:
    text = (
        f"ldm reference runs of {group.library} {group.env_id}, kept by the filter: "
        f"{len(group.runs)} run(s), actions {actions} ({_ACTIONS_MEANING[actions]})."
    )
    if format_ == "minari":
        text += (
            " The shards keep no observation after an episode's last action: each episode's "
            "last observation repeats the one before it. An episode cut by the end of its "
            "run is marked truncated at its last step."
        )
    return text
