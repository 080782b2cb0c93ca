"""Deterministic synthetic markets: OHLCV bars and `feature_*` columns built with NumPy.

Every market is a named price process with a fixed generator seed; nothing is read from disk
or downloaded. The series are generated on first use and cached for the process's lifetime.
Bit-for-bit reproducibility holds for a fixed NumPy version (the manifest pins it): NumPy
keeps the PCG64 stream stable, but not necessarily its normal-variate algorithm across
releases.

Processes (per bar; log price `x`, log return `r`, standard normal `e`):

- `gbm`: geometric Brownian motion, `r = mu - sigma^2 / 2 + sigma e`.
- `trend`: GBM whose drift flips between `+mu` and `-mu` in segments of 150-400 bars.
- `meanrevert`: Ornstein-Uhlenbeck log price, `x' = x + theta (m - x) + sigma e`.
- `regimes`: two-state Markov-switching GBM (calm bull, volatile bear).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BARS = 4000  # bars per market, after the warm-up rows are dropped
WARMUP = 20  # rows needed by the longest rolling window
START_PRICE = 100.0
BAR_FREQ = "h"  # the index is hourly from 2020-01-01; only cosmetic


@dataclass(frozen=True)
class Market:
    """A named synthetic market: a process, its parameters and the generator seed."""

    process: str
    seed: int
    params: tuple[tuple[str, float], ...] = ()


# The markets the envs use. Seeds are fixed; `-b` markets are independent draws of the same
# processes, used only by the multi-market env.
MARKETS: dict[str, Market] = {
    "gbm": Market("gbm", 1001, (("mu", 3e-4), ("sigma", 0.01))),
    "trend": Market("trend", 2002, (("mu", 2e-3), ("sigma", 0.01))),
    "meanrevert": Market("meanrevert", 3003, (("theta", 0.05), ("sigma", 0.01))),
    "regimes": Market("regimes", 4004, (("p_stay", 0.99),)),
    "gbm-b": Market("gbm", 1101, (("mu", 3e-4), ("sigma", 0.01))),
    "trend-b": Market("trend", 2102, (("mu", 2e-3), ("sigma", 0.01))),
    "meanrevert-b": Market("meanrevert", 3103, (("theta", 0.05), ("sigma", 0.01))),
    "regimes-b": Market("regimes", 4104, (("p_stay", 0.99),)),
}


def _gbm(rng: np.random.Generator, n: int, mu: float, sigma: float):
    r = (mu - 0.5 * sigma**2) + sigma * rng.standard_normal(n)
    return r, np.full(n, sigma)


def _trend(rng: np.random.Generator, n: int, mu: float, sigma: float):
    drift = np.empty(n)
    i, sign = 0, 1.0 if rng.random() < 0.5 else -1.0
    while i < n:
        length = int(rng.integers(150, 401))
        drift[i : i + length] = sign * mu
        i += length
        sign = -sign
    r = (drift - 0.5 * sigma**2) + sigma * rng.standard_normal(n)
    return r, np.full(n, sigma)


def _meanrevert(rng: np.random.Generator, n: int, theta: float, sigma: float):
    level = np.log(START_PRICE)
    x = np.empty(n + 1)
    x[0] = level
    noise = sigma * rng.standard_normal(n)
    for t in range(n):
        x[t + 1] = x[t] + theta * (level - x[t]) + noise[t]
    return np.diff(x), np.full(n, sigma)


# regime: (drift per bar, volatility per bar)
_REGIMES = ((1.2e-3, 0.008), (-1e-3, 0.02))


def _regimes(rng: np.random.Generator, n: int, p_stay: float):
    state = np.empty(n, dtype=np.int64)
    s = 0
    switches = rng.random(n) >= p_stay
    for t in range(n):
        if switches[t]:
            s = 1 - s
        state[t] = s
    mu = np.array([m for m, _ in _REGIMES])[state]
    sigma = np.array([v for _, v in _REGIMES])[state]
    r = (mu - 0.5 * sigma**2) + sigma * rng.standard_normal(n)
    return r, sigma


_PROCESSES = {"gbm": _gbm, "trend": _trend, "meanrevert": _meanrevert, "regimes": _regimes}


def _rolling_mean(a: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean over `w` values; NaN where fewer than `w` exist."""
    out = np.full(a.shape, np.nan)
    c = np.cumsum(np.insert(a, 0, 0.0))
    out[w - 1 :] = (c[w:] - c[:-w]) / w
    return out


def _rolling_std(a: np.ndarray, w: int) -> np.ndarray:
    out = np.full(a.shape, np.nan)
    out[w - 1 :] = np.lib.stride_tricks.sliding_window_view(a, w).std(axis=1)
    return out


def generate(name: str) -> pd.DataFrame:
    """Build the market `name` (a key of `MARKETS`): OHLCV columns plus `feature_*` columns.

    Features (percent units where they are returns, so they are of order 1):
    `feature_log_return` (this bar), `feature_return_5` and `feature_return_20` (log return
    over 5 and 20 bars), `feature_close_sma20` (close against its 20-bar mean),
    `feature_high` / `feature_low` (bar extremes against the close), `feature_volatility_20`
    (20-bar standard deviation of log returns) and `feature_volume` (log of volume over its
    20-bar mean). All are finite on every returned row.
    """
    market = MARKETS[name]
    rng = np.random.default_rng(market.seed)
    n = N_BARS + WARMUP
    r, sigma = _PROCESSES[market.process](rng, n, **dict(market.params))
    log_close = np.log(START_PRICE) + np.cumsum(r)
    close = np.exp(log_close)
    prev_close = np.exp(np.concatenate(([np.log(START_PRICE)], log_close[:-1])))
    open_ = prev_close * np.exp(0.1 * sigma * rng.standard_normal(n))
    high = np.maximum(open_, close) * np.exp(np.abs(0.5 * sigma * rng.standard_normal(n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(0.5 * sigma * rng.standard_normal(n)))
    volume = 1000.0 * np.exp(0.3 * rng.standard_normal(n)) * (1.0 + 50.0 * np.abs(r))

    def lagged_return(k: int) -> np.ndarray:
        out = np.full(n, np.nan)
        out[k:] = log_close[k:] - log_close[:-k]
        return 100.0 * out

    data = {
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "feature_log_return": 100.0 * r,
        "feature_return_5": lagged_return(5),
        "feature_return_20": lagged_return(20),
        "feature_close_sma20": 100.0 * (close / _rolling_mean(close, 20) - 1.0),
        "feature_high": 100.0 * (high / close - 1.0),
        "feature_low": 100.0 * (low / close - 1.0),
        "feature_volatility_20": 100.0 * _rolling_std(r, 20),
        "feature_volume": np.log(volume / _rolling_mean(volume, 20)),
    }
    index = pd.date_range("2020-01-01", periods=n, freq=BAR_FREQ, name="date")
    df = pd.DataFrame(data, index=index).iloc[WARMUP:]
    features = df[[c for c in df.columns if c.startswith("feature")]].to_numpy()
    if not np.isfinite(features).all() or len(df) != N_BARS:
        raise AssertionError(f"market {name!r}: non-finite features or wrong length")
    return df


@functools.cache
def market_frame(name: str) -> pd.DataFrame:
    """`generate(name)`, built once per process (callers must not modify it)."""
    return generate(name)
