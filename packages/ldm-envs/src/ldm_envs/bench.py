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


def _ppo_steps_per_second(make_env: Callable[[], Any], timesteps: int) -> float:
    import torch
    from stable_baselines3 import PPO

    # one torch thread for both contenders: SB3's small MLPs gain nothing from more on 2 cores,
    # and a second thread only contends with the env worker
    torch.set_num_threads(1)

    env = make_env()
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=256, n_epochs=1, seed=0, device="cpu")
    model.learn(256)  # warm-up
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=True)
    rate = timesteps / (time.perf_counter() - start)
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
        with console.status("SB3 PPO in-process (DummyVecEnv)"):
            rates["ppo inprocess"] = _ppo_steps_per_second(
                lambda: make_vec_env(ENV_ID, n_envs=num_envs, seed=0), ppo_timesteps
            )
        with console.status(f"SB3 PPO through ldm {backend}"):
            rates[f"ppo {backend}"] = _ppo_steps_per_second(
                lambda: LdmSB3VecEnv(spec, ENV_ID, num_envs, backend=backend, num_workers=workers),
                ppo_timesteps,
            )
        ratio = rates[f"ppo {backend}"] / rates["ppo inprocess"]
        console.print(
            f"SB3 PPO training: in-process {rates['ppo inprocess']:,.0f} steps/s, through "
            f"{backend} {rates[f'ppo {backend}']:,.0f} steps/s -> ratio {ratio:.2f}"
        )
    return rates
