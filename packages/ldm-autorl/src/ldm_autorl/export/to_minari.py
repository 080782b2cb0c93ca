"""Writing one env's kept episodes as a Minari dataset (Arrow data format)."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ldm_autorl.errors import ExportError
from ldm_autorl.export.envspec import _requirements, host_env
from ldm_autorl.export.source import (
    DATASET_VERSION,
    MINARI_NAMESPACE,
    ExportedDataset,
    Say,
    _description,
    _EnvGroup,
    _import,
    iter_episodes,
)
from ldm_envs.atomic import replace_dir


def minari_dataset_id(library: str, env_id: str, actions: str) -> str:
    """`ldm/<library>/<env>/<actions>-v0`, valid for Minari's id and namespace rules.

    Minari's namespaces allow letters, digits, `-`, `_` and `/` only, so other characters of
    the env id (`/` included, so that `ALE/Pong-v5` is one level) become `_`.
    """
    env = re.sub(r"[^-\w]", "_", env_id)
    lib = re.sub(r"[^-\w]", "_", library)
    return f"{MINARI_NAMESPACE}/{lib}/{env}/{actions}-v{DATASET_VERSION}"


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
