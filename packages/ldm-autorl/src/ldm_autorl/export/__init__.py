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

Modules: `source` (the kept shards and their episodes), `envspec` (making the env for its
spec), `to_minari` and `to_hf` (one writer per format); `export` itself checks everything
first and then writes each env's dataset aside and renames it in.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

from ldm_autorl.errors import ExportError
from ldm_autorl.export.envspec import host_env
from ldm_autorl.export.source import (
    ACTIONS,
    DATASET_VERSION,
    ENV_SPEC_MODES,
    EXTRA,
    FORMATS,
    MINARI_NAMESPACE,
    Episode,
    ExportedDataset,
    Say,
    ShardSpace,
    _groups,
    _import,
    iter_episodes,
    kept_shards,
)
from ldm_autorl.export.to_hf import _write_hf, hf_path
from ldm_autorl.export.to_minari import _write_minari, minari_dataset_id
from ldm_envs.atomic import tmp_sibling
from ldm_envs.errors import BadInputError
from ldm_envs.inputs import require_choice


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
        tmp = tmp_sibling(out / "export")
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
    "DATASET_VERSION",
    "ENV_SPEC_MODES",
    "EXTRA",
    "FORMATS",
    "MINARI_NAMESPACE",
    "Episode",
    "ExportError",
    "ExportedDataset",
    "Say",
    "ShardSpace",
    "export",
    "hf_path",
    "host_env",
    "iter_episodes",
    "kept_shards",
    "minari_dataset_id",
]
