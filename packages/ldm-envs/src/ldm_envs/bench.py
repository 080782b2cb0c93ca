"""CartPole throughput of the isolated vector env against Gymnasium's own, in the same run.

Ratios, not absolute numbers, are what the README reports: the machines are shared and noisy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ldm_envs.plugins import registry
from ldm_envs.vector import LDMVectorEnv

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

    from ldm_envs.sb3 import folderless_logger

    # one torch thread for both contenders: SB3's small MLPs gain nothing from more on 2 cores,
    # and a second thread only contends with the env worker
    torch.set_num_threads(1)

    env = make_env()
    params = hyperparams if hyperparams is not None else PPO_CONFIGS["one-epoch"]
    model = PPO("MlpPolicy", env, seed=0, device="cpu", **params)
    model.set_logger(folderless_logger())  # no SB3-<date> folder in /tmp per run
    model.learn(256)  # warm-up: one rollout and one update
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=True)
    # whole rollouts: SB3 collects past `timesteps` up to the end of the last one
    rate = model.num_timesteps / (time.perf_counter() - start)
    env.close()
    return rate


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _contenders(backends: list[str], compare_socket: bool) -> list[tuple[str, str, bool]]:
    """(label, backend, shared memory) for every isolated contender."""
    out = []
    for backend in backends:
        out.append((f"ldm {backend}", backend, True))
        if compare_socket:
            out.append((f"ldm {backend}, socket", backend, False))
    return out


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
    rounds: int = 3,
    compare_socket: bool = False,
) -> dict[str, float]:
    """Measure every contender `rounds` times, interleaved, and print median rates and ratios.

    A shared 2-core VM drifts by 30% within minutes, so each round measures the anchors and the
    contenders back to back and the ratio is taken within the round; the table shows the
    median over rounds and the range.
    """
    spec = registry().get(LIBRARY)
    backends = backends or ["venv"]
    contenders = _contenders(backends, compare_socket)
    make = [lambda: gym.make(ENV_ID) for _ in range(num_envs)]
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("CartPole random steps", total=rounds * (2 + len(contenders)))
        for _ in range(rounds):
            measured = {
                "gymnasium SyncVectorEnv": _steps_per_second(
                    gym.vector.SyncVectorEnv(make), num_envs, seconds
                )
            }
            progress.advance(task)
            measured["gymnasium AsyncVectorEnv"] = _steps_per_second(
                gym.vector.AsyncVectorEnv(make), num_envs, seconds
            )
            progress.advance(task)
            for label, backend, shared in contenders:
                env = LDMVectorEnv(
                    spec,
                    ENV_ID,
                    num_envs,
                    backend=backend,
                    num_workers=workers,
                    shared_memory=shared,
                    # the mode the README's figures were measured in (and SB3's, through the
                    # same pool); NEXT_STEP adds a socket step after each episode end
                    autoreset_mode="SameStep",
                )
                measured[label] = _steps_per_second(env, num_envs, seconds)
                progress.advance(task)
            for label, rate in measured.items():
                rates.setdefault(label, []).append(rate)
                ratios.setdefault(f"{label} x Sync", []).append(
                    rate / measured["gymnasium SyncVectorEnv"]
                )
                ratios.setdefault(f"{label} x Async", []).append(
                    rate / measured["gymnasium AsyncVectorEnv"]
                )
    table = Table(title=f"CartPole-v1, {num_envs} envs, random actions, median of {rounds} rounds")
    for col in ("contender", "env-steps/s", "x Sync", "x Async", "x Sync, range"):
        table.add_column(col, justify="right" if col != "contender" else "left")
    for label, values in rates.items():
        sync_ratios = ratios[f"{label} x Sync"]
        table.add_row(
            label,
            f"{_median(values):,.0f}",
            f"{_median(sync_ratios):.2f}",
            f"{_median(ratios[f'{label} x Async']):.2f}",
            f"{min(sync_ratios):.2f} - {max(sync_ratios):.2f}",
        )
    console.print(table)
    first = contenders[0][0]
    for label, *_ in contenders[1:]:
        per_round = [a / b for a, b in zip(rates[label], rates[first], strict=True)]
        console.print(
            f"{label} / {first}: median {_median(per_round):.2f} over {rounds} rounds "
            f"({', '.join(f'{r:.2f}' for r in per_round)})"
        )
    summary = {label: _median(values) for label, values in rates.items()}
    if sb3:
        summary |= _ppo_rounds(
            console, spec, num_envs, workers, contenders, ppo_timesteps, ppo_configs, rounds
        )
    return summary


def _ppo_rounds(
    console: Console,
    spec: Any,
    num_envs: int,
    workers: int,
    contenders: list[tuple[str, str, bool]],
    timesteps: int,
    configs: list[str] | None,
    rounds: int,
) -> dict[str, float]:
    """SB3 PPO in-process vs through each contender, interleaved round by round."""
    from stable_baselines3.common.env_util import make_vec_env

    from ldm_envs.sb3 import LDMSB3VecEnv

    summary: dict[str, float] = {}
    names = configs or list(PPO_CONFIGS)
    table = Table(title=f"SB3 PPO on CartPole-v1, {num_envs} envs, median of {rounds} rounds")
    for col in ("configuration", "contender", "steps/s", "x in-process", "range"):
        table.add_column(col, justify="left" if col in ("configuration", "contender") else "right")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("SB3 PPO", total=len(names) * rounds * (1 + len(contenders)))
        for name in names:
            params = PPO_CONFIGS[name]
            rates: dict[str, list[float]] = {"DummyVecEnv": []}
            ratios: dict[str, list[float]] = {}
            for _ in range(rounds):
                inproc = _ppo_steps_per_second(
                    lambda: make_vec_env(ENV_ID, n_envs=num_envs, seed=0), timesteps, params
                )
                rates["DummyVecEnv"].append(inproc)
                progress.advance(task)
                for label, backend, shared in contenders:
                    rate = _ppo_steps_per_second(
                        partial(
                            LDMSB3VecEnv,
                            spec,
                            ENV_ID,
                            num_envs,
                            backend=backend,
                            num_workers=workers,
                            shared_memory=shared,
                        ),
                        timesteps,
                        params,
                    )
                    rates.setdefault(label, []).append(rate)
                    ratios.setdefault(label, []).append(rate / inproc)
                    progress.advance(task)
            for label, values in rates.items():
                got = ratios.get(label)
                table.add_row(
                    name,
                    label,
                    f"{_median(values):,.0f}",
                    f"{_median(got):.2f}" if got else "1",
                    f"{min(got):.2f} - {max(got):.2f}" if got else "",
                )
                summary[f"ppo {name} {label}"] = _median(values)
                if got:
                    summary[f"ppo {name} {label} ratio"] = _median(got)
    console.print(table)
    return summary
