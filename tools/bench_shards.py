"""Benchmark: shard write throughput, random window reads and peak memory.

Usage: uv run python tools/bench_shards.py [--rows 1000000] [--image-rows 50000]
       [--windows 64x64,8x2048] [--seconds 2] [--dir DIR]

Writes a CartPole-like shard (obs 4 x float32, Discrete(2) actions) and an image shard
(64x64x3 uint8, Discrete(15)), then samples batches of B windows of C consecutive transitions at
random offsets, two ways: `views` (ShardReader.rows() per window, the indexing cost alone) and
`batch` (the windows copied into (B, C, ...) arrays of obs, action, reward and terminated, what
a trainer consumes). Each phase runs in its own process so that its peak RSS
(resource.getrusage) is its own. Figures go into packages/ldm-envs/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1024 * 1024


def proc_status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in bytes (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_meta(kind: str) -> Any:
    from ldm_envs.dataset import ShardMeta
    from ldm_envs.spaces import BoxSpace, DiscreteSpace

    if kind == "vector":
        obs = BoxSpace(shape=(4,), low=-np.inf, high=np.inf)
        act = DiscreteSpace(n=2)
    else:
        obs = BoxSpace(shape=(64, 64, 3), dtype="uint8", low=0, high=255)
        act = DiscreteSpace(n=15)
    return ShardMeta(
        library="bench",
        env_id=f"Bench{kind.title()}-v0",
        candidate="random",
        seed=0,
        run_key=f"bench/{kind}",
        observation_space=obs,
        action_space=act,
        created=time.time(),
    )


class EpisodeClock:
    """Episode/step numbers and done flags for consecutive chunks (lengths 10..500)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.episode = 0
        self.step = 0
        self.length = int(self.rng.integers(10, 501))

    def chunk(self, n: int) -> tuple[np.ndarray, ...]:
        episode = np.empty(n, np.int64)
        step = np.empty(n, np.int64)
        term = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        i = 0
        while i < n:
            take = min(n - i, self.length - self.step)
            episode[i : i + take] = self.episode
            step[i : i + take] = np.arange(self.step, self.step + take)
            i += take
            self.step += take
            if self.step == self.length:
                (trunc if self.length == 500 else term)[i - 1] = True
                self.episode += 1
                self.step = 0
                self.length = int(self.rng.integers(10, 501))
        return episode, step, term, trunc


def phase_write(kind: str, path: Path, rows: int, chunk: int, batch_rows: int) -> dict[str, Any]:
    from ldm_envs.dataset import ShardWriter

    meta = make_meta(kind)
    rng = np.random.default_rng(0)
    obs: np.ndarray
    if kind == "vector":
        obs = rng.standard_normal((chunk, 4)).astype(np.float32)
        act = rng.integers(0, 2, chunk)
    else:
        obs = rng.integers(0, 256, (chunk, 64, 64, 3), dtype=np.uint8)
        act = rng.integers(0, 15, chunk)
    reward = np.ones(chunk, np.float32)
    clock = EpisodeClock(1)
    baseline = proc_status().get("VmRSS", 0)
    peak_anon = 0
    t0 = time.perf_counter()
    with ShardWriter(path, meta, batch_rows=batch_rows) as writer:
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            episode, step, term, trunc = clock.chunk(n)
            writer.append(obs[:n], act[:n], reward[:n], term, trunc, episode, step)
            done += n
            peak_anon = max(peak_anon, proc_status().get("RssAnon", 0))
    elapsed = time.perf_counter() - t0
    size = path.stat().st_size
    return {
        "phase": f"write-{kind}",
        "rows": rows,
        "file_mib": size / MiB,
        "seconds": elapsed,
        "mib_per_s": size / MiB / elapsed,
        "rows_per_s": rows / elapsed,
        "batch_mib": size / max(rows, 1) * batch_rows / MiB,
        "baseline_rss_mib": baseline / MiB,
        "peak_rss_mib": peak_rss() / MiB,
        "peak_anon_mib": peak_anon / MiB,
    }


def phase_read(path: Path, windows: list[tuple[int, int]], seconds: float) -> dict[str, Any]:
    from ldm_envs.dataset import ShardReader

    baseline = proc_status().get("VmRSS", 0)
    t0 = time.perf_counter()
    reader = ShardReader(path)
    open_s = time.perf_counter() - t0
    n = reader.num_rows
    rng = np.random.default_rng(2)
    results = []
    peak_anon = 0
    for b, c in windows:
        for mode in ("views", "batch"):
            if mode == "batch":
                out = {}
                for name in ("obs", "action", "reward", "terminated"):
                    dtype, shape = reader.column_layout(name)
                    out[name] = np.empty((b, c, *shape), dtype)
            iters = 0
            t0 = time.perf_counter()
            while True:
                starts = rng.integers(0, n - c + 1, b)
                for i, s in enumerate(starts.tolist()):
                    window = reader.rows(s, s + c)
                    if mode == "batch":
                        for name, arr in out.items():
                            arr[i] = window[name]
                iters += 1
                if iters % 8 == 0:
                    peak_anon = max(peak_anon, proc_status().get("RssAnon", 0))
                    if time.perf_counter() - t0 >= seconds:
                        break
            elapsed = time.perf_counter() - t0
            results.append(
                {
                    "B": b,
                    "C": c,
                    "mode": mode,
                    "transitions_per_s": b * c * iters / elapsed,
                    "batches_per_s": iters / elapsed,
                }
            )
            if mode == "batch":
                del out
    # reference: copying the same bytes between two anonymous arrays (memory bandwidth)
    b, c = windows[0]
    row_bytes = sum(
        reader.column_layout(k)[0].itemsize * math.prod(reader.column_layout(k)[1])
        for k in ("obs", "action", "reward", "terminated")
    )
    src = np.ones(b * c * row_bytes, np.uint8)
    dst = np.empty_like(src)
    reps = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < min(seconds, 0.5):
        np.copyto(dst, src)
        reps += 1
    memcpy_gib_s = src.nbytes * reps / (time.perf_counter() - t0) / 1024**3
    del src, dst
    status = proc_status()
    return {
        "phase": f"read-{path.stem}",
        "row_bytes": row_bytes,
        "memcpy_gib_s": memcpy_gib_s,
        "rows": n,
        "file_mib": path.stat().st_size / MiB,
        "open_ms": open_s * 1000,
        "windows": results,
        "baseline_rss_mib": baseline / MiB,
        "peak_rss_mib": peak_rss() / MiB,
        "peak_anon_mib": peak_anon / MiB,
        "end_rss_file_mib": status.get("RssFile", 0) / MiB,
    }


def run_phase(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"phase {args[0]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="CartPole-like rows")
    parser.add_argument("--image-rows", type=int, default=50_000, help="64x64x3 image rows")
    parser.add_argument("--batch-rows", type=int, default=8192, help="rows per record batch")
    parser.add_argument("--windows", default="64x64,8x2048", help="BxC,... window batches")
    parser.add_argument("--seconds", type=float, default=2.0, help="per read configuration")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        name, *rest = args.phase
        if name == "write":
            kind, path, rows, chunk, batch_rows = rest
            result = phase_write(kind, Path(path), int(rows), int(chunk), int(batch_rows))
        else:
            path, windows, seconds = rest
            parsed = [tuple(int(x) for x in w.split("x")) for w in windows.split(",")]
            result = phase_read(Path(path), parsed, float(seconds))  # type: ignore[arg-type]
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="bench-shards-", dir=args.dir) as tmp:
        folder = Path(tmp)
        results = []
        for kind, rows, chunk in (("vector", args.rows, 2048), ("image", args.image_rows, 256)):
            path = folder / f"{kind}.arrow"
            w = run_phase(["write", kind, str(path), str(rows), str(chunk), str(args.batch_rows)])
            r = run_phase(["read", str(path), args.windows, str(args.seconds)])
            results += [w, r]
            print(
                f"write {kind}: {rows} rows, {w['file_mib']:.0f} MiB in {w['seconds']:.2f} s = "
                f"{w['mib_per_s']:.0f} MiB/s ({w['rows_per_s'] / 1e6:.2f} M rows/s); "
                f"one batch = {w['batch_mib']:.1f} MiB; RSS baseline {w['baseline_rss_mib']:.0f}"
                f" MiB, peak {w['peak_rss_mib']:.0f} MiB (anon {w['peak_anon_mib']:.0f} MiB)"
            )
            print(
                f"read  {kind}: open {r['open_ms']:.1f} ms; RSS baseline "
                f"{r['baseline_rss_mib']:.0f} MiB, peak {r['peak_rss_mib']:.0f} MiB (anon "
                f"{r['peak_anon_mib']:.0f} MiB; mapped file pages at the end "
                f"{r['end_rss_file_mib']:.0f} MiB)"
            )
            for win in r["windows"]:
                gib_s = win["transitions_per_s"] * r["row_bytes"] / 1024**3
                print(
                    f"      B={win['B']:<3} C={win['C']:<5} {win['mode']:<5} "
                    f"{win['transitions_per_s'] / 1e6:8.2f} M transitions/s "
                    f"({win['batches_per_s']:.0f} batches/s"
                    + (f", {gib_s:.2f} GiB/s copied)" if win["mode"] == "batch" else ")")
                )
            print(
                f"      memcpy reference: {r['memcpy_gib_s']:.2f} GiB/s "
                f"({r['row_bytes']} bytes per transition copied)"
            )
        if os.environ.get("BENCH_JSON"):
            Path(os.environ["BENCH_JSON"]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
