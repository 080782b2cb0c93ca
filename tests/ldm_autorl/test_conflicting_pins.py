"""Two libraries whose pins cannot share one environment run side by side in one pipeline.

or-gym needs Python 3.8, gym 0.17 (the old 4-tuple API) and NumPy 1.24; classic-control runs
Gymnasium 1.x on NumPy 2 under the host's Python. Each lives in its own venv, and one executor
run trains and records on both at once, into one dataset.
"""

import numpy as np
import pytest

from ldm_autorl import layout, pipeline
from ldm_autorl.executors import LocalExecutor, TaskSpec
from ldm_autorl.jobs import RunResult
from ldm_envs import tracking
from ldm_envs.dataset.index import read_index
from ldm_envs.dataset.shards import ShardReader
from ldm_envs.plugins import get_library
from ldm_envs.pool import EnvPool

pytestmark = pytest.mark.slow
LEGACY = ("or-gym", "InvManagement-v1")
MODERN = ("classic-control", "CartPole-v1")
BUDGET = 1000


@pytest.fixture(autouse=True)
def embedded_mlflow(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LDM_HOME", str(tmp_path / "home"))
    tracking.setup()


def test_both_workers_step_at_once_each_with_its_own_pins():
    with EnvPool(*LEGACY, num_envs=2) as legacy, EnvPool(*MODERN, num_envs=2) as modern:
        (old,) = [w.client.hello for w in legacy.workers]
        (new,) = [w.client.hello for w in modern.workers]
        assert old["python"].startswith("3.8.") and old["numpy"] == "1.24.4"
        assert not new["python"].startswith("3.8.") and new["numpy"].startswith("2.")
        legacy.reset(seed=0)
        modern.reset(seed=0)
        low = legacy.action_spaces[0].to_gymnasium()
        for _ in range(40):  # interleaved: neither worker blocks or disturbs the other
            legacy.step(np.stack([low.sample(), low.sample()]))
            modern.step(np.array([0, 1]))


def _reference_task(library: str, env_id: str, root) -> TaskSpec:
    return TaskSpec(
        key=layout.run_key("reference", library, env_id, "a2c-default", 0, BUDGET),
        target=pipeline.TASK_TARGET,
        kwargs={
            "stage": "reference",
            "library": library,
            "env_id": env_id,
            "candidate": "a2c-default",
            "seed": 0,
            "budget": BUDGET,
            "root": str(root),
            "record": True,
            "backend": "venv",
            "parent_run_id": None,
        },
        timeout_s=600,
    )


def test_one_pipeline_trains_and_records_both_into_one_dataset(tmp_path):
    root = tmp_path / "autorl"
    tasks = [_reference_task(*LEGACY, root), _reference_task(*MODERN, root)]
    results = LocalExecutor(max_workers=2, show_progress=False).run(tasks)
    failures = {r.key: r.error for r in results if not r.ok}
    assert not failures, failures
    runs = [RunResult.model_validate(r.value) for r in results]
    for run in runs:
        assert run.shards and len(run.episode_returns) >= 2
        spec = get_library(run.library)
        obs_dims = spec.env(run.env_id).observation_space.flat_dim
        with ShardReader(root / run.shards[0]) as shard:
            assert shard.meta.library == run.library
            assert shard.meta.environment_ref == spec.environment_hash()
            assert shard.column("obs").shape[-1] == obs_dims
            ref, taken = shard.column("ref_action"), shard.column("action")
            assert ref.dtype == taken.dtype and len(ref) == len(taken)
    # or-gym orders integer quantities: SB3's float actions are relabeled as the env got them
    legacy_space = get_library(LEGACY[0]).env(LEGACY[1]).action_space
    assert np.dtype(legacy_space.dtype) == np.int16

    for library, _ in (LEGACY, MODERN):
        pipeline.filter_runs(library, root=root)
    runs_table, _ = read_index(root)
    assert set(runs_table["library"].unique()) == {LEGACY[0], MODERN[0]}
