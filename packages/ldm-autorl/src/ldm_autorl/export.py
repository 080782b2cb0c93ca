"""Export the kept reference runs as a Minari dataset or a Hugging Face `datasets` folder.

The shards are ldm's own format (one Arrow IPC file per run part, see `ldm_envs.dataset`); an
offline-RL user reaches for Minari or `datasets` instead. `export` writes what the filter kept,
one dataset per (library, env): an env has one observation and one action space, which a Minari
dataset (one env spec) and a typed `datasets` table (fixed-shape columns) both need.

What goes in, per env: every kept shard (index row with `kept`), ordered by run key and part,
every episode of each in row order, numbered 0, 1, ... across the env's runs. The actions are
the relabeled ones (`ref_action`: the final policy's deterministic action for each recorded
observation, what the LDM trains on) unless `actions="taken"` (what the policy did while
training).

Minari (`format="minari"`): the dataset id is `ldm/<library>/<env>/<actions>-v0` (in `<env>`,
characters other than letters, digits, `-` and `_` become `_`: `ALE/Pong-v5` -> `ALE_Pong-v5`),
stored in the Arrow data format under `out` (what `MINARI_DATASETS_PATH` must point at to load
it). Two things differ from the shards, both forced by Minari's episode layout:

- Minari wants one more observation than actions. The shards keep the observation before each
  action, not the one after an episode's last action (the recorder sees the next episode's
  reset observation there), so each episode's last observation repeats the one before it.
- An episode cut by the end of its run (neither terminated nor truncated) is marked truncated
  at its last step, as Minari's own `DataCollector` marks an episode it was stopped inside.

Each Minari episode's metadata names where it came from: `run_key`, `candidate`, `seed`,
`part`, `shard` (relative to the data root) and `shard_episode`.

The env spec: where the env can be made in this Python (its library installed, Gymnasium API,
the declared make id, kwargs, episode limit and wrappers) and its spaces are the recorded ones,
the dataset carries that spec and the manifest's requirements, so `recover_environment()`
works. `env_spec="auto"` leaves the spec out otherwise (with a warning that says why),
`"require"` fails instead, `"none"` never makes the env.

Hugging Face (`format="hf"`): `Dataset.save_to_disk` folders `<out>/<library>/<env>/<actions>`
(`<env>` made path-safe as the data root's layout does), one row per transition, exactly the
shards' rows: `episode` (the same numbering as Minari's), `step`, `obs`, `action`, `reward`,
`terminated`, `truncated` (an episode cut by its run's end keeps both False), and `run_key`,
`candidate`, `seed`, `part`, `shard_episode`. Array columns are fixed-size lists nested to
the space's shape, so `with_format("numpy")` hands out `(n, *shape)` arrays. The dataset's
description is JSON: library, env, actions, spaces, runs.

Both are written aside (a hidden folder under `out`) and renamed in when complete; an existing
dataset is refused unless `overwrite=True`. Images stay lossless (Minari's JPEG encoding off;
minari 0.5.3, the last release for Python 3.10, cannot turn it off and is warned about).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel

from ldm_autorl import layout
from ldm_autorl.errors import ExportError
from ldm_envs.atomic import replace_dir
from ldm_envs.dataset.index import read_index
from ldm_envs.dataset.shards import ShardReader, space_layout
from ldm_envs.errors import BadInputError, LDMError
from ldm_envs.inputs import require_choice
from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiBinarySpace, MultiDiscreteSpace

if TYPE_CHECKING:
    import gymnasium as gym

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


# -- names --------------------------------------------------------------------------------------


def minari_dataset_id(library: str, env_id: str, actions: str) -> str:
    """`ldm/<library>/<env>/<actions>-v0`, valid for Minari's id and namespace rules.

    Minari's namespaces allow letters, digits, `-`, `_` and `/` only, so other characters of
    the env id (`/` included, so that `ALE/Pong-v5` is one level) become `_`.
    """
    env = re.sub(r"[^-\w]", "_", env_id)
    lib = re.sub(r"[^-\w]", "_", library)
    return f"{MINARI_NAMESPACE}/{lib}/{env}/{actions}-v{DATASET_VERSION}"


def hf_path(out: Path, library: str, env_id: str, actions: str) -> Path:
    """`<out>/<library>/<env>/<actions>`, the env id made path-safe as the data root does."""
    return Path(out) / layout.safe(library) / layout.safe(env_id) / actions


# -- what is kept -------------------------------------------------------------------------------


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


# -- the env spec -------------------------------------------------------------------------------


def host_env(
    library: str, env_id: str, observation_space: ShardSpace, action_space: ShardSpace
) -> tuple[gym.Env[Any, Any] | None, str]:
    """Make the env in this Python as its manifest declares it, to take its spec from.

    Returns:
        `(env, "")`, or `(None, why)` when the library is not installed here, does not speak
        Gymnasium, fails to make the env, or makes one whose spaces are not the recorded ones
        (a worker flattening a Dict observation, say): its spec would then describe other data.
    """
    import importlib

    import gymnasium as gym

    from ldm_envs.manifest import Api
    from ldm_envs.plugins import get_library

    try:
        spec = get_library(library)
        declared = spec.env(env_id)
    except LDMError as exc:
        return None, f"{exc}"
    if spec.environment.api != Api.GYMNASIUM:
        return None, f"library {library!r} speaks {spec.environment.api.value}, not gymnasium"
    try:
        for module in spec.imports:
            importlib.import_module(module)
        kwargs = dict(declared.kwargs)
        if declared.max_episode_steps:
            kwargs["max_episode_steps"] = declared.max_episode_steps
        env = gym.make(declared.make_id, **kwargs)
        for target in declared.wrappers:
            module, _, attr = target.partition(":")
            wrapper: Any = importlib.import_module(module)
            for part in attr.split("."):
                wrapper = getattr(wrapper, part)
            env = wrapper(env)
    except Exception as exc:  # any failure to make it means no spec, with the reason
        return None, f"{env_id} cannot be made here ({type(exc).__name__}: {exc})"
    for name, recorded, made in (
        ("observation", observation_space, env.observation_space),
        ("action", action_space, env.action_space),
    ):
        if recorded.to_gymnasium() != made:
            env.close()
            return None, (
                f"{env_id} made here has {name} space {made}, the recorded data "
                f"{recorded.to_gymnasium()}"
            )
    if env.spec is None:
        env.close()
        return None, f"{env_id} made here has no spec"
    return env, ""


def _requirements(library: str) -> list[str]:
    """The manifest's pip requirements that are PEP 508 strings (Minari checks them on load)."""
    from packaging.requirements import InvalidRequirement, Requirement

    from ldm_envs.plugins import get_library

    valid = []
    for line in get_library(library).environment.requirements:
        with contextlib.suppress(InvalidRequirement):
            Requirement(line)
            valid.append(line)
    return valid


# -- writing ------------------------------------------------------------------------------------


def _import(name: str) -> Any:
    """Import minari or datasets, naming the extra that installs them when missing."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(
            f"{name} is not installed ({exc}); install the export extra: pip install '{EXTRA}'"
        ) from None


@contextlib.contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point Minari at `path` (`MINARI_DATASETS_PATH`, read at each call) for the block."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


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


def _write_minari(
    root: Path,
    out: Path,
    tmp: Path,
    group: _EnvGroup,
    actions: str,
    env_spec: str,
    say: Say,
) -> ExportedDataset:
    minari = _import("minari")
    from minari.data_collector.episode_buffer import EpisodeBuffer

    dataset_id = minari_dataset_id(group.library, group.env_id, actions)
    env, note = (None, "not asked for (--env-spec none)")
    if env_spec != "none":
        env, note = host_env(
            group.library, group.env_id, group.observation_space, group.action_space
        )
        if env is None and env_spec == "require":
            raise ExportError(f"no env spec for {group.library} {group.env_id}: {note}")
        if env is None:
            say(f"{dataset_id}: written without an env spec: {note}")
    # minari 0.5.3 (the last for Python 3.10) always JPEG-encodes images; 0.5.4 can store them raw
    lossless = "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters
    if not lossless and group.observation_space.is_image:
        say(
            f"{dataset_id}: minari {minari.__version__} stores images as JPEG (lossy); "
            "minari>=0.5.4 (Python 3.11+) keeps them exact"
        )
    metas: list[dict[str, Any]] = []
    steps = 0

    def buffers() -> Iterator[Any]:
        nonlocal steps
        for k, ep in enumerate(iter_episodes(root, group.shards, actions)):
            truncated = np.array(ep.truncated, dtype=bool)
            if not ep.complete:
                truncated[-1] = True
            steps += len(ep.reward)
            metas.append(
                {
                    "run_key": ep.run_key,
                    "candidate": ep.candidate,
                    "seed": ep.seed,
                    "part": ep.part,
                    "shard": ep.shard,
                    "shard_episode": ep.shard_episode,
                }
            )
            yield EpisodeBuffer(
                id=k,
                observations=np.concatenate([ep.obs, ep.obs[-1:]]),
                actions=np.asarray(ep.action),
                rewards=np.asarray(ep.reward),
                terminations=np.asarray(ep.terminated, dtype=bool),
                truncations=truncated,
            )

    try:
        with _minari_root(tmp), warnings.catch_warnings():
            # author, e-mail, code permalink, eval env: Minari warns for each one left out
            warnings.simplefilter("ignore", UserWarning)
            dataset = minari.create_dataset_from_buffers(
                dataset_id,
                [],
                env=env,
                observation_space=group.observation_space.to_gymnasium(),
                action_space=group.action_space.to_gymnasium(),
                algorithm_name=", ".join(sorted(set(group.shards["candidate"].to_list()))),
                description=_description(group, actions, "minari"),
                requirements=_requirements(group.library) if env is not None else None,
                data_format="arrow",
                **({"jpeg_encoding": False} if lossless else {}),
            )
            storage = dataset.storage
            # Minari's Arrow storage re-sums every file's size after each episode it writes,
            # quadratic in episodes; the size is summed once, at the end, instead.
            storage.__dict__["get_size"] = lambda: 0.0
            storage.update_episodes(buffers())
            if metas:
                storage.update_episode_metadata(metas, range(len(metas)))
            del storage.__dict__["get_size"]
            storage.update_metadata({"dataset_size": storage.get_size()})
            has_spec = "env_spec" in storage.metadata
    finally:
        if env is not None:
            env.close()
    if env is not None and not has_spec:  # Minari drops a spec it cannot serialize
        note = f"{group.env_id}'s spec (its kwargs or wrappers) is not JSON-serializable"
        if env_spec == "require":
            raise ExportError(f"no env spec for {group.library} {group.env_id}: {note}")
        say(f"{dataset_id}: written without an env spec: {note}")
    final = out / dataset_id
    final.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(tmp / dataset_id, final)
    from minari.namespace import create_namespace, list_local_namespaces

    namespace = dataset_id.rsplit("/", 1)[0]
    with _minari_root(out):  # `minari list` shows the namespace: give it its metadata file
        if namespace not in list_local_namespaces():
            create_namespace(namespace, description=f"ldm exports of {group.env_id}")
    return ExportedDataset(
        format="minari",
        library=group.library,
        env_id=group.env_id,
        actions=actions,
        dataset_id=dataset_id,
        path=str(final),
        runs=len(group.runs),
        shards=group.shards.height,
        episodes=len(metas),
        steps=steps,
        env_spec=has_spec,
        env_spec_note=None if has_spec else note,
    )


def _arrow_column(values: np.ndarray, shape: tuple[int, ...]) -> pa.Array:
    """`(n, *shape)` values as fixed-size lists nested to `shape` (a plain array for `()`)."""
    array = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(shape):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def _arrow_type(space: ShardSpace) -> pa.DataType:
    dtype, shape = space_layout(space)
    type_ = pa.from_numpy_dtype(dtype)
    for size in reversed(shape):
        type_ = pa.list_(pa.field("item", type_), size)
    return type_


def _hf_schema(group: _EnvGroup) -> pa.Schema:
    return pa.schema(
        [
            ("episode", pa.int64()),
            ("step", pa.int64()),
            ("obs", _arrow_type(group.observation_space)),
            ("action", _arrow_type(group.action_space)),
            ("reward", pa.float32()),
            ("terminated", pa.bool_()),
            ("truncated", pa.bool_()),
            ("run_key", pa.string()),
            ("candidate", pa.string()),
            ("seed", pa.int64()),
            ("part", pa.int64()),
            ("shard_episode", pa.int64()),
        ]
    )


def _write_hf(root: Path, out: Path, tmp: Path, group: _EnvGroup, actions: str) -> ExportedDataset:
    datasets = _import("datasets")
    column = _SHARD_COLUMN[actions]
    schema = _hf_schema(group)
    _, obs_shape = space_layout(group.observation_space)
    _, act_shape = space_layout(group.action_space)
    stream = tmp / "rows.arrow"
    episodes = steps = 0
    # rows are streamed shard by shard, record batch by record batch, into one Arrow stream
    # that `datasets` memory-maps: memory stays one record batch whatever the env's size
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for row in group.shards.iter_rows(named=True):
            with ShardReader(root / row["shard_path"]) as reader:
                eps = reader.episodes()
                starts = eps["start"].to_numpy()
                ids = eps["episode"].to_numpy()
                for first, cols in reader.batches():
                    n = len(cols["reward"])
                    k = np.searchsorted(starts, np.arange(first, first + n), side="right") - 1
                    batch = pa.RecordBatch.from_arrays(
                        [
                            pa.array(episodes + k),
                            pa.array(cols["step"]),
                            _arrow_column(cols["obs"], obs_shape),
                            _arrow_column(cols[column], act_shape),
                            pa.array(cols["reward"]),
                            pa.array(cols["terminated"]),
                            pa.array(cols["truncated"]),
                            pa.array([row["run_key"]] * n, pa.string()),
                            pa.array([row["candidate"]] * n, pa.string()),
                            pa.array(np.full(n, row["seed"], np.int64)),
                            pa.array(np.full(n, row["part"], np.int64)),
                            pa.array(ids[k]),
                        ],
                        schema=schema,
                    )
                    writer.write_batch(batch)
                    steps += n
                episodes += eps.height
    description = {
        "description": _description(group, actions, "hf"),
        "library": group.library,
        "env_id": group.env_id,
        "actions": actions,
        "observation_space": group.observation_space.model_dump(mode="json"),
        "action_space": group.action_space.model_dump(mode="json"),
        "runs": group.runs,
    }
    info = datasets.DatasetInfo(description=json.dumps(description))
    dataset = datasets.Dataset.from_file(str(stream), info=info)
    folder = tmp / "dataset"
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # the CLI prints its own table; a bar per env is noise
    try:
        dataset.save_to_disk(str(folder))
    finally:
        if not quiet:
            enable_progress_bars()
    del dataset  # release the memory map of the stream before it is removed with tmp
    final = hf_path(out, group.library, group.env_id, actions)
    final.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(folder, final)
    return ExportedDataset(
        format="hf",
        library=group.library,
        env_id=group.env_id,
        actions=actions,
        path=str(final),
        runs=len(group.runs),
        shards=group.shards.height,
        episodes=episodes,
        steps=steps,
    )


def export(
    root: Path,
    out: Path,
    *,
    format: str,
    actions: str = "relabeled",
    libraries: Sequence[str] | None = None,
    env_ids: Sequence[str] | None = None,
    env_spec: str = "auto",
    overwrite: bool = False,
    say: Say | None = None,
) -> list[ExportedDataset]:
    """Write the kept runs under `root` as one dataset per (library, env) under `out`.

    See the module docstring for the layouts. Everything is checked before anything is written:
    the options, the kept shards, that the targets are free (or `overwrite`), and the extra.

    Args:
        root: the data root (its index says which shards are kept).
        out: where the datasets go (for Minari: the `MINARI_DATASETS_PATH` to load them with).
        format: `minari` or `hf`.
        actions: `relabeled` (the default) or `taken`.
        libraries: only these libraries (default: all).
        env_ids: only these envs (default: all); each must have a kept run.
        env_spec: `auto`, `require` or `none` (Minari only, see the module docstring).
        overwrite: replace datasets already under `out`.
        say: where warnings go (default: `warnings.warn`).

    Raises:
        BadInputError: an unknown format, actions or env spec mode.
        FileNotFoundError: the data root has no index.
        ExportError: nothing kept, a target already there, the extra missing, or (with
            `env_spec="require"`) an env whose spec cannot be had here.
        CorruptShardError: a kept shard fails its checks (named).
    """
    require_choice("--format", format, FORMATS, what="format")
    require_choice("--actions", actions, ACTIONS, what="actions")
    require_choice("--env-spec", env_spec, ENV_SPEC_MODES, what="env spec mode")
    root, out = Path(root), Path(out)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        # both formats write `*.arrow` files, which the index build would take for shards
        raise BadInputError("--out", f"{out} is inside the data root {root}; export elsewhere")
    report = say or (lambda message: warnings.warn(message, stacklevel=3))
    kept = kept_shards(root, libraries=libraries, env_ids=env_ids, actions=actions)
    groups = _groups(root, kept)
    targets = [
        out / minari_dataset_id(g.library, g.env_id, actions)
        if format == "minari"
        else hf_path(out, g.library, g.env_id, actions)
        for g in groups
    ]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{len(existing)} dataset(s) already exported, e.g. {existing[0]}; "
            "pass --overwrite to replace them"
        )
    _import("minari" if format == "minari" else "datasets")
    if format == "minari" and env_spec == "require":
        for group in groups:  # fail before any dataset is written, not after some
            env, note = host_env(
                group.library, group.env_id, group.observation_space, group.action_space
            )
            if env is None:
                raise ExportError(f"no env spec for {group.library} {group.env_id}: {note}")
            env.close()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for group in groups:
        tmp = out / f".export.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            if format == "minari":
                written.append(_write_minari(root, out, tmp, group, actions, env_spec, report))
            else:
                written.append(_write_hf(root, out, tmp, group, actions))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return written


__all__ = [
    "ACTIONS",
    "ENV_SPEC_MODES",
    "FORMATS",
    "Episode",
    "ExportError",
    "ExportedDataset",
    "export",
    "hf_path",
    "host_env",
    "iter_episodes",
    "kept_shards",
    "minari_dataset_id",
]
