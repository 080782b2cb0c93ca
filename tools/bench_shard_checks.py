"""Benchmark: what checking every read of a shard costs the window sampler (target >= 0.9x).

Usage: uv run python tools/bench_shard_checks.py [--rows 100000] [--envs 8] [--seconds 4]
       [--trials 8] [--first 5] [--dir DIR]

Writes the synthetic datasets of `tools/bench_sampler.py` (`cartpole`: `--envs` runs of Box(4)
float32 / Discrete(2), `--rows` rows each; `mujoco`: 4 runs of Box(17) / Box(6); `image`: 2
runs of 7x7x3 uint8 / Discrete(3), 20k rows each), then measures in the same run, the two
samplers taking turns trial by trial (order alternating) so that a busy machine slows both
alike:

- `steady`: `WindowSampler.sample()` transitions/s (batch x context) with the checks
  (`check_shards=True`, the default: the CRC-32 of each record batch's columns on its first
  read in this process) against the anchor, the same sampler with `check_shards=False`, both
  warmed up (what a training run sees after its first batches). M/s are the best trial of
  each; the ratio is the median over trials of checked/unchecked throughput, each trial's
  pair measured back to back (robust to the machine's load changing between trials);
- `first batches`: a fresh sampler's first `--first` batches (opening the shards, and with the
  checks, CRC-checking every record batch it touches) against a fresh unchecked sampler:
  the ratio of the best times and the extra milliseconds, a one-time cost per process that
  is bounded by the dataset's size (each batch is checked once), not by the steps;
- `verify`: `ShardReader.verify()` over every shard (what `ldm-autorl verify` and the filter's
  pass over a library's shards do), in MiB/s, beside zlib's CRC-32 alone on one buffer.

Figures go into packages/ldm-model/README.md (the sampler) and packages/ldm-envs/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
import bench_sampler  # a sibling script, not a package: its datasets and batch shapes

from ldm_envs.dataset import ShardReader, find_shards
from ldm_model.data import WindowSampler

MiB = 1024 * 1024


def interleaved(
    fns: dict[str, Callable[[int], object]], seconds: float, trials: int
) -> dict[str, list[float]]:
    """Seconds per call of each `fn(i)` in each trial, the functions taking turns.

    The order alternates from trial to trial, so neither always runs first after the other.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    i = 1
    for trial in range(trials):
        order = list(fns) if trial % 2 == 0 else list(fns)[::-1]
        for name in order:
            fn = fns[name]
            calls, start = 0, time.perf_counter()
            while True:
                fn(i)
                i += 1
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / trials and calls >= 2:
                    break
            times[name].append(elapsed / calls)
    return times


def first_batches(root: Path, t: int, b: int, count: int, check: bool) -> float:
    """Seconds for a fresh sampler's first `count` batches (opening included)."""
    start = time.perf_counter()
    sampler = WindowSampler(root, context=t, check_shards=check)
    for step in range(count):
        sampler.sample(step, b)
    sampler.close()
    return time.perf_counter() - start


def verify_rate(root: Path) -> tuple[float, int]:
    """Seconds to `verify()` every shard under `root`, and their bytes."""
    shards = find_shards(root)
    start = time.perf_counter()
    for path in shards:
        with ShardReader(path) as reader:
            reader.verify()
    return time.perf_counter() - start, sum(p.stat().st_size for p in shards)


def crc_rate(size: int = 256 * MiB) -> float:
    """Bytes/s of zlib's CRC-32 alone on one buffer, best of 3."""
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        zlib.crc32(data.data)
        best = min(best, time.perf_counter() - start)
    return size / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per cartpole env")
    parser.add_argument("--envs", type=int, default=8, help="cartpole envs")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--trials", type=int, default=8, help="interleaved trials")
    parser.add_argument("--first", type=int, default=5, help="batches of a fresh sampler")
    parser.add_argument("--dir", type=Path, default=None, help="keep the datasets here")
    parser.add_argument(
        "--only", nargs="*", default=list(bench_sampler.SHAPES), choices=bench_sampler.SHAPES
    )
    args = parser.parse_args()
    console = Console(width=140)
    tmp = Path(tempfile.mkdtemp(prefix="bench-checks-")) if args.dir is None else args.dir
    sizes = {"cartpole": (args.envs, args.rows), "mujoco": (4, args.rows), "image": (2, 20_000)}
    table = Table(title=f"shard checks in the window sampler ({os.cpu_count()} CPUs)")
    for column in (
        "dataset",
        "B x T",
        "unchecked M/s",
        "checked M/s",
        "steady ratio",
        "first batches ratio",
        "first batches +ms",
        "verify MiB/s",
        "dataset MiB",
    ):
        table.add_column(column, justify="right")
    try:
        for kind in args.only:
            root = tmp / kind
            envs, rows = sizes[kind]
            with console.status(f"writing {kind}: {envs} envs x {rows} rows"):
                size = bench_sampler.write_dataset(root, kind, envs, rows)
            with console.status(f"{kind}: verify"):
                seconds, nbytes = verify_rate(root)
            for b, t in bench_sampler.SHAPES[kind]:
                with console.status(f"{kind} {b}x{t}"):
                    plain = WindowSampler(root, context=t, check_shards=False)
                    checked = WindowSampler(root, context=t, check_shards=True)
                    for step in range(20):  # warm up: open shards, first reads checked
                        plain.sample(step, b)
                        checked.sample(step, b)
                    per = interleaved(
                        {
                            "plain": lambda i, s=plain, b=b: s.sample(i, b),
                            "checked": lambda i, s=checked, b=b: s.sample(i, b),
                        },
                        args.seconds,
                        args.trials,
                    )
                    first = {"plain": math.inf, "checked": math.inf}
                    for trial in range(args.trials):
                        for name in list(first) if trial % 2 == 0 else list(first)[::-1]:
                            took = first_batches(root, t, b, args.first, name == "checked")
                            first[name] = min(first[name], took)
                    plain.close()
                    checked.close()
                n = b * t
                ratio = statistics.median(
                    p / c for p, c in zip(per["plain"], per["checked"], strict=True)
                )
                table.add_row(
                    kind,
                    f"{b} x {t}",
                    f"{n / min(per['plain']) / 1e6:.2f}",
                    f"{n / min(per['checked']) / 1e6:.2f}",
                    f"{ratio:.2f}",
                    f"{first['plain'] / first['checked']:.2f}",
                    f"{(first['checked'] - first['plain']) * 1e3:+.0f}",
                    f"{nbytes / seconds / MiB:,.0f}",
                    f"{size / MiB:.0f}",
                )
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    console.print(table)
    console.print(f"zlib CRC-32 alone: {crc_rate() / MiB:,.0f} MiB/s")


if __name__ == "__main__":
    main()
