"""Nothing lost, nothing silent: deleted and corrupt shards of finished runs.

The data root is what `ldm-autorl train` leaves (result records naming their shard parts,
relabeled shards from the real writer, decisions, the index), written directly so that no
training runs; then a shard is deleted or has a bit flipped on disk.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from ldm_autorl import cli, layout, pipeline
from ldm_autorl.candidates import registry as candidate_registry
from ldm_autorl.jobs import RunResult
from ldm_envs.dataset import (
    QUARANTINE_DIR,
    ShardMeta,
    ShardReader,
    ShardWriter,
    decision_path,
    quarantine_reason,
    read_index,
    write_decision,
    write_index,
    write_ref_actions,
)
from ldm_envs.manifest import atomic_write_text
from ldm_envs.plugins import get_library
from ldm_envs.spaces import BoxSpace, DiscreteSpace

runner = CliRunner()
LIB, CAND, SEED, BUDGET, ROWS = "toy", "a2c-default", 0, 100, 50
ENVS = ("CartPole-v1", "ShortCartPole-v1", "Pendulum-v1")


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "err", Console(width=250, stderr=True))
    yield


def key(env_id: str) -> str:
    return layout.run_key("reference", LIB, env_id, CAND, SEED, BUDGET)


def record_path(root: Path, env_id: str) -> Path:
    return layout.result_path(root, "reference", LIB, env_id, CAND, SEED, BUDGET)


def part(root: Path, env_id: str, k: int) -> Path:
    return layout.shard_dir(root, LIB, env_id, CAND, SEED, BUDGET) / f"part-{k}.arrow"


def finished_run(root: Path, env_id: str, mlflow_run_id: str = "no-mlflow") -> None:
    """Two relabeled, decided shard parts and the result record, as `train_run` leaves them."""
    rng = np.random.default_rng(len(env_id))
    obs = BoxSpace(shape=(4,), low=-math.inf, high=math.inf)
    shards = []
    for k in range(2):
        path = part(root, env_id, k)
        meta = ShardMeta(
            library=LIB,
            env_id=env_id,
            candidate=CAND,
            seed=SEED,
            run_key=key(env_id),
            mlflow_run_id=mlflow_run_id,
            observation_space=obs,
            action_space=DiscreteSpace(n=2),
            part=k,
            created=1_700_000_000.0,
        )
        step = np.arange(ROWS) % 10
        with ShardWriter(path, meta) as writer:
            writer.append(
                obs=rng.standard_normal((ROWS, 4)).astype(np.float32),
                action=rng.integers(0, 2, ROWS),
                reward=np.ones(ROWS, np.float32),
                terminated=step == 9,
                truncated=np.zeros(ROWS, bool),
                episode=np.arange(ROWS) // 10,
                step=step,
            )
        write_ref_actions(path, rng.integers(0, 2, ROWS))
        write_decision(path, {"kept": True, "reason": "kept"})
        shards.append(path.relative_to(root).as_posix())
    returns = [float(r) for r in np.linspace(10, 200, 20)]
    result = RunResult(
        run_key=key(env_id),
        stage="reference",
        library=LIB,
        env_id=env_id,
        candidate=CAND,
        seed=SEED,
        budget=BUDGET,
        mlflow_run_id=mlflow_run_id,
        episode_returns=returns,
        episode_lengths=[10] * 20,
        first10_mean=returns[0],
        last10_mean=returns[-1],
        shards=shards,
        seconds=1.0,
        learn_seconds=1.0,
        record_seconds=0.0,
    )
    atomic_write_text(record_path(root, env_id), result.model_dump_json())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for env_id in ENVS:
        finished_run(tmp_path, env_id)
    write_index(tmp_path)
    return tmp_path


def flip_obs(path: Path, row: int = 7) -> None:
    """Flip one bit of a stored observation in place, as a failing disk would."""
    with ShardReader(path) as reader:
        needle = reader.column("obs")[row].tobytes()
    raw = bytearray(path.read_bytes())
    raw[bytes(raw).index(needle) + 3] ^= 0x20
    path.write_bytes(bytes(raw))


def planned(root: Path) -> list[str]:
    """The run keys `train` would submit now (the finished ones are skipped)."""
    pairs = [(env_id, candidate_registry().get(CAND)) for env_id in ENVS]
    tasks, _done = pipeline._plan(
        "reference",
        get_library(LIB),
        pairs,
        seeds=[SEED],
        budget=BUDGET,
        root=root,
        record=True,
        backend="venv",
        parent_run_id=None,
        timeout_s=60,
    )
    return [t.key for t in tasks]


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning:")]


def test_dataset_tells_about_a_deleted_shard_and_redoes_its_run(root: Path) -> None:
    assert planned(root) == []
    gone = part(root, "CartPole-v1", 1)
    gone.unlink()
    result = runner.invoke(cli.app, ["show", "--dataset", str(root)])
    assert result.exit_code == 0, result.output
    said = warnings_in(result.output)
    assert any(key("CartPole-v1") in line and "Back to to-do" in line for line in said), said
    assert any("part-1.arrow of run " + key("CartPole-v1") in line for line in said), said
    # the totals are today's: the run that lost a part is not kept any more (not half-trained)
    assert f"{2 * 2 * ROWS:,} kept transitions of {5 * ROWS:,}" in result.output
    runs, _ = read_index(root)
    assert runs.height == 5 and runs.filter(runs["env_id"] == "CartPole-v1")["kept"].is_null().all()
    # the run is to do again, and nothing of it is left behind as if decided
    assert not record_path(root, "CartPole-v1").exists()
    assert not decision_path(gone).exists()  # the orphan
    assert not decision_path(part(root, "CartPole-v1", 0)).exists()
    assert planned(root) == [key("CartPole-v1")]
    again = runner.invoke(cli.app, ["show", "--dataset", str(root)])
    assert again.exit_code == 0 and not warnings_in(again.output)  # told once


def test_verify_finds_a_flipped_byte_and_repair_quarantines_it(root: Path) -> None:
    assert runner.invoke(cli.app, ["verify", "--dataset", str(root)]).exit_code == 0
    bad = part(root, "ShortCartPole-v1", 1)
    rel = bad.relative_to(root).as_posix()
    flip_obs(bad)
    found = runner.invoke(cli.app, ["verify", "--dataset", str(root)])
    assert found.exit_code == 1, found.output
    assert "corrupt" in found.output and rel in found.output and "column 'obs'" in found.output
    assert "--repair" in found.output
    assert bad.exists() and record_path(root, "ShortCartPole-v1").exists()  # only reported
    repaired = runner.invoke(cli.app, ["verify", "--dataset", str(root), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert not bad.exists()
    record = quarantine_reason(root, rel)
    assert record is not None and "column 'obs'" in record.reason
    assert (root / QUARANTINE_DIR / rel).exists()
    assert not record_path(root, "ShortCartPole-v1").exists()
    assert planned(root) == [key("ShortCartPole-v1")]
    runs, _ = read_index(root)
    assert rel not in runs["shard_path"].to_list()
    assert runs.filter(runs["env_id"] == "ShortCartPole-v1")["kept"].is_null().all()
    clean = runner.invoke(cli.app, ["verify", "--dataset", str(root)])
    assert clean.exit_code == 0 and "ok" in clean.output, clean.output


def test_verify_reports_a_deleted_shard_its_orphan_and_its_run(root: Path) -> None:
    gone = part(root, "Pendulum-v1", 0)
    rel = gone.relative_to(root).as_posix()
    gone.unlink()
    found = runner.invoke(cli.app, ["verify", "--dataset", str(root)])
    assert found.exit_code == 1, found.output
    rows = [line for line in found.output.splitlines() if rel in line]
    kinds = {kind for kind in ("missing", "orphan", "lost run") if any(kind in r for r in rows)}
    assert kinds == {"missing", "orphan", "lost run"}, found.output
    assert decision_path(gone).exists()  # nothing touched without --repair
    repaired = runner.invoke(cli.app, ["verify", "--dataset", str(root), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert not decision_path(gone).exists() and not record_path(root, "Pendulum-v1").exists()
    assert runner.invoke(cli.app, ["verify", "--dataset", str(root)]).exit_code == 0


@pytest.fixture
def tracked_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`root`, with an MLflow run (embedded store under a temporary home) behind each record."""
    from ldm_envs import tracking

    monkeypatch.setenv("LDM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.setup()
    data = tmp_path / "data"
    for env_id in ENVS:
        with tracking.tracked_run("reference", LIB, key(env_id), name=env_id) as run:
            finished_run(data, env_id, mlflow_run_id=run.run_id)
    write_index(data)
    return data


def test_filter_never_decides_a_run_that_lost_or_broke_a_shard(tracked_root: Path) -> None:
    root = tracked_root
    deleted = part(root, "CartPole-v1", 1)
    deleted.unlink()
    corrupt = part(root, "ShortCartPole-v1", 0)
    flip_obs(corrupt)
    output = Console(width=250, record=True)
    table = pipeline.filter_runs(LIB, root=root, random_episodes=0, console=output)
    said = warnings_in(output.export_text())
    assert table["env_id"].to_list() == ["Pendulum-v1"]  # the intact run alone is decided
    assert any(key("CartPole-v1") in line and "deleted" in line for line in said), said
    assert any(key("ShortCartPole-v1") in line and "quarantined" in line for line in said), said
    assert (root / QUARANTINE_DIR / corrupt.relative_to(root)).exists()
    assert not decision_path(deleted).exists()  # no orphan left, none rewritten
    assert sorted(planned(root)) == sorted([key("CartPole-v1"), key("ShortCartPole-v1")])
    runs, _ = read_index(root)
    kept = runs.filter(runs["kept"].fill_null(False))
    assert set(kept["env_id"].to_list()) <= {"Pendulum-v1"}
    assert set(runs["shard_path"].to_list()) == {
        part(root, "CartPole-v1", 0).relative_to(root).as_posix(),
        part(root, "ShortCartPole-v1", 1).relative_to(root).as_posix(),
        *(part(root, "Pendulum-v1", k).relative_to(root).as_posix() for k in range(2)),
    }
    assert json.loads(decision_path(part(root, "Pendulum-v1", 0)).read_text())["reason"]
