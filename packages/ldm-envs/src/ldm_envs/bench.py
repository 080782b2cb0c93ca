"""CartPole throughput of the isolated vector env against Gymnasium's own, in the same run.

Ratios, not absolute numbers, are what the README reports: the machines are shared and noisy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table

from ldm_envs.plugins import registry
from ldm_envs.vector import LdmVectorEnv

LIBRARY = "classic-control"
ENV_ID = "CartPole-v1"


def _steps_per_second(env: Any, num_envs: int, seconds: float) -> float:
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(1024, num_envs))
    for i in range(50):  # warm-up
        env.step(actions[i % 1024])
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for i in range(100):
            env.step(actions[(steps // num_envs + i) % 1024])
        steps += 100 * num_envs
    env.close()
    return steps / elapsed


#: SB3 PPO configurations timed in-process and through the isolated env. `one-epoch` is the worst
#: case for isolation (128-step rollouts, one epoch: collecting dominates); the others are the
#: PPO trainings ldm-autorl actually runs (its `ppo-zoo` candidate: 128 steps x 10 epochs; and
#: SB3's defaults as in `ppo-default`: 2048 steps x 10 epochs of minibatch 64), where the
#: policy's updates share the time with collecting.
PPO_CONFIGS: dict[str, dict[str, Any]] = {
    "one-epoch": {"n_steps": 128, "batch_size": 256, "n_epochs": 1},
    "ppo-zoo": {
        "n_steps": 128,
        "batch_size": 256,
        "n_epochs": 10,
        "ent_coef": 0.01,
    },
    "sb3-default": {},
}


def _ppo_steps_per_second(
    make_env: Callable[[], Any], timesteps: int, hyperparams: dict[str, Any] | None = None
) -> float:
    import torch
    from stable_baselines3 import PPO

    # one torch thread for both contenders: SB3's small MLPs gain nothing from more on 2 cores,
    # and a second thread only contends with the env worker
    torch.set_num_threads(1)

    env = make_env()
    params = hyperparams if hyperparams is not None else PPO_CONFIGS["one-epoch"]
    model = PPO("MlpPolicy", env, seed=0, device="cpu", **params)
    model.learn(256)  # warm-up: one rollout and one update
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=True)
    # whole rollouts: SB3 collects past `timesteps` up to the end of the last one
    rate = model.num_timesteps / (time.perf_counter() - start)
    env.close()
    return rate


def run_benchmark(
    console: Console,
    *,
    num_envs: int = 8,
    seconds: float = 3.0,
    backends: list[str] | None = None,
    workers: int = 1,
    sb3: bool = True,
    ppo_timesteps: int = 20_000,
    ppo_configs: list[str] | None = None,
) -> dict[str, float]:
    """Measure every contender and print a table of env-steps/s and ratios to the anchors."""
    spec = registry().get(LIBRARY)
    rates: dict[str, float] = {}
    make = [lambda: gym.make(ENV_ID) for _ in range(num_envs)]
    with console.status("measuring gymnasium SyncVectorEnv"):
        rates["gymnasium SyncVectorEnv"] = _steps_per_second(
            gym.vector.SyncVectorEnv(make), num_envs, seconds
        )
    with console.status("measuring gymnasium AsyncVectorEnv"):
        rates["gymnasium AsyncVectorEnv"] = _steps_per_second(
            gym.vector.AsyncVectorEnv(make), num_envs, seconds
        )
    for backend in backends or ["venv"]:
        for pin in (False, True) if backend == "venv" else (False,):
            label = f"ldm {backend} ({workers} worker{'s' if workers > 1 else ''}"
            label += ", pinned)" if pin else ")"
            with console.status(f"measuring {label}"):
                env = LdmVectorEnv(
                    spec, ENV_ID, num_envs, backend=backend, num_workers=workers, pin_workers=pin
                )
                rates[label] = _steps_per_second(env, num_envs, seconds)
    sync, asyn = rates["gymnasium SyncVectorEnv"], rates["gymnasium AsyncVectorEnv"]
    table = Table(title=f"CartPole-v1, {num_envs} envs, random actions")
    for col in ("contender", "env-steps/s", "x Sync", "x Async"):
        table.add_column(col, justify="right" if col != "contender" else "left")
    for label, rate in rates.items():
        table.add_row(label, f"{rate:,.0f}", f"{rate / sync:.2f}", f"{rate / asyn:.2f}")
    console.print(table)
    if sb3:
        from stable_baselines3.common.env_util import make_vec_env

        from ldm_envs.sb3 import LdmSB3VecEnv

        backend = (backends or ["venv"])[0]
        for name in ppo_configs or list(PPO_CONFIGS):
            with console.status(f"SB3 PPO {name} in-process (DummyVecEnv)"):
                inproc = _ppo_steps_per_second(
                    lambda: make_vec_env(ENV_ID, n_envs=num_envs, seed=0),
                    ppo_timesteps,
                    PPO_CONFIGS[name],
                )
            with console.status(f"SB3 PPO {name} through ldm {backend}"):
                isolated = _ppo_steps_per_second(
                    lambda: LdmSB3VecEnv(
                        spec, ENV_ID, num_envs, backend=backend, num_workers=workers
                    ),
                    ppo_timesteps,
                    PPO_CONFIGS[name],
                )
            rates[f"ppo {name} inprocess"], rates[f"ppo {name} {backend}"] = inproc, isolated
            console.print(
                f"SB3 PPO {name}: in-process {inproc:,.0f} steps/s, through {backend} "
                f"{isolated:,.0f} steps/s -> ratio {isolated / inproc:.2f}"
            )
    return rates
