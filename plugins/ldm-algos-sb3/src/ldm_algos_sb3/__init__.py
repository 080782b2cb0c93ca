"""ldm algorithm plugin: Stable-Baselines3's A2C, DDPG, DQN, PPO, SAC and TD3.

Each algorithm comes with its library defaults and at least one alternative tuned for short
budgets, declared as data in `candidates.yaml` and validated by `ldm_autorl.candidates` (which
imports SB3 only when needed). This package itself imports nothing heavy.
"""

from pathlib import Path

CANDIDATES = Path(__file__).with_name("candidates.yaml")
