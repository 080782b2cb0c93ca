"""SB3 trains through the isolated vector env unchanged."""

import warnings

import numpy as np
import pytest
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecNormalize

from ldm_envs.sb3 import LDMSB3VecEnv

pytestmark = pytest.mark.slow


def test_sb3_vec_env_contract(toy):
    env = LDMSB3VecEnv(toy, "ShortCartPole-v1", 2)
    assert isinstance(env, VecEnv) and env.num_envs == 2
    env.seed(3)
    obs = env.reset()
    assert obs.shape == (2, 4)
    saw_terminal = False
    for _ in range(12):
        env.step_async(np.array([0, 1]))
        obs, rewards, dones, infos = env.step_wait()
        assert rewards.dtype == np.float32 and dones.dtype == bool
        for i in np.flatnonzero(dones):
            saw_terminal = True
            assert infos[i]["terminal_observation"].shape == (4,)
            assert "TimeLimit.truncated" in infos[i]
            assert infos[i]["episode"]["l"] <= 10
    assert saw_terminal
    assert env.get_attr("render_mode") == [None, None]
    env.close()


def test_vec_monitor_wraps_without_a_warning_and_evaluate_policy_reads_the_stats(toy):
    env = LDMSB3VecEnv(toy, "ShortCartPole-v1", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "already wrapped with a `Monitor`" would raise here
        monitored = VecMonitor(env)
        VecMonitor(VecNormalize(env))  # wrappers in between pass the question down
        model = PPO("MlpPolicy", monitored, n_steps=32, batch_size=32, seed=0, device="cpu")
        model.learn(64)
        # on the bare env, evaluate_policy still sees Monitor statistics (and does not warn)
        returns, lengths = evaluate_policy(
            model, env, n_eval_episodes=4, return_episode_rewards=True
        )
    assert len(model.ep_info_buffer) >= 4  # VecMonitor's own episode statistics reached SB3
    assert all(1 <= n <= 10 for n in lengths) and returns == [float(n) for n in lengths]
    assert env.env_is_wrapped(Monitor) == [True, True]
    env.close()


def test_ppo_learns_cartpole_through_venv(toy):
    env = LDMSB3VecEnv(toy, "CartPole-v1", 4, num_workers=2)
    model = PPO(
        "MlpPolicy", env, n_steps=256, batch_size=256, learning_rate=3e-3, seed=0, device="cpu"
    )
    model.learn(1024)
    early = np.mean([ep["r"] for ep in model.ep_info_buffer])  # Monitor-style stats reached SB3
    model.learn(11_000, reset_num_timesteps=False)
    late = np.mean([ep["r"] for ep in list(model.ep_info_buffer)[-10:]])
    mean_after, _ = evaluate_policy(model, env, n_eval_episodes=8)
    env.close()
    assert late > 2 * early and mean_after > 150, (early, late, mean_after)


def test_sac_runs_on_a_continuous_env(toy):
    env = LDMSB3VecEnv(toy, "Pendulum-v1", 1)
    model = SAC("MlpPolicy", env, learning_starts=50, seed=0, device="cpu")
    model.learn(120)
    assert model.num_timesteps == 120
    env.close()
