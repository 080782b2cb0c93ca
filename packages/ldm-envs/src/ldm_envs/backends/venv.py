"""The venv backend (the default): one uv-made virtualenv per library and requirements hash.

The venv may use another Python than the host's; it holds only the library's requirements, and
the worker runs in it by path. Builds are locked (two processes never build the same venv) and
marked complete only at the end, so an interrupted build is redone, never half-used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

import ldm_envs.worker as worker_module
from ldm_envs.backends.base import (
    SOCKET_NAME,
    Backend,
    copy_local_packages,
    spawn_socket_worker,
)
from ldm_envs.errors import BuildError
from ldm_envs.interpreters import python_request, uv_executable
from ldm_envs.manifest import EnvLibrarySpec, atomic_write_text
from ldm_envs.paths import venvs_dir
from ldm_envs.protocol import WorkerClient, WorkerProcess

READY_MARKER = ".ldm-ready.json"


#: How much of the end of a worker's output `log_tail` reads.
_LOG_TAIL_BYTES = 64 * 1024


class SubprocessWorker(WorkerProcess):
    """A worker subprocess whose output goes to a log we can quote on failure.

    The log is an anonymous temporary file (`tempfile.TemporaryFile`: unlinked at once, or
    never named where the OS allows): nothing is left in the temp dir however the host ends,
    killed at a deadline included. Named logs used to stay behind as empty `/tmp/ldm-*.log`
    files, one per worker of a process that never closed its pool.
    """

    def __init__(self, proc: subprocess.Popen[bytes], log: BinaryIO, library: str) -> None:
        self.proc = proc
        self.log = log
        self.description = f"{library} venv worker (pid {proc.pid})"

    def poll(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            return None
        if code < 0:
            return f"killed by signal {-code}"
        return f"exited with code {code}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.log.close()

    def log_tail(self, lines: int = 30) -> str:
        # pread: the worker writes through the same open file, so its offset is left alone
        try:
            fd = self.log.fileno()
            size = os.fstat(fd).st_size
            start = max(0, size - _LOG_TAIL_BYTES)
            text = os.pread(fd, size - start, start).decode(errors="replace")
        except (OSError, ValueError):  # closed after kill()
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def worker_env(spec: EnvLibrarySpec) -> dict[str, str]:
    """The worker's environment: the host's, one thread per BLAS pool, plus the manifest's."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(spec.environment.env_vars)
    return env


class VenvBackend(Backend):
    """Builds `<data home>/venvs/<library>-<hash>` with uv and runs workers from it."""

    name = "venv"

    def __init__(self, root: Path | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.root = root or venvs_dir()

    def venv_path(self, spec: EnvLibrarySpec) -> Path:
        """Cache key: library name and the hash of its isolated-environment block."""
        return self.root / f"{spec.name}-{spec.environment_hash()}"

    def python_path(self, spec: EnvLibrarySpec) -> Path:
        """The venv's interpreter."""
        return self.venv_path(spec) / "bin" / "python"

    def is_ready(self, spec: EnvLibrarySpec) -> bool:
        return (self.venv_path(spec) / READY_MARKER).exists()

    def describe(self, spec: EnvLibrarySpec) -> str:
        return str(self.venv_path(spec))

    def prepare(self, spec: EnvLibrarySpec, *, rebuild: bool = False) -> str:
        path = self.venv_path(spec)
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if self.is_ready(spec) and not rebuild:
                return str(path)
            self._build(spec, path)
        return str(path)

    def _run(self, spec: EnvLibrarySpec, step: str, cmd: list[str], log: list[str]) -> None:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        log.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            raise BuildError(spec.name, step, proc.stdout + proc.stderr)

    def _check_apt(self, spec: EnvLibrarySpec) -> None:
        """A venv cannot install Debian packages: name the missing ones instead of failing later."""
        if not spec.environment.apt_packages or shutil.which("dpkg-query") is None:
            return
        missing = []
        for pkg in spec.environment.apt_packages:
            out = subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", pkg],
                capture_output=True,
                text=True,
                check=False,
            )
            if "install ok installed" not in out.stdout:
                missing.append(pkg)
        if missing:
            raise BuildError(
                spec.name,
                "checking system packages",
                f"the venv backend needs these Debian packages on the host: {' '.join(missing)}\n"
                f"install them with: sudo apt-get install {' '.join(missing)} "
                "(or use --backend docker, which installs them in the image)",
            )

    def _build(self, spec: EnvLibrarySpec, path: Path) -> None:
        uv = uv_executable()
        self._check_apt(spec)
        env_block = spec.environment
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        log: list[str] = []
        started = time.monotonic()
        with self.console.status(
            f"[bold]building venv for {spec.name}[/] (python {env_block.python})"
        ):
            python = python_request(env_block.python)
            self._run(
                spec,
                f"creating the venv (python {env_block.python})",
                [uv, "venv", "--quiet", "--seed", "--python", python, str(path)],
                log,
            )
            reqs = path / "ldm-requirements.txt"
            reqs.write_text("\n".join(env_block.requirements) + "\n")
            # bytecode now, once: every worker start imports the library (see docker.py too)
            cmd = [
                uv,
                "pip",
                "install",
                "--compile-bytecode",
                "--python",
                str(path / "bin" / "python"),
            ]
            cmd += ["-r", str(reqs)]
            # Local packages resolve together with the pins, from a copy inside the venv: a
            # fresh path per content hash, so uv never reuses a wheel built from older sources.
            cmd += [str(p) for p in copy_local_packages(spec, path / "ldm-local")]
            if env_block.build_constraints:
                constraints = path / "ldm-build-constraints.txt"
                constraints.write_text("\n".join(env_block.build_constraints) + "\n")
                cmd += ["--build-constraint", str(constraints)]
            self._run(spec, "installing the requirements", cmd, log)
            self._run(
                spec,
                "checking the worker's imports",
                [str(path / "bin" / "python"), "-c", "import numpy, json, socket"],
                log,
            )
            freeze = subprocess.run(
                [uv, "pip", "freeze", "--python", str(path / "bin" / "python")],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        (path / "ldm-build.log").write_text("\n".join(log))
        (path / "ldm-freeze.txt").write_text(freeze)
        marker = {
            "library": spec.name,
            "hash": spec.environment_hash(),
            "python": env_block.python,
            "seconds": round(time.monotonic() - started, 1),
        }
        atomic_write_text(path / READY_MARKER, json.dumps(marker, indent=2))
        self.console.print(f"[green]built[/] venv for {spec.name} in {marker['seconds']} s: {path}")

    def spawn(self, spec: EnvLibrarySpec) -> WorkerClient:
        self.prepare(spec)
        python = self.python_path(spec)
        worker_file = Path(worker_module.__file__)

        def start(sock_dir: Path) -> WorkerProcess:
            # closed by SubprocessWorker.kill: it lives as long as the worker
            log = tempfile.TemporaryFile(prefix="ldm-worker-", suffix=".log")  # noqa: SIM115
            try:
                proc = subprocess.Popen(
                    [str(python), str(worker_file), "--connect", str(sock_dir / SOCKET_NAME)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=worker_env(spec),
                    start_new_session=True,
                )
            except BaseException:
                log.close()
                raise
            return SubprocessWorker(proc, log, spec.name)

        return spawn_socket_worker(spec.name, start, self.start_timeout)
