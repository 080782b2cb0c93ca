"""`ldm-autorl export`: kept runs as Minari datasets and Hugging Face folders, read back.

The data root is a real one: A2C reference runs (`jobs.train_run`, recording and relabeling
on, the `inprocess` backend) on the toy library's CartPole-v1 (episodes that terminate, and
one run the filter dropped), ShortCartPole-v1 (10-step episodes, truncated) and Pendulum-v1
(Box actions, 200-step episodes the budget cuts), plus a shard written by the real writer for
Unmakeable-v0 (declared, but its kwargs make `gym.make` fail). Each export is loaded back with
`minari.load_dataset` / `datasets.load_from_disk` and compared, episode by episode, with the
shards: observations, actions (relabeled or taken), rewards, terminations and truncations.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from ldm_autorl import cli, jobs
from ldm_autorl.export import ExportError, export, hf_path, minari_dataset_id
from ldm_envs import tracking
from ldm_envs.dataset import (
    ShardMeta,
    ShardReader,
    ShardWriter,
    read_index,
    write_decision,
    write_index,
    write_ref_actions,
)
from ldm_envs.plugins import get_library
from ldm_envs.spaces import BoxSpace

datasets = pytest.importorskip("datasets")
minari = pytest.importorskip("minari")

runner = CliRunner()
LIB, CAND, BUDGET = "toy", "a2c-default", 200
#: (env, seed, kept by the filter)
RUNS = [
    ("CartPole-v1", 0, True),
    ("CartPole-v1", 1, False),
    ("ShortCartPole-v1", 0, True),
    ("Pendulum-v1", 0, True),
]
UNMAKEABLE = "Unmakeable-v0"
KEPT_ENVS = {"CartPole-v1", "ShortCartPole-v1", "Pendulum-v1", UNMAKEABLE}


def unmakeable_shard(root: Path) -> None:
    """A kept, relabeled shard of an env that cannot be made (real writer, CartPole's spaces)."""
    cartpole = get_library(LIB).env("CartPole-v1")
    key = f"reference/{LIB}/{UNMAKEABLE}/{CAND}/s0/b{BUDGET}"
    path = root / "shards" / LIB / UNMAKEABLE / "hand-written" / "part-0.arrow"
    meta = ShardMeta(
        library=LIB,
        env_id=UNMAKEABLE,
        candidate=CAND,
        seed=0,
        run_key=key,
        observation_space=cartpole.observation_space,
        action_space=cartpole.action_space,
        created=1_700_000_000.0,
    )
    rng = np.random.default_rng(0)
    n = 30
    step = np.arange(n) % 12
    with ShardWriter(path, meta) as writer:
        writer.append(
            obs=rng.standard_normal((n, 4)).astype(np.float32),
            action=rng.integers(0, 2, n),
            reward=np.ones(n, np.float32),
            terminated=step == 11,
            truncated=np.zeros(n, bool),
            episode=np.arange(n) // 12,
            step=step,
        )
    write_ref_actions(path, rng.integers(0, 2, n))
    write_decision(path, {"kept": True, "reason": "kept"})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("LDM_HOME", str(base / "home"))
        tracking.setup()
        data = base / "autorl"
        for env_id, seed, kept in RUNS:
            result = jobs.RunResult.model_validate(
                jobs.train_run(
                    stage="reference",
                    library=LIB,
                    env_id=env_id,
                    candidate=CAND,
                    seed=seed,
                    budget=BUDGET,
                    root=str(data),
                    record=True,
                    backend="inprocess",
                )
            )
            for shard in result.shards:
                write_decision(data / shard, {"kept": kept, "reason": "kept" if kept else "x"})
        unmakeable_shard(data)
        write_index(data)
        yield data


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing under the user's home: Minari's and Hugging Face's folders point at tmp_path."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari-default"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "err", Console(width=250, stderr=True))


def shard_episodes(root: Path, env_id: str, column: str) -> dict[tuple[str, int], dict]:
    """Every episode of the env's kept shards, keyed by (shard path, shard episode)."""
    runs, _ = read_index(root)
    rows = runs.filter((runs["env_id"] == env_id) & runs["kept"])
    found = {}
    for shard in rows["shard_path"].to_list():
        with ShardReader(root / shard) as reader:
            for ep, start, length in reader.episodes().select("episode", "start", "length").rows():
                r = reader.rows(start, start + length)
                found[(shard, ep)] = {
                    "obs": np.array(r["obs"]),
                    "action": np.array(r[column]),
                    "reward": np.array(r["reward"]),
                    "terminated": np.array(r["terminated"]),
                    "truncated": np.array(r["truncated"]),
                    "step": np.array(r["step"]),
                }
    return found


def test_the_data_root_has_every_ending_and_a_dropped_run(root: Path) -> None:
    runs, episodes = read_index(root)
    assert set(runs.filter(runs["kept"])["env_id"].to_list()) == KEPT_ENVS
    assert runs.filter(~runs["kept"])["seed"].unique().to_list() == [1]
    assert runs["has_ref_action"].all()
    assert episodes["terminated"].any()
    assert (episodes["complete"] & ~episodes["terminated"]).any()  # truncated ones
    assert (~episodes["complete"]).any()  # cut by the run's end


@pytest.mark.parametrize("actions", ["relabeled", "taken"])
# the spec carries the toy manifest's pin (gymnasium==1.2.2, its venv's), not the host's version
@pytest.mark.filterwarnings("ignore:Installed gymnasium version")
def test_minari_episodes_match_the_shards(root: Path, tmp_path: Path, actions: str) -> None:
    out = tmp_path / "minari"
    args = ["export", "--format", "minari", "-o", str(out), "--dataset", str(root)]
    result = runner.invoke(cli.app, [*args, "--actions", actions])
    assert result.exit_code == 0, result.output
    # the env that cannot be made is exported without a spec, with a warning naming why
    assert f"{minari_dataset_id(LIB, UNMAKEABLE, actions)}: written without an env spec" in (
        " ".join(result.output.split())
    )
    assert "no_such_argument" in result.output
    os.environ["MINARI_DATASETS_PATH"] = str(out)  # restored by the autouse fixture
    assert set(minari.list_local_datasets()) == {
        minari_dataset_id(LIB, env_id, actions) for env_id in KEPT_ENVS
    }
    column = "ref_action" if actions == "relabeled" else "action"
    for env_id in KEPT_ENVS:
        dataset = minari.load_dataset(minari_dataset_id(LIB, env_id, actions))
        expected = shard_episodes(root, env_id, column)
        assert dataset.total_episodes == len(expected)
        assert dataset.total_steps == sum(len(e["reward"]) for e in expected.values())
        metas = list(dataset.storage.get_episode_metadata(range(dataset.total_episodes)))
        seen = set()
        for episode, meta in zip(dataset.iterate_episodes(), metas, strict=True):
            key = (meta["shard"], meta["shard_episode"])
            assert key not in seen
            seen.add(key)
            want = expected[key]
            n = len(want["reward"])
            assert len(episode) == n == meta["total_steps"]
            # one more observation than actions: the last repeats the one before it
            np.testing.assert_array_equal(episode.observations[:-1], want["obs"])
            np.testing.assert_array_equal(episode.observations[-1], want["obs"][-1])
            np.testing.assert_array_equal(episode.actions, want["action"])
            np.testing.assert_array_equal(episode.rewards, want["reward"])
            np.testing.assert_array_equal(episode.terminations, want["terminated"])
            cut = not (want["terminated"][-1] or want["truncated"][-1])
            truncations = want["truncated"].copy()
            truncations[-1] |= cut  # an episode cut by its run's end ends truncated
            np.testing.assert_array_equal(episode.truncations, truncations)
            with ShardReader(root / meta["shard"]) as reader:
                assert meta["run_key"] == reader.meta.run_key
                assert meta["seed"] == reader.meta.seed == 0  # the dropped seed 1 is not there
        assert seen == set(expected)
        # summed once, at the end, not after each episode (the same sum Minari makes)
        assert dataset.storage.metadata["dataset_size"] == dataset.storage.get_size()
        assert dataset.observation_space == get_spaces(root, env_id)[0]
        assert dataset.action_space == get_spaces(root, env_id)[1]
        if env_id == UNMAKEABLE:
            assert dataset.env_spec is None
        else:
            env = dataset.recover_environment()
            declared = get_library(LIB).env(env_id)
            assert env.spec.id == declared.make_id
            assert env.spec.max_episode_steps == declared.max_episode_steps
            env.close()


def get_spaces(root: Path, env_id: str):
    runs, _ = read_index(root)
    shard = runs.filter(runs["env_id"] == env_id)["shard_path"][0]
    with ShardReader(root / shard) as reader:
        return reader.meta.observation_space.to_gymnasium(), reader.meta.action_space.to_gymnasium()


@pytest.mark.parametrize("actions", ["relabeled", "taken"])
def test_hf_rows_match_the_shards(root: Path, tmp_path: Path, actions: str) -> None:
    out = tmp_path / "hf"
    written = export(root, out, format="hf", actions=actions)
    assert {d.env_id for d in written} == KEPT_ENVS
    column = "ref_action" if actions == "relabeled" else "action"
    for env_id in KEPT_ENVS:
        folder = hf_path(out, LIB, env_id, actions)
        table = datasets.load_from_disk(str(folder)).with_format("numpy")
        info = json.loads(table.info.description)
        assert (info["library"], info["env_id"], info["actions"]) == (LIB, env_id, actions)
        rows = table[:]
        expected = shard_episodes(root, env_id, column)
        assert len(table) == sum(len(e["reward"]) for e in expected.values())
        run_keys = rows["run_key"]
        parts = rows["part"]
        seen = set()
        for number in np.unique(rows["episode"]):
            at = np.flatnonzero(rows["episode"] == number)
            assert np.array_equal(at, np.arange(at[0], at[-1] + 1))  # contiguous rows
            (run_key,) = set(run_keys[at].tolist())
            (part,) = set(parts[at].tolist())
            (shard_episode,) = set(rows["shard_episode"][at].tolist())
            key = (_shard_of(root, run_key, int(part)), int(shard_episode))
            seen.add(key)
            want = expected[key]
            np.testing.assert_array_equal(rows["obs"][at], want["obs"])
            np.testing.assert_array_equal(rows["action"][at], want["action"])
            np.testing.assert_array_equal(rows["reward"][at], want["reward"])
            np.testing.assert_array_equal(rows["terminated"][at], want["terminated"])
            np.testing.assert_array_equal(rows["truncated"][at], want["truncated"])
            np.testing.assert_array_equal(rows["step"][at], want["step"])
            assert set(rows["seed"][at].tolist()) == {0}
            assert set(rows["candidate"][at].tolist()) == {CAND}
        assert seen == set(expected)
        assert len(seen) == len(np.unique(rows["episode"])) == rows["episode"].max() + 1


def _shard_of(root: Path, run_key: str, part: int) -> str:
    runs, _ = read_index(root)
    match = runs.filter((runs["run_key"] == run_key) & (runs["part"] == part))
    assert match.height == 1
    return match["shard_path"][0]


def test_one_env_with_its_spec_required(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    args = ["export", "--format", "minari", "-o", str(out), "--dataset", str(root)]
    result = runner.invoke(
        cli.app, [*args, "--env", "ShortCartPole-v1", "--env-spec", "require", "-l", LIB]
    )
    assert result.exit_code == 0, result.output
    os.environ["MINARI_DATASETS_PATH"] = str(out)
    assert list(minari.list_local_datasets()) == [
        minari_dataset_id(LIB, "ShortCartPole-v1", "relabeled")
    ]
    # a second export into the same folder is refused, then replaced on request
    again = runner.invoke(cli.app, [*args, "--env", "ShortCartPole-v1"])
    assert again.exit_code == 1
    assert "pass --overwrite" in " ".join(again.output.split())
    replaced = runner.invoke(cli.app, [*args, "--env", "ShortCartPole-v1", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert minari.load_dataset(minari_dataset_id(LIB, "ShortCartPole-v1", "relabeled"))


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return " ".join(result.output[result.output.index("error:") :].split())


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--format", "parquet"], 2, "error: --format: unknown format 'parquet'; choose one of"),
        (["--format", "hf", "--actions", "best"], 2, "error: --actions: unknown actions 'best'"),
        (["--format", "minari", "--env-spec", "x"], 2, "error: --env-spec: unknown env spec"),
        (["--format", "hf", "--env", "Nope-v0"], 1, "error: no kept runs to export under"),
        (["--format", "hf", "-l", "nope"], 1, "error: no kept runs to export under"),
        (
            ["--format", "minari", "--env-spec", "require"],  # checked before any is written
            1,
            f"error: no env spec for {LIB} {UNMAKEABLE}: {UNMAKEABLE} cannot be made here",
        ),
    ],
)
def test_errors_name_what_was_wrong(
    root: Path, tmp_path: Path, extra: list[str], code: int, message: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["export", "-o", str(out), "--dataset", str(root), *extra])
    assert result.exit_code == code, result.output
    assert error_line(result).startswith(message), result.output
    assert not any(out.glob("**/*.arrow"))  # nothing half-written


def test_no_kept_runs_and_no_index(tmp_path: Path) -> None:
    data = tmp_path / "autorl"
    unmakeable_shard(data)
    write_decision(
        next(data.glob("shards/**/*.arrow")), {"kept": False, "reason": "no improvement"}
    )
    write_index(data)
    with pytest.raises(ExportError, match="1 dropped by the filter, 0 not decided yet"):
        export(data, tmp_path / "out", format="hf")
    result = runner.invoke(
        cli.app, ["export", "--format", "hf", "-o", str(tmp_path / "o"), "--dataset", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert error_line(result).startswith("error: no index")


def test_out_inside_the_data_root_is_refused(root: Path) -> None:
    result = runner.invoke(
        cli.app, ["export", "--format", "hf", "-o", str(root / "export"), "--dataset", str(root)]
    )
    assert result.exit_code == 2
    assert "is inside the data root" in error_line(result)
    assert not (root / "export").exists()


def test_images_and_multi_discrete_actions_round_trip(tmp_path: Path) -> None:
    """Nested shapes survive both formats losslessly (Minari's JPEG encoding is off)."""
    from ldm_envs.spaces import MultiDiscreteSpace

    data = tmp_path / "autorl"
    image = BoxSpace(shape=(6, 5, 3), dtype="uint8", low=0, high=255)
    meta = ShardMeta(
        library="pixels",
        env_id="Pixels-v0",
        candidate=CAND,
        seed=3,
        run_key="reference/pixels/Pixels-v0/a2c-default/s3/b40",
        observation_space=image,
        action_space=MultiDiscreteSpace(nvec=[3, 4]),
        created=1_700_000_000.0,
    )
    rng = np.random.default_rng(1)
    n = 40
    step = np.arange(n) % 15
    obs = rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
    ref = rng.integers(0, 3, (n, 2))
    path = data / "shards" / "pixels" / "Pixels-v0" / "run" / "part-0.arrow"
    with ShardWriter(path, meta) as writer:
        writer.append(
            obs=obs,
            action=rng.integers(0, 3, (n, 2)),
            reward=rng.standard_normal(n).astype(np.float32),
            terminated=step == 14,
            truncated=np.zeros(n, bool),
            episode=np.arange(n) // 15,
            step=step,
        )
    write_ref_actions(path, ref)
    write_decision(path, {"kept": True, "reason": "kept"})
    write_index(data)
    said: list[str] = []
    (minari_out,) = export(data, tmp_path / "m", format="minari", say=said.append)
    assert not minari_out.env_spec
    assert any("unknown env library 'pixels'" in line for line in said)
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path / "m")
    dataset = minari.load_dataset(minari_out.dataset_id)
    episodes = list(dataset.iterate_episodes())
    assert [len(e) for e in episodes] == [15, 15, 10]
    if "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters:
        np.testing.assert_array_equal(np.concatenate([e.observations[:-1] for e in episodes]), obs)
    else:  # minari 0.5.3 (Python 3.10) always JPEG-encodes images, and the export says so
        assert any("stores images as JPEG (lossy)" in line for line in said)
    np.testing.assert_array_equal(np.concatenate([e.actions for e in episodes]), ref)
    assert episodes[-1].truncations[-1] and not episodes[-1].terminations[-1]
    (hf_out,) = export(data, tmp_path / "h", format="hf")
    table = datasets.load_from_disk(hf_out.path)
    # stored as uint8 (the numpy format hands every integer column out as int64)
    assert table.features["obs"] == datasets.List(
        datasets.List(datasets.List(datasets.Value("uint8"), length=3), length=5), length=6
    )
    rows = table.with_format("numpy")[:]
    assert rows["obs"].shape == (n, 6, 5, 3)
    np.testing.assert_array_equal(rows["obs"], obs)
    np.testing.assert_array_equal(rows["action"], ref)
    np.testing.assert_array_equal(rows["episode"], np.arange(n) // 15)


def test_kept_shards_without_relabeled_actions(tmp_path: Path) -> None:
    data = tmp_path / "autorl"
    unmakeable_shard(data)
    path = next(data.glob("shards/**/*.arrow"))
    with ShardReader(path) as reader:  # the same rows, written again without ref_action
        rows = {name: np.array(reader.column(name)) for name in reader.columns}
        meta = reader.meta
    with ShardWriter(path, meta) as writer:
        writer.append(**{name: rows[name] for name in rows if name != "ref_action"})
    write_index(data)
    with pytest.raises(ExportError, match=r"without relabeled actions: .*--actions taken"):
        export(data, tmp_path / "out", format="hf")
    (written,) = export(data, tmp_path / "out", format="hf", actions="taken")
    table = datasets.load_from_disk(written.path).with_format("numpy")[:]
    np.testing.assert_array_equal(table["action"], rows["action"])
