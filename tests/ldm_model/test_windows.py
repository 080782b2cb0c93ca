import dataclasses
import math
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm_envs.dataset import ShardReader, write_index
from ldm_envs.spaces import BoxSpace, DiscreteSpace, MultiDiscreteSpace
from ldm_model.batch import Batch, ImageGroup
from ldm_model.data import WindowSampler, make_loader
from ldm_model.tokenizer import ACT_DIMS, OBS_DIMS, resize_images
from tests.ldm_model.datasets import (
    IMAGE,
    VECTOR_BOX,
    VECTOR_DISCRETE,
    EnvSpec,
    host_resized,
    make_dataset,
    mixed_image_batch,
    pixels,
    write_run,
)

T = 64
# obs with discrete starts, action Discrete(4, start=5)
DISCRETE_START = EnvSpec(
    "toy",
    "DiscreteStart-v0",
    MultiDiscreteSpace(nvec=[3, 4], start=[-1, 2]),
    DiscreteSpace(n=4, start=5),
    runs=(200,),
)
ENVS = (
    # 300 rows kept, 200 dropped, 50 kept (shorter than the context: padded)
    dataclasses.replace(VECTOR_DISCRETE, runs=(300, 200, 50), kept=(True, False, True)),
    dataclasses.replace(VECTOR_BOX, runs=(400,)),
    dataclasses.replace(IMAGE, runs=(120,)),
    DISCRETE_START,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("windows")
    # small record batches: windows cross them
    make_dataset(root, envs=ENVS, batch_rows=64)
    return root


@pytest.fixture(scope="module")
def sampler(root) -> WindowSampler:
    return WindowSampler(root, context=T)


def expected_window(sampler: WindowSampler, run: int, start: int) -> dict[str, np.ndarray]:
    """The window built the slow way: whole columns, one row at a time."""
    reader = ShardReader(sampler.root / sampler.run_paths[run])
    codec = sampler.codec(int(sampler.run_envs[run]))
    obs = reader.column("obs")
    action = reader.column("action")
    ref = reader.column("ref_action")
    reward = reader.column("reward")
    done = reader.column("terminated") | reader.column("truncated")
    n = min(T, reader.num_rows - start)
    out = {
        "obs": np.zeros((T, OBS_DIMS), np.float32),
        "target": np.zeros((T, ACT_DIMS), np.float32),
        "prev_action": np.zeros((T, ACT_DIMS), np.float32),
        "prev_reward": np.zeros(T, np.float32),
        "prev_done": np.zeros(T, bool),
        "prev_valid": np.zeros(T, bool),
        "loss_mask": np.zeros(T, bool),
        "image": np.zeros((T, 64, 64, 3), np.uint8),
    }
    for p in range(n):
        row = start + p
        out["obs"][p] = codec.flat_obs(obs[row : row + 1])[0]
        out["target"][p] = codec.flat_action(ref[row : row + 1])[0]
        out["loss_mask"][p] = True
        if codec.image_shape is not None:
            out["image"][p] = resize_images(obs[row])
        if row > 0:
            out["prev_action"][p] = codec.flat_action(action[row - 1 : row])[0]
            out["prev_reward"][p] = reward[row - 1]
            out["prev_done"][p] = done[row - 1]
            out["prev_valid"][p] = True
    reader.close()
    return out


def assert_window(batch: Batch, i: int, expected: dict[str, np.ndarray]) -> None:
    batch = host_resized(batch)
    for name, want in expected.items():
        got = getattr(batch, name)
        if name == "image" and got is None:
            assert not want.any()
            continue
        np.testing.assert_array_equal(got[i].numpy(), want, err_msg=name)


def groups_by_shape(batch: Batch) -> dict[tuple[int, ...], ImageGroup]:
    groups = {tuple(g.frames.shape[2:]): g for g in batch.image_groups}
    assert len(groups) == len(batch.image_groups), "one group per shape"
    return groups


def assert_batches_equal(a: Batch, b: Batch) -> None:
    for field in dataclasses.fields(Batch):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name == "image_groups":
            ga, gb = groups_by_shape(a), groups_by_shape(b)
            assert ga.keys() == gb.keys(), field.name
            for shape, g in ga.items():
                assert torch.equal(g.windows, gb[shape].windows), shape
                assert torch.equal(g.frames, gb[shape].frames), shape
                assert g.windows.dtype == torch.int64 and g.frames.dtype == torch.uint8
        elif x is None or y is None:
            assert x is None and y is None, field.name
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), field.name


def concat(batches: list[Batch]) -> Batch:
    out = {}
    for field in dataclasses.fields(Batch):
        if field.name == "image_groups":
            continue
        values = [getattr(b, field.name) for b in batches]
        out[field.name] = None if values[0] is None else torch.cat(values)
    # the groups of each shape, windows shifted by the rows of the batches before
    parts: dict[tuple[int, ...], list[ImageGroup]] = {}
    offset = 0
    for b in batches:
        for g in b.image_groups:
            parts.setdefault(tuple(g.frames.shape[2:]), []).append(
                ImageGroup(g.windows + offset, g.frames)
            )
        offset += b.shape[0]
    out["image_groups"] = [
        ImageGroup(torch.cat([g.windows for g in gs]), torch.cat([g.frames for g in gs]))
        for gs in parts.values()
    ]
    return Batch(**out)


def run_of(sampler: WindowSampler, env_id: str, rows: int | None = None) -> int:
    for run, path in enumerate(sampler.run_paths):
        if f"/{env_id}/" in f"/{path}" and (rows is None or sampler._rows[run] == rows):
            return run
    raise AssertionError(f"no run of {env_id}")


# -- content ----------------------------------------------------------------------------------


def test_sampled_windows_equal_the_shard_rows(sampler):
    batch = sampler.sample(0, 32)
    drawn = sampler.draw(0, 32)
    assert batch.shape == (32, T)
    for i, (run, start) in enumerate(zip(drawn.runs, drawn.starts, strict=True)):
        assert_window(batch, i, expected_window(sampler, int(run), int(start)))
        assert int(batch.env_index[i]) == sampler.run_envs[run]
        codec = sampler.codec(int(batch.env_index[i]))
        for name in ("obs_mask", "obs_discrete", "act_mask", "act_discrete", "act_low"):
            np.testing.assert_array_equal(batch_table(batch, name, i), getattr(codec, name))
        assert bool(batch.has_image[i]) == (codec.image_shape is not None)


def batch_table(batch: Batch, name: str, i: int) -> np.ndarray:
    return getattr(batch, name)[i].numpy()


def test_chosen_windows_first_last_and_across_record_batches(sampler):
    vec = run_of(sampler, "VecDiscrete-v0", 300)
    box = run_of(sampler, "VecBox-v0")
    short = run_of(sampler, "VecDiscrete-v0", 50)
    cases = [(vec, 0), (vec, 300 - T), (vec, 60), (vec, 127), (box, 128), (box, 400 - T)]
    cases += [(short, 0), (run_of(sampler, "Image-v0"), 30), (run_of(sampler, "Image-v0"), 0)]
    runs, starts = zip(*cases, strict=True)
    batch = sampler.build(np.array(runs), np.array(starts))
    for i, (run, start) in enumerate(cases):
        assert_window(batch, i, expected_window(sampler, run, start))
    # row 0 of a shard has no previous transition; any other start has one
    assert not batch.prev_valid[0, 0] and batch.prev_valid[0, 1:].all()
    assert batch.prev_valid[1].all() and batch.loss_mask[1].all()
    # dones come from the previous row: episodes of 37 rows end at rows 36, 73, ...
    assert batch.prev_done[0, 37] and batch.prev_done[0].sum() == 1


def test_short_shard_is_padded_and_masked(sampler):
    short = run_of(sampler, "VecDiscrete-v0", 50)
    batch = sampler.build(np.array([short]), np.array([0]))
    assert batch.loss_mask[0, :50].all() and not batch.loss_mask[0, 50:].any()
    assert batch.prev_valid[0, 1:50].all() and not batch.prev_valid[0, 50:].any()
    for name in ("obs", "target", "prev_action", "prev_reward", "prev_done"):
        assert not getattr(batch, name)[0, 50:].any(), name
    # the draw of a short shard always starts at row 0
    drawn = sampler.draw(1, 4000)
    is_short = drawn.runs == short
    assert is_short.any() and (drawn.starts[is_short] == 0).all()
    rows = sampler._rows[drawn.runs]
    assert (drawn.starts[~is_short] + T <= rows[~is_short]).all()


def test_discrete_starts_are_removed(sampler):
    run = run_of(sampler, "DiscreteStart-v0")
    batch = sampler.build(np.array([run]), np.array([10]))
    reader = ShardReader(sampler.root / sampler.run_paths[run])
    obs = reader.column("obs")[10 : 10 + T]
    ref = reader.column("ref_action")[10 : 10 + T]
    np.testing.assert_array_equal(batch.obs[0, :, :2].numpy(), obs - np.array([-1, 2]))
    np.testing.assert_array_equal(batch.target[0, :, 0].numpy(), ref - 5)
    assert batch.target[0, :, 0].min() >= 0 and batch.target[0, :, 0].max() <= 3
    assert batch.obs_discrete[0, :2].all() and not batch.obs_discrete[0, 2:].any()
    assert batch.act_discrete[0, 0] and batch.act_high[0, 0] == 3


def test_small_images_keep_their_stored_size(sampler):
    run = run_of(sampler, "Image-v0")
    vec = run_of(sampler, "VecBox-v0")
    batch = sampler.build(np.array([vec, run, run]), np.array([0, 5, 80]))
    obs = ShardReader(sampler.root / sampler.run_paths[run]).column("obs")
    # 7x7x3 travels as stored (the model resizes it): no 64x64x3 tensor
    assert batch.image is None and len(batch.image_groups) == 1
    (group,) = batch.image_groups
    assert group.windows.tolist() == [1, 2] and group.frames.shape == (2, T, 7, 7, 3)
    np.testing.assert_array_equal(group.frames[0].numpy(), obs[5 : 5 + T])
    # the second window is 40 rows long: zero images past its end
    np.testing.assert_array_equal(group.frames[1, :40].numpy(), obs[80:120])
    assert not group.frames[1, 40:].any()
    assert batch.has_image.tolist() == [False, True, True] and not batch.obs[1:].any()
    resized = host_resized(batch).image
    np.testing.assert_array_equal(resized[1].numpy(), resize_images(obs[5 : 5 + T]))
    assert not resized[0].any()
    # no image in the batch: neither
    vector = sampler.build(np.array([vec]), np.array([0]))
    assert vector.image is None and vector.image_groups == []


# -- drawing ----------------------------------------------------------------------------------


def frequencies(sampler: WindowSampler, n: int = 40_000) -> dict[str, float]:
    drawn = sampler.draw(0, n)
    counts = np.bincount(sampler.run_envs[drawn.runs], minlength=sampler.envs.height)
    return dict(zip(sampler.envs["env_id"].to_list(), counts / n, strict=True))


def test_weightings(root):
    rows = {"VecDiscrete-v0": 350, "VecBox-v0": 400, "Image-v0": 120, "DiscreteStart-v0": 200}
    total = sum(rows.values())
    by_env = frequencies(WindowSampler(root, context=T, weighting="env"))
    by_rows = frequencies(WindowSampler(root, context=T, weighting="transitions"))
    by_lib = frequencies(WindowSampler(root, context=T, weighting="library"))
    for env, share in rows.items():
        assert by_env[env] == pytest.approx(1 / 4, abs=0.015), env
        assert by_rows[env] == pytest.approx(share / total, abs=0.015), env
        # two libraries: pixels holds Image-v0 alone, toy the three others
        want = 1 / 2 if env == "Image-v0" else 1 / 6
        assert by_lib[env] == pytest.approx(want, abs=0.015), env
    # within an env, runs by rows: 300 vs 50
    sampler = WindowSampler(root, context=T)
    drawn = sampler.draw(0, 40_000)
    long, short = run_of(sampler, "VecDiscrete-v0", 300), run_of(sampler, "VecDiscrete-v0", 50)
    n_long, n_short = (drawn.runs == long).sum(), (drawn.runs == short).sum()
    assert n_long / (n_long + n_short) == pytest.approx(300 / 350, abs=0.02)
    weights = dict(zip(sampler.envs["env_id"], sampler.envs["weight"], strict=True))
    assert weights == pytest.approx(dict.fromkeys(rows, 0.25))
    assert sampler.envs["transitions"].sum() == total


def test_starts_are_uniform(sampler):
    run = run_of(sampler, "VecBox-v0")
    drawn = sampler.draw(3, 50_000)
    starts = drawn.starts[drawn.runs == run]
    assert starts.min() == 0 and starts.max() == 400 - T
    hist = np.bincount(starts, minlength=400 - T + 1)
    assert hist.std() / hist.mean() < 0.3


def test_dropped_runs_are_never_sampled(root, sampler):
    assert len(sampler.run_paths) == 5
    assert "toy/VecDiscrete-v0/run-1.arrow" not in sampler.run_paths
    drawn = sampler.draw(0, 10_000)
    assert set(np.unique(drawn.runs)) == set(range(5))
    assert sampler.skipped == []


def test_rank_shares_concatenate_to_the_global_batch(sampler):
    whole = sampler.sample(7, 8)
    for world in (2, 4, 8):
        parts = [sampler.sample(7, 8, rank=r, world=world) for r in range(world)]
        assert_batches_equal(concat(parts), whole)
    with pytest.raises(ValueError, match="divide"):
        sampler.sample(7, 6, rank=0, world=4)
    with pytest.raises(ValueError, match="rank"):
        sampler.sample(7, 8, rank=4, world=4)


@pytest.mark.parametrize("shape", [(7, 7, 3), (64, 64, 3)])
def test_image_tensor_on_every_rank_when_any_window_is_resized_on_the_host(tmp_path, shape):
    spec = dataclasses.replace(IMAGE, observation_space=pixels(shape))
    make_dataset(tmp_path, envs=(VECTOR_DISCRETE, spec))
    sampler = WindowSampler(tmp_path, context=8)
    image_run = run_of(sampler, "Image-v0")
    step = next(
        s for s in range(1000) if (sampler.draw(s, 2).runs == image_run).tolist() == [True, False]
    )
    mine = sampler.sample(step, 2, rank=0, world=2)
    other = sampler.sample(step, 2, rank=1, world=2)
    assert mine.has_image.tolist() == [True] and not other.has_image.any()
    assert other.image_groups == []
    if shape == (64, 64, 3):  # resized (copied) on the host: a zero tensor on the other rank
        assert mine.image is not None and mine.image_groups == []
        assert other.image is not None and not other.image.any()
    else:  # at stored size: only on the rank that has the window
        assert mine.image is None and len(mine.image_groups) == 1
        assert other.image is None


def test_determinism(root, sampler):
    other = WindowSampler(root, context=T)
    assert_batches_equal(other.sample(5, 16), sampler.sample(5, 16))
    assert not torch.equal(sampler.sample(6, 16).obs, sampler.sample(5, 16).obs)
    reseeded = WindowSampler(root, context=T, seed=1)
    assert not torch.equal(reseeded.sample(5, 16).obs, sampler.sample(5, 16).obs)


def test_lru_of_open_shards(root, sampler):
    small = WindowSampler(root, context=T, max_open_shards=1)
    assert_batches_equal(small.sample(2, 16), sampler.sample(2, 16))
    assert len(small._open) == 1


def test_pickles_without_open_shards(root):
    sampler = WindowSampler(root, context=T)
    before = len(pickle.dumps(sampler))
    batch = sampler.sample(0, 16)
    data = pickle.dumps(sampler)
    assert len(data) == before < 100_000
    assert_batches_equal(pickle.loads(data).sample(0, 16), batch)


# -- selection --------------------------------------------------------------------------------


def test_filters_and_empty_selection(root):
    only = WindowSampler(root, context=T, libraries=["pixels"])
    assert only.envs["env_id"].to_list() == ["Image-v0"]
    only = WindowSampler(root, context=T, env_ids=["VecBox-v0", "Image-v0"])
    assert sorted(only.envs["env_id"]) == ["Image-v0", "VecBox-v0"]
    with pytest.raises(ValueError, match=r"no run to sample under .*windows.*pixels"):
        WindowSampler(root, context=T, libraries=["pixels"], env_ids=["VecBox-v0"])
    with pytest.raises(ValueError, match=r"unknown library nope.*known: pixels, toy"):
        WindowSampler(root, context=T, libraries=["nope"])
    with pytest.raises(ValueError, match="weighting"):
        WindowSampler(root, context=T, weighting="uniform")  # type: ignore[arg-type]


def test_refused_spaces_are_skipped_and_named(tmp_path):
    wide = EnvSpec("toy", "Wide-v0", BoxSpace(shape=(200,), low=-1.0, high=1.0), DiscreteSpace(n=2))
    no_ref = dataclasses.replace(VECTOR_BOX, env_id="NoRef-v0", ref_action=False)
    with warnings.catch_warnings(record=True):
        make_dataset(tmp_path, envs=(VECTOR_DISCRETE, wide, no_ref))
    # a second run of VecDiscrete-v0 whose action space differs from the first's
    odd = dataclasses.replace(VECTOR_DISCRETE, action_space=DiscreteSpace(n=3))
    write_run(tmp_path / "toy/VecDiscrete-v0/run-9.arrow", odd, 50, seed=9)
    write_index(tmp_path)
    with pytest.warns(UserWarning) as record:
        sampler = WindowSampler(tmp_path, context=8)
    messages = "\n".join(str(w.message) for w in record)
    assert re.search(r"skipping 1 shard\(s\), .*Wide-v0/run-0.arrow: .*200 dims", messages)
    assert re.search(r"VecDiscrete-v0/run-9.arrow: its spaces differ .*run-0.arrow", messages)
    assert sorted(path for path, _ in sampler.skipped) == [
        "toy/VecDiscrete-v0/run-9.arrow",
        "toy/Wide-v0/run-0.arrow",
    ]
    assert "128" in dict(sampler.skipped)["toy/Wide-v0/run-0.arrow"]
    assert sampler.envs["env_id"].to_list() == ["VecDiscrete-v0"]
    with pytest.raises(ValueError, match="skipped"), warnings.catch_warnings(record=True):
        WindowSampler(tmp_path, context=8, env_ids=["Wide-v0"])


def test_stale_index_is_named(tmp_path):
    make_dataset(tmp_path, envs=(VECTOR_DISCRETE,))
    sampler = WindowSampler(tmp_path, context=8)
    path = tmp_path / sampler.run_paths[0]
    write_run(path, VECTOR_DISCRETE, 120, seed=3)  # rewritten behind the index's back
    with pytest.raises(RuntimeError, match=r"run-0.arrow has 120 rows .* says 300.*stale"):
        sampler.sample(0, 2)


# -- loader -----------------------------------------------------------------------------------


def test_loader_with_workers_equals_direct_sampling(sampler):
    loader = make_loader(sampler, batch_size=4, start_step=0, steps=6, num_workers=2)
    got = list(loader)
    assert len(got) == 6
    for step, batch in enumerate(got):
        assert_batches_equal(batch, sampler.sample(step, 4))


def test_resume_gives_the_uninterrupted_batches(sampler):
    full = list(make_loader(sampler, batch_size=4, start_step=0, steps=6, rank=1, world=2))
    resumed = list(make_loader(sampler, batch_size=4, start_step=3, steps=3, rank=1, world=2))
    assert len(resumed) == 3
    for a, b in zip(full[3:], resumed, strict=True):
        assert_batches_equal(a, b)
    assert full[0].shape == (2, T)


def test_windows_cover_short_context(root):
    sampler = WindowSampler(root, context=1)
    batch = sampler.sample(0, 64)
    assert batch.shape == (64, 1) and batch.loss_mask.all()
    drawn = sampler.draw(0, 64)
    np.testing.assert_array_equal(batch.prev_valid[:, 0].numpy(), drawn.starts > 0)
    assert math.isfinite(float(batch.obs.sum()))


@pytest.mark.parametrize("shape", [(9, 5, 1), (64, 64, 3), (10, 70, 4), (3, 3, 2)])
def test_image_shapes_match_resize_images(tmp_path, shape):
    spec = EnvSpec(
        "px",
        "Px-v0",
        BoxSpace(shape=shape, dtype="uint8", low=0, high=255),
        DiscreteSpace(n=2),
        runs=(40,),
    )
    make_dataset(tmp_path, envs=(spec,), batch_rows=16)
    sampler = WindowSampler(tmp_path, context=24)
    batch = sampler.build(np.array([0, 0]), np.array([0, 10]))
    obs = ShardReader(tmp_path / sampler.run_paths[0]).column("obs")
    # fewer bytes than 64x64x3: at stored size, resized by the model; others on the host
    assert bool(batch.image_groups) == (math.prod(shape) < 64 * 64 * 3)
    assert (batch.image is None) == bool(batch.image_groups)
    image = host_resized(batch).image
    np.testing.assert_array_equal(image[0].numpy(), resize_images(obs[:24]))
    np.testing.assert_array_equal(image[1].numpy(), resize_images(obs[10:34]))
    assert batch.has_image.all() and not batch.obs.any()


def test_compact_packing_gives_the_same_batches(tmp_path):
    big = EnvSpec(
        "px",
        "Big-v0",
        BoxSpace(shape=(70, 66, 3), dtype="uint8", low=0, high=255),
        DiscreteSpace(n=2),
        runs=(30,),
    )
    make_dataset(tmp_path, envs=(VECTOR_DISCRETE, VECTOR_BOX, IMAGE, big), batch_rows=16)
    sampler = WindowSampler(tmp_path, context=40)
    kinds = set()
    for step in range(12):
        for rank in range(2):
            packed = sampler.pack(step, 6, rank=rank, world=2)
            kinds.add((packed.image is not None, bool(packed.raw_images)))
            assert packed.obs.shape[-1] <= 4 and packed.target.shape[-1] == 1
            want = sampler.sample(step, 6, rank=rank, world=2)
            assert_batches_equal(packed.to_batch(), want)
    # raw small images, big images resized in place, both, and neither all happened
    assert len(kinds) >= 3


def test_select_to_and_pin_memory_carry_the_image_groups(tmp_path):
    batch = mixed_image_batch(tmp_path, context=T)
    shapes = {tuple(g.frames.shape[2:]): g.windows.tolist() for g in batch.image_groups}
    assert shapes == {(5, 5, 1): [0, 3, 6], (7, 7, 3): [1, 5]}
    assert batch.image is not None and batch.image[4].any() and not batch.image[0].any()
    whole = host_resized(batch)
    for rows in (slice(0, 3), slice(3, 8), slice(2, 4), slice(4, 5), slice(1, 8, 2)):
        part = batch.select(rows)
        assert part.shape == (len(range(8)[rows]), T)
        assert_batches_equal(host_resized(part), whole.select(rows))
        for g in part.image_groups:  # views of the slice's windows, renumbered from 0
            assert len(g.windows) and (g.windows >= 0).all() and (g.windows < part.shape[0]).all()
    assert batch.select(slice(4, 5)).image_groups == []  # only the 70x66x3 window
    moved = batch.to("meta")
    assert [g.windows.device.type for g in moved.image_groups] == ["meta", "meta"]
    assert [g.frames.device.type for g in moved.image_groups] == ["meta", "meta"]
    assert_batches_equal(batch.to("cpu"), batch)
    if torch.cuda.is_available():
        pinned = batch.pin_memory()
        assert all(g.frames.is_pinned() and g.windows.is_pinned() for g in pinned.image_groups)
        assert_batches_equal(pinned, batch)
        on_gpu = pinned.to("cuda", non_blocking=True)
        assert all(g.frames.is_cuda for g in on_gpu.image_groups)
        assert_batches_equal(on_gpu.to("cpu"), batch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for pinned memory")
def test_pinned_batches(sampler):
    packed = sampler.pack(4, 8)
    pinned = packed.to_batch(pin_memory=True)
    assert_batches_equal(pinned, sampler.sample(4, 8))
    assert pinned.obs.is_pinned() and pinned.target.is_pinned()
    assert pinned.image is None or pinned.image.is_pinned()
    assert all(g.frames.is_pinned() and g.windows.is_pinned() for g in pinned.image_groups)
    loader = make_loader(
        sampler, batch_size=8, start_step=4, steps=1, num_workers=1, pin_memory=True
    )
    (batch,) = list(loader)
    assert batch.obs.is_pinned()
    assert_batches_equal(batch, sampler.sample(4, 8))
