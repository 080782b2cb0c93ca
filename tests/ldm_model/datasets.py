"""Tiny synthetic datasets (shards + decisions + index) for the ldm-model tests.

`make_dataset(root)` writes one shard per run of each `EnvSpec`, relabels it with
`write_ref_actions`, writes its filter decision and publishes the index, so a test gets what
ldm-autorl would leave behind, in milliseconds. Other test modules (trainer, policy) import it:

    from tests.ldm_model.datasets import IMAGE, VECTOR_BOX, VECTOR_DISCRETE, make_dataset
    make_dataset(tmp_path, envs=(VECTOR_DISCRETE, VECTOR_BOX, IMAGE))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ldm_envs.dataset import (
    ShardMeta,
    ShardWriter,
    write_decision,
    write_index,
    write_ref_actions,
)
from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiBinarySpace, MultiDiscreteSpace
from ldm_model.batch import Batch
from ldm_model.data import WindowSampler
from ldm_model.tokenizer import IMAGE_SIZE, resize_images

SpaceModel = BoxSpace | DiscreteSpace | MultiDiscreteSpace | MultiBinarySpace


@dataclass(frozen=True)
class EnvSpec:
    """One env of a synthetic dataset: its spaces and one shard per entry of `runs`."""

    library: str
    env_id: str
    observation_space: SpaceModel
    action_space: SpaceModel
    #: rows of each run (one shard per run)
    runs: tuple[int, ...] = (300,)
    #: filter decision of each run (default: all kept)
    kept: tuple[bool, ...] | None = None
    #: episodes are cut every `episode_length` rows, alternately terminated and truncated
    episode_length: int = 37
    #: write the `ref_action` column (relabeling done)
    ref_action: bool = True


VECTOR_DISCRETE = EnvSpec(
    "toy",
    "VecDiscrete-v0",
    BoxSpace(shape=(4,), low=-math.inf, high=math.inf),
    DiscreteSpace(n=2),
)
VECTOR_BOX = EnvSpec(
    "toy",
    "VecBox-v0",
    BoxSpace(shape=(3,), low=-math.inf, high=math.inf),
    BoxSpace(shape=(1,), low=-1.0, high=1.0),
)
IMAGE = EnvSpec(
    "pixels",
    "Image-v0",
    BoxSpace(shape=(7, 7, 3), dtype="uint8", low=0, high=255),
    DiscreteSpace(n=3),
)
DEFAULT_ENVS = (VECTOR_DISCRETE, VECTOR_BOX)


def pixels(shape: tuple[int, int, int]) -> BoxSpace:
    """A uint8 image observation space."""
    return BoxSpace(shape=shape, dtype="uint8", low=0, high=255)


#: a vector env, 7x7x3 images in 30-row runs (padded windows), 5x5x1 images (both smaller than
#: 64x64x3: at stored size in batches) and 70x66x3 images (resized on the host)
MIXED_IMAGES = (
    VECTOR_DISCRETE,
    EnvSpec("pixels", "Image-v0", pixels((7, 7, 3)), DiscreteSpace(n=3), runs=(30,)),
    EnvSpec("pixels", "Gray-v0", pixels((5, 5, 1)), DiscreteSpace(n=2)),
    EnvSpec("pixels", "Big-v0", pixels((70, 66, 3)), DiscreteSpace(n=2)),
)


def sample_space(space: SpaceModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` values of `space` in the layout a shard stores them."""
    if isinstance(space, BoxSpace):
        if np.dtype(space.dtype).kind in "iub":
            low = np.maximum(space.low_array(), 0).astype(np.int64)
            high = np.minimum(space.high_array(), 255).astype(np.int64)
            return rng.integers(low, high + 1, (n, *space.shape)).astype(space.dtype)
        low = np.nan_to_num(space.low_array().astype(np.float64), neginf=-3.0)
        high = np.nan_to_num(space.high_array().astype(np.float64), posinf=3.0)
        return rng.uniform(low, high, (n, *space.shape)).astype(space.dtype)
    if isinstance(space, DiscreteSpace):
        return rng.integers(space.start, space.start + space.n, n)
    if isinstance(space, MultiDiscreteSpace):
        start = np.zeros(len(space.nvec), np.int64) if space.start is None else space.start
        return rng.integers(start, np.asarray(start) + space.nvec, (n, len(space.nvec)))
    return rng.integers(0, 2, (n, space.n)).astype(np.int8)


def episode_columns(n: int, episode_length: int) -> dict[str, np.ndarray]:
    """episode/step/terminated/truncated of `n` rows cut into episodes of `episode_length`.

    Complete episodes end alternately terminated and truncated; the last may be incomplete.
    """
    rows = np.arange(n)
    episode = rows // episode_length
    step = rows % episode_length
    last = step == episode_length - 1
    return {
        "episode": episode,
        "step": step,
        "terminated": last & (episode % 2 == 0),
        "truncated": last & (episode % 2 == 1),
    }


def write_run(
    path: Path,
    spec: EnvSpec,
    rows: int,
    *,
    seed: int,
    part: int = 0,
    kept: bool = True,
    batch_rows: int = 8192,
) -> Path:
    """One shard of `rows` random rows of `spec`'s spaces, relabeled and with a decision."""
    rng = np.random.default_rng(seed)
    meta = ShardMeta(
        library=spec.library,
        env_id=spec.env_id,
        candidate="ppo",
        seed=seed,
        run_key=f"{spec.library}/{spec.env_id}/ppo/{seed}",
        observation_space=spec.observation_space,
        action_space=spec.action_space,
        environment_ref="venv-test",
        part=part,
        created=1_700_000_000.0,
    )
    with ShardWriter(path, meta, batch_rows=batch_rows) as writer:
        writer.append(
            obs=sample_space(spec.observation_space, rows, rng),
            action=sample_space(spec.action_space, rows, rng),
            reward=rng.standard_normal(rows).astype(np.float32),
            **episode_columns(rows, spec.episode_length),
        )
    if spec.ref_action:
        write_ref_actions(path, sample_space(spec.action_space, rows, rng))
    write_decision(path, {"kept": kept, "reason": "kept" if kept else "no improvement"})
    return path


def make_dataset(
    root: Path,
    envs: Sequence[EnvSpec] = DEFAULT_ENVS,
    *,
    seed: int = 0,
    batch_rows: int = 8192,
) -> list[Path]:
    """Write every run of `envs` under `root/<library>/<env_id>/` and the index of `root`.

    Returns the shard paths in writing order. `batch_rows` small makes windows cross record
    batches.
    """
    root = Path(root)
    paths = []
    for e, spec in enumerate(envs):
        kept = spec.kept or (True,) * len(spec.runs)
        for r, (rows, keep) in enumerate(zip(spec.runs, kept, strict=True)):
            path = root / spec.library / spec.env_id / f"run-{r}.arrow"
            path.parent.mkdir(parents=True, exist_ok=True)
            run_seed = seed * 10_000 + e * 100 + r
            paths.append(
                write_run(path, spec, rows, seed=run_seed, kept=keep, batch_rows=batch_rows)
            )
    write_index(root)
    return paths


def host_resized(batch: Batch) -> Batch:
    """`batch` with its `image_groups` resized on the host into `image` (the reference path).

    `resize_images` (numpy) resizes every group's frames, padding included (zeros stay zeros);
    the result has no groups, and an `image` tensor when the batch has any image.
    """
    if not batch.image_groups:
        return batch
    b, t = batch.shape
    image = (
        batch.image.clone()
        if batch.image is not None
        else torch.zeros((b, t, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
    )
    for group in batch.image_groups:
        resized = resize_images(group.frames.cpu().numpy())
        image[group.windows.cpu()] = torch.from_numpy(resized).to(image.device)
    return replace(batch, image=image, image_groups=[])


def mixed_image_batch(root: Path, context: int = 64) -> Batch:
    """8 windows over `MIXED_IMAGES` (written under `root`), each image kind more than once.

    Windows: 0, 3, 6 5x5x1; 1, 5 7x7x3 (30 rows: padded past 30); 2, 7 vector; 4 70x66x3.
    """
    make_dataset(root, envs=MIXED_IMAGES)
    sampler = WindowSampler(root, context=context)
    run = {Path(p).parent.name: r for r, p in enumerate(sampler.run_paths)}
    envs = ("Gray-v0", "Image-v0", "VecDiscrete-v0", "Big-v0")
    order = [0, 1, 2, 0, 3, 1, 0, 2]
    starts = [0, 0, 10, 200, 5, 0, 100, 0]
    batch = sampler.build(np.array([run[envs[k]] for k in order]), np.array(starts))
    sampler.close()
    return batch
