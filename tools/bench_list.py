"""Benchmark: the wall time of `ldm-envs list` (and `list --json`) with 20 libraries.

Usage: uv run python tools/bench_list.py [--libraries 20] [--rounds 5]

`list` must stay under 2 seconds with 20 libraries. This makes the installed plugins up to
`--libraries` by copying the largest installed manifests under new names, each copy a real
distribution (`ldm-envlib-bench-copy-N`, a `.dist-info` with its `ldm.env_libraries` entry
point on `PYTHONPATH`, found by `importlib.metadata` as an installed plugin is), and gives every
library a saved check per backend in a fresh data home, so `list` reads and formats all of it.
It then times the real command, a fresh process each round (imports included), and prints the
median and the slowest round. Figures go into packages/ldm-envs/README.md.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

from ldm_envs.checker import EnvCheck, LibraryCheck
from ldm_envs.health import HEALTH_BACKENDS
from ldm_envs.plugins import registry

LIMIT_SECONDS = 2.0


def _copy_plugins(root: Path, count: int) -> None:
    """`count` more plugins: the largest installed manifests again, renamed."""
    reg = registry()
    sources = sorted(
        (reg.entry(n) for n in reg.names()), key=lambda e: len(e.spec.envs), reverse=True
    )
    for i in range(count):
        entry = sources[i % len(sources)]
        name = f"bench-copy-{i + 1}"
        module = f"ldm_envlib_bench_copy_{i + 1}"
        data = yaml.safe_load(entry.source.read_text()) if entry.source else None
        if data is None:
            data = entry.spec.model_dump(mode="json")
        data["name"] = name
        (root / f"{module}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (root / f"{module}.py").write_text(
            f"from pathlib import Path\nMANIFEST = Path(__file__).with_name('{module}.yaml')\n"
        )
        info = root / f"{module}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: ldm-envlib-{name}\nVersion: 0.1.0\n"
        )
        (info / "entry_points.txt").write_text(f"[ldm.env_libraries]\n{name} = {module}:MANIFEST\n")


def _write_checks(home: Path) -> int:
    """A saved full check per library and backend, every env passing; returns the libraries."""
    checks = home / "checks"
    checks.mkdir(parents=True)
    reg = registry(refresh=True)  # now with the copies: their folder is on sys.path
    for name in reg.names():
        for backend in HEALTH_BACKENDS:
            report = LibraryCheck(
                library=name,
                backend=backend,
                ok=True,
                seconds=60.0,
                when=time.time() - 3600,
                envs=[
                    EnvCheck(env_id=e, ok=True, steps=2000, steps_per_second=1000.0 + i)
                    for i, e in enumerate(reg.get(name).env_ids)
                ],
            )
            (checks / f"{name}-{backend}.json").write_text(report.model_dump_json(indent=2))
    return len(reg.names())


def _time(cmd: list[str], env: dict[str, str], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main(
    libraries: Annotated[int, typer.Option(help="libraries to list in all")] = 20,
    rounds: Annotated[int, typer.Option(help="timed runs of each command")] = 5,
) -> None:
    """Time `ldm-envs list` and `list --json` over `libraries` installed libraries."""
    installed = len(registry().names())
    with tempfile.TemporaryDirectory() as tmp:
        plugins_dir, home = Path(tmp) / "plugins", Path(tmp) / "home"
        plugins_dir.mkdir()
        _copy_plugins(plugins_dir, max(0, libraries - installed))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(plugins_dir), os.environ.get("PYTHONPATH")])
            ),
            "LDM_HOME": str(home),
            "COLUMNS": "120",
        }
        env.pop("LDM_TEST_PLUGINS", None)
        sys.path.insert(0, str(plugins_dir))
        importlib.invalidate_caches()
        listed = _write_checks(home)
        exe = [sys.executable, "-m", "ldm_envs.cli"]
        shown = json.loads(
            subprocess.run(
                [*exe, "list", "--json"], env=env, capture_output=True, check=True
            ).stdout
        )
        if len(shown["libraries"]) != listed:
            raise SystemExit(f"list shows {len(shown['libraries'])} libraries, not {listed}")
        engine = "docker engine answered" if shown["docker_engine"] else "no docker engine"
        for label, cmd in (("list", [*exe, "list"]), ("list --json", [*exe, "list", "--json"])):
            times = _time(cmd, env, rounds)
            verdict = "ok" if max(times) < LIMIT_SECONDS else f"OVER {LIMIT_SECONDS} s"
            print(
                f"ldm-envs {label}: {listed} libraries ({installed} installed + "
                f"{listed - installed} copies), median {statistics.median(times):.2f} s, "
                f"slowest {max(times):.2f} s of {rounds} rounds, {engine} ({verdict})"
            )


if __name__ == "__main__":
    typer.run(main)
