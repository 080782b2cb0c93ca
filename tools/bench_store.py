"""Benchmark: window sampling from a store URL (after warm-up) against local disk, same run.

Usage: uv run python tools/bench_store.py [--rows 100000] [--envs 8] [--seconds 3]
       [--url s3://bucket/prefix]

Writes the synthetic `cartpole` dataset of tools/bench_sampler.py (`--envs` runs of `--rows`
rows), publishes it to a store, and measures `WindowSampler.sample()` (batch 32 x 2048 and
256 x 64, best of 5 trials) on the local folder and on the store URL. Without `--url` the store
is a `moto_server` S3 process started here (the one the tests use); with `--url` it is yours
(credentials and `AWS_ENDPOINT_URL` from the environment).

The store's warm-up (the first sampler: the index and the selected shards pulled into the
bounded cache, `ldm_model.data.store_cache`) is timed apart; after it, windows come from the
cached files, so the bar (issue 14: >= 0.5x local disk after warm-up) measures what the cache
costs the sampler, not the network.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_sampler import timed, write_dataset
from rich.console import Console
from rich.table import Table

from ldm_envs.store import publish_dataset
from ldm_model.data import WindowSampler

SHAPES = ((32, 2048), (256, 64))


@contextlib.contextmanager
def local_s3(log_dir: Path):
    """A moto_server S3 bucket for the run: its URL (the environment points at it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.ldm_envs.store_server import S3_ENV, make_bucket, moto_server

    with moto_server(log_dir) as endpoint:
        os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
        yield f"s3://{make_bucket(endpoint)}/bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per env")
    parser.add_argument("--envs", type=int, default=8, help="envs (one run each)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--url", default=None, help="a store URL (default: a local moto S3)")
    args = parser.parse_args()
    console = Console(width=120)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    os.environ["LDM_HOME"] = str(tmp / "home")  # the store cache: fresh, so warm-up is cold
    try:
        local = tmp / "local"
        with console.status(f"writing {args.envs} envs x {args.rows} rows"):
            size = write_dataset(local, "cartpole", args.envs, args.rows)
        store = contextlib.nullcontext(args.url) if args.url else local_s3(tmp)
        with store as url:
            with console.status(f"publishing {size / 2**20:.0f} MiB to {url}"):
                start = time.perf_counter()
                publish_dataset(local, url)
                published = time.perf_counter() - start
            title = f"window sampling: {url} against local disk ({os.cpu_count()} CPUs)"
            table = Table(title=title)
            for column in ("B x T", "local M/s", "store M/s", "store/local"):
                table.add_column(column, justify="right")
            start = time.perf_counter()
            WindowSampler(url, context=SHAPES[0][1]).close()  # warm-up: fills the cache
            warmup = time.perf_counter() - start
            for b, t in SHAPES:
                rates = {}
                for name, root in (("local", str(local)), ("store", url)):
                    sampler = WindowSampler(root, context=t)
                    with console.status(f"{name} {b}x{t}"):
                        per = timed(lambda i, s=sampler, b=b: s.sample(i, b), args.seconds)
                    sampler.close()
                    rates[name] = b * t / per / 1e6
                table.add_row(
                    f"{b} x {t}",
                    f"{rates['local']:.2f}",
                    f"{rates['store']:.2f}",
                    f"{rates['store'] / rates['local']:.2f}x",
                )
        console.print(table)
        console.print(
            f"dataset {size / 2**20:.1f} MiB: published in {published:.1f} s, warm-up (index "
            f"and shards into the cache) {warmup:.1f} s"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
