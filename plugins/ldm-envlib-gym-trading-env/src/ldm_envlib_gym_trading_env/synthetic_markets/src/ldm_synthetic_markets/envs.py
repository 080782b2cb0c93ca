"""`TradingEnv` on the synthetic markets, seeded through `reset(seed=...)`, and its ids."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from .markets import market_frame

# gym_trading_env.environments runs `warnings.filterwarnings("error")` at import, turning every
# warning of the whole process into an exception; keep the caller's filters instead.
with warnings.catch_warnings():
    from gym_trading_env.environments import TradingEnv

EPISODE_STEPS = 200  # agent steps per episode (the registered max_episode_steps)


class SyntheticTradingEnv(TradingEnv):
    """gym-trading-env's `TradingEnv` on one or several synthetic markets.

    Differences from the library's env, all of them about reproducibility and the interface:

    - the data come from `ldm_synthetic_markets.markets` (no DataFrame argument);
    - `reset(seed=...)` decides everything: the library draws the episode's start bar and its
      random initial position from NumPy's global generator, so `reset` seeds a private state
      of that generator from `self.np_random` for the duration of the library's reset and
      restores the global state afterwards;
    - with several markets, each reset picks one with `self.np_random` (the library's
      `MultiDatasetTradingEnv` reads pickles from disk and draws from the global generator);
    - episodes last `episode_steps` steps (the library truncates one step short of its
      `max_episode_duration`, so it is given one more);
    - observations are copies (the library returns a view of its feature array), the reward a
      Python float, and `info` a small dict instead of the full history row;
    - `continuous=True` replaces the Discrete choice among `positions` by a Box(1) action, the
      target position itself, clipped to [min(positions), max(positions)] (the library's
      portfolio accepts any target; `positions` then only serves the random initial one).
    """

    def __init__(
        self,
        markets: Sequence[str] = ("gbm",),
        positions: Sequence[float] = (0, 1),
        trading_fees: float = 0.0,
        borrow_interest_rate: float = 0.0,
        episode_steps: int = EPISODE_STEPS,
        initial_position: float | str = "random",
        continuous: bool = False,
        render_mode: str | None = None,
    ):
        self.markets = list(markets)
        self._market_index = 0
        self.continuous = bool(continuous)
        super().__init__(
            df=market_frame(self.markets[0]),
            positions=list(positions),
            trading_fees=trading_fees,
            borrow_interest_rate=borrow_interest_rate,
            portfolio_initial_value=1000,
            initial_position=initial_position,
            max_episode_duration=episode_steps + 1,
            verbose=0,
            name=self.markets[0],
            render_mode=render_mode,
        )
        if self.continuous:
            low, high = float(min(positions)), float(max(positions))
            self.action_space = spaces.Box(low, high, shape=(1,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        gymnasium.Env.reset(self, seed=seed)  # (re)seeds self.np_random
        if len(self.markets) > 1:
            index = int(self.np_random.integers(len(self.markets)))
            if index != self._market_index:
                self._market_index = index
                self.name = self.markets[index]
                self._set_df(market_frame(self.name))
        saved = np.random.get_state()
        np.random.seed(int(self.np_random.integers(2**32)))
        try:
            obs, _ = super().reset(seed=None, options=options)
        finally:
            np.random.set_state(saved)
        return np.array(obs, dtype=np.float32), self._info()

    def step(self, action):
        if self.continuous:
            space = self.action_space
            target = np.asarray(action, dtype=np.float64).reshape(-1)[0]
            self._take_action(float(np.clip(target, space.low[0], space.high[0])))
            obs, reward, terminated, truncated, _ = super().step(None)
        else:
            obs, reward, terminated, truncated, _ = super().step(int(action))
        return np.array(obs, dtype=np.float32), float(reward), terminated, truncated, self._info()

    def _info(self) -> dict:
        history = self.historical_info
        return {
            "market": self.name,
            "bar": int(self._idx),
            "position": float(self._position),
            "portfolio_valuation": float(history["portfolio_valuation", -1]),
        }


# id -> kwargs of SyntheticTradingEnv
ENVS: dict[str, dict] = {
    # long or flat on a slightly upward-drifting random walk
    "TradingGBM-v0": {"markets": ["gbm"], "positions": [0, 1]},
    # short/flat/long on drift that flips every 150-400 bars (momentum pays)
    "TradingTrend-v0": {"markets": ["trend"], "positions": [-1, 0, 1]},
    # short/flat/long on an Ornstein-Uhlenbeck price (fading deviations pays)
    "TradingMeanRevert-v0": {"markets": ["meanrevert"], "positions": [-1, 0, 1]},
    # the same with 0.1% fees per trade (churning loses)
    "TradingMeanRevertFees-v0": {
        "markets": ["meanrevert"],
        "positions": [-1, 0, 1],
        "trading_fees": 0.001,
    },
    # long or flat on a calm-bull / volatile-bear regime-switching market
    "TradingRegimes-v0": {"markets": ["regimes"], "positions": [0, 1]},
    # seven positions from -1 to 2 (leverage), 0.05% fees, 0.01% borrow interest per bar
    "TradingRegimesLeverage-v0": {
        "markets": ["regimes"],
        "positions": [-1, -0.5, 0, 0.5, 1, 1.5, 2],
        "trading_fees": 0.0005,
        "borrow_interest_rate": 0.0001,
    },
    # the trending market with a continuous target position in [-1, 1]
    "TradingTrendContinuous-v0": {
        "markets": ["trend"],
        "positions": [-1, 0, 1],
        "continuous": True,
    },
    # one of four independent markets (one per process) drawn at every reset
    "TradingMultiMarket-v0": {
        "markets": ["gbm-b", "trend-b", "meanrevert-b", "regimes-b"],
        "positions": [-1, 0, 1],
    },
}


def register_all() -> None:
    """Register every id of `ENVS` (idempotent)."""
    for env_id, kwargs in ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="ldm_synthetic_markets.envs:SyntheticTradingEnv",
                kwargs=kwargs,
                max_episode_steps=EPISODE_STEPS,
            )
