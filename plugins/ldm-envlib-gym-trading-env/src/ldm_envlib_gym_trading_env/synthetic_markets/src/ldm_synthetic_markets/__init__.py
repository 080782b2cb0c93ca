"""Synthetic markets for gym-trading-env; importing this package registers the Trading*-v0 ids.

Runs inside the library's isolated environment (installed there from the plugin's
`environment.local_packages`); the workspace never imports it.
"""

from .envs import ENVS, EPISODE_STEPS, SyntheticTradingEnv, register_all
from .markets import MARKETS, generate, market_frame

register_all()

__all__ = [
    "ENVS",
    "EPISODE_STEPS",
    "MARKETS",
    "SyntheticTradingEnv",
    "generate",
    "market_frame",
    "register_all",
]
