"""SB3 trains through the isolated vector env unchanged."""

import numpy as np
import pytest
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from ldm_envs.sb3 import LdmSB3VecEnv

pytestmark = pytest.mark.slow


def test_sb3_vec_env_contract(toy):
    env = LdmSB3VecEnv(toy, "ShortCartPole-v1", 2)
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


def test_ppo_learns_cartpole_through_venv(toy):
    env = LdmSB3VecEnv(toy, "CartPole-v1", 4, num_workers=2)
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
    env = LdmSB3VecEnv(toy, "Pendulum-v1", 1)
    model = SAC("MlpPolicy", env, learning_starts=50, seed=0, device="cpu")
    model.learn(120)
    assert model.num_timesteps == 120
    env.close()
