"""One training run, as a task an executor runs in its own process (local pool or Ray).

A run trains one candidate on one env through the isolated vector env, optionally records
every transition into shards and relabels them, logs to MLflow, and writes its result record
last (atomically): a record on disk means the run is done, so an interrupted pipeline resumes
by skipping it, and the MLflow run, found again by its run key, is never duplicated.

A worker that crashes or hangs during training is restarted (`EnvPool`), and the episodes it
cut short are marked and left out of the run's statistics (`recording`); the record and the
MLflow run count the restarts and cut episodes. Past `max_restarts` restarts the run fails
with `RestartLimitError`, naming the run, the count and the last cause.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from ldm_autorl import layout
from ldm_autorl.candidates import registry as candidate_registry
from ldm_autorl.config import AutoRLConfig
from ldm_autorl.errors import RestartLimitError
from ldm_autorl.recording import RecordingVecEnv, relabel
from ldm_autorl.stats import window
from ldm_envs import tracking
from ldm_envs.atomic import atomic_path, atomic_write_text
from ldm_envs.dataset.shards import ShardMeta, ShardWriter
from ldm_envs.errors import WorkerError
from ldm_envs.plugins import get_library
from ldm_envs.sb3 import LDMSB3VecEnv

#: Episodes of the final deterministic policy after a reference run (the zoo evaluates so).
FINAL_EVAL_EPISODES = 10
#: Worker restarts a run survives by default; one more fails it (`RestartLimitError`).
MAX_WORKER_RESTARTS: int = AutoRLConfig.model_fields["max_restarts"].default


class RunResult(BaseModel):
    """The record of a finished run (`runs/<stage>/.../<candidate>-s<seed>.json`).

    A run too short to end an episode has NaN first/last means: written as `NaN`, not `null`,
    so the record reads back and the filter can say "no complete episode".
    """

    model_config = ConfigDict(ser_json_inf_nan="constants")

    run_key: str
    stage: str
    library: str
    env_id: str
    candidate: str
    seed: int
    budget: int
    mlflow_run_id: str
    episode_returns: list[float]
    episode_lengths: list[int]
    first10_mean: float
    last10_mean: float
    shards: list[str] = []
    model: str | None = None
    seconds: float
    learn_seconds: float
    record_seconds: float
    relabel_seconds: float = 0.0
    #: Returns of the final policy acting deterministically (reference runs): the policy the
    #: relabeled actions come from, measured as rl-baselines3-zoo measures its benchmark.
    final_returns: list[float] = []
    final_mean: float | None = None
    #: Times the training env's worker crashed or hung and was restarted (0 in older records).
    worker_restarts: int = 0
    #: Episodes cut short by those restarts: not in `episode_returns`/`episode_lengths`, so
    #: not in the first/last-10% means or the ranking; marked `restarted` in the shards.
    cut_episodes: int = 0
    #: The distinct causes of the restarts (first line each).
    restart_causes: list[str] = []

    @property
    def run_id(self) -> layout.RunId:
        """The run this record is of."""
        return layout.RunId(self.library, self.env_id, self.candidate, self.seed, self.budget)

    @field_validator("first10_mean", "last10_mean", mode="before")
    @classmethod
    def _null_is_nan(cls, value: object) -> object:
        """Records written before NaN was kept as NaN hold `null` there."""
        return float("nan") if value is None else value


def run_kwargs(stage: str, rid: layout.RunId) -> dict[str, Any]:
    """The keyword arguments of `train_run` that name the run (a task's kwargs are JSON)."""
    return {
        "stage": stage,
        "library": rid.library,
        "env_id": rid.env_id,
        "candidate": rid.candidate,
        "seed": rid.seed,
        "budget": rid.budget,
    }


def load_result(path: Path) -> RunResult | None:
    """A finished run's record, or None if the run has not finished."""
    if not path.exists():
        return None
    return RunResult.model_validate_json(path.read_text())


def _one_torch_thread() -> None:
    """One intra-op thread per task unless `OMP_NUM_THREADS` says otherwise.

    SB3's small networks gain nothing from more, and tasks run side by side (one per core):
    two torch thread pools per core made PPO's 4k CartPole steps take 17 s instead of 0.8 s.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


def final_policy_returns(
    model: Any,
    spec: Any,
    env_id: str,
    *,
    n_envs: int,
    backend: str,
    seed: int,
    episodes: int = FINAL_EVAL_EPISODES,
) -> list[float]:
    """`episodes` returns of the trained model acting deterministically, on fresh envs.

    SB3's `evaluate_policy` over the library's isolated envs (the worker reports Monitor's
    episode statistics), seeded apart from training.
    """
    from stable_baselines3.common.evaluation import evaluate_policy

    venv = LDMSB3VecEnv(spec, env_id, min(n_envs, episodes), backend=backend)
    try:
        venv.seed(seed + 10_000)
        returns, _ = evaluate_policy(
            model, venv, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True
        )
    finally:
        venv.close()
    assert isinstance(returns, list)  # return_episode_rewards=True: one return per episode
    return [float(r) for r in returns]


def train_run(
    *,
    stage: str,
    library: str,
    env_id: str,
    candidate: str,
    seed: int,
    budget: int,
    root: str,
    record: bool = False,
    backend: str = "venv",
    parent_run_id: str | None = None,
    max_restarts: int = MAX_WORKER_RESTARTS,
) -> dict[str, Any]:
    """Train `candidate` on `env_id` for `budget` transitions; returns the RunResult as a dict.

    The run's identity arrives as five plain arguments because a task's kwargs are JSON (see
    `run_kwargs`); inside, it is one `layout.RunId`.

    Raises:
        RestartLimitError: the env worker needed more than `max_restarts` restarts.
    """
    start = time.perf_counter()
    root_path = Path(root)
    rid = layout.RunId(library, env_id, candidate, seed, budget)
    out = rid.result_path(root_path, stage)
    done = load_result(out)
    if done is not None:
        return done.model_dump()
    _one_torch_thread()
    spec = get_library(library)
    cand = candidate_registry().get(candidate)
    key = rid.key(stage)
    shards = rid.shard_dir(root_path)
    shutil.rmtree(shards, ignore_errors=True)  # leftovers of an interrupted attempt
    tags = {
        tracking.TAG_ENV: env_id,
        tracking.TAG_CANDIDATE: candidate,
        tracking.TAG_SEED: str(seed),
        # a tag, not a param: an interrupted run may be resumed through another backend
        tracking.TAG_BACKEND: backend,
    }
    params = {
        "algorithm": cand.algorithm,
        "budget": budget,
        "n_envs": cand.n_envs,
        **{f"hp.{k}": v for k, v in cand.hyperparams.items()},
    }
    with tracking.tracked_run(
        stage,
        library,
        key,
        name=f"{env_id} · {candidate} · s{seed}",
        tags=tags,
        params=params,
        parent_run_id=parent_run_id,
    ) as run:
        venv = LDMSB3VecEnv(spec, env_id, cand.n_envs, backend=backend, max_restarts=max_restarts)
        writers = None
        if record:
            obs_space = venv.pool.observation_spaces[0]
            act_space = venv.pool.action_spaces[0]
            writers = [
                ShardWriter(
                    shards / f"part-{k}.arrow",
                    ShardMeta(
                        library=library,
                        env_id=env_id,
                        candidate=candidate,
                        seed=seed,
                        run_key=key,
                        mlflow_run_id=run.run_id,
                        observation_space=obs_space,
                        action_space=act_space,
                        environment_ref=spec.environment_hash(),
                        part=k,
                        created=time.time(),
                    ),
                )
                for k in range(cand.n_envs)
            ]
        env = RecordingVecEnv(venv, writers)
        try:
            env.seed(seed)
            model = cand.make_model(env, seed=seed)
            learn_start = time.perf_counter()
            model.learn(budget, progress_bar=False)
            learn_seconds = time.perf_counter() - learn_start
            paths = env.finish()
        except WorkerError as exc:
            env.abort()
            env.close()
            if venv.pool.restarts < max_restarts:
                raise  # failed while starting or before any restart: not a restart limit
            raise RestartLimitError(
                f"run {key}: the env worker failed again after {venv.pool.restarts} restart(s), "
                f"the most a run allows (max_restarts={max_restarts}); each restart cuts the "
                f"episodes of its envs short. Last cause: {exc}"
            ) from exc
        except BaseException:
            env.abort()
            env.close()
            raise
        restarts = venv.pool.restarts
        env.close()
        relabel_seconds = 0.0
        model_file = None
        final_returns: list[float] = []
        if record:
            relabel_start = time.perf_counter()
            for path in paths:
                relabel(model, path)
            relabel_seconds = time.perf_counter() - relabel_start
            model_file = rid.model_path(root_path)
            with atomic_path(model_file, suffix=".zip") as tmp:
                model.save(tmp)
            run.log_artifact(model_file, "model")
            final_returns = final_policy_returns(
                model, spec, env_id, n_envs=cand.n_envs, backend=backend, seed=seed
            )
        returns = env.episode_returns
        first = window(returns, "first")
        last = window(returns, "last")
        result = RunResult(
            run_key=key,
            stage=stage,
            library=library,
            env_id=env_id,
            candidate=candidate,
            seed=seed,
            budget=budget,
            mlflow_run_id=run.run_id,
            episode_returns=returns,
            episode_lengths=env.episode_lengths,
            first10_mean=float(first.mean()) if first.size else float("nan"),
            last10_mean=float(last.mean()) if last.size else float("nan"),
            shards=[str(p.relative_to(root_path)) for p in paths],
            model=str(model_file.relative_to(root_path)) if model_file else None,
            seconds=0.0,
            learn_seconds=learn_seconds,
            record_seconds=env.record_seconds,
            relabel_seconds=relabel_seconds,
            final_returns=final_returns,
            final_mean=float(np.mean(final_returns)) if final_returns else None,
            worker_restarts=restarts,
            cut_episodes=env.cut_episodes,
            restart_causes=env.restart_causes,
        )
        run.log_metrics(
            {
                **(
                    {"final_mean_return": result.final_mean}
                    if result.final_mean is not None
                    else {}
                ),
                "episodes": len(returns),
                "worker_restarts": restarts,
                "cut_episodes": env.cut_episodes,
                "first10_mean_return": result.first10_mean,
                "last10_mean_return": result.last10_mean,
                "learn_seconds": learn_seconds,
                "record_seconds": env.record_seconds,
                "relabel_seconds": relabel_seconds,
            }
        )
        if returns:
            run.log_learning_curve(returns, title=f"{library} {env_id}: {candidate} (seed {seed})")
        result.seconds = time.perf_counter() - start
    atomic_write_text(out, result.model_dump_json())
    return result.model_dump()
