"""Nothing left in the temp dir by venv workers: not by a restart, not by a host that dies.

Each test points the temp dir (`TMPDIR`) at its own folder, so files of other processes on the
machine do not count, and looks at what is left there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ldm_envs.backends.venv import SubprocessWorker

pytestmark = pytest.mark.slow

HOST = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from ldm_envs.plugins import registry
    from ldm_envs.pool import EnvPool

    pool = EnvPool(registry().get("toy"), "CartPole-v1", num_envs=2, backend="venv",
                   max_restarts=1)
    pool.reset(seed=0)
    os.kill(pool.workers[0].client.hello["pid"], signal.SIGKILL)
    r = pool.step(np.array([0, 1]))  # the worker is restarted
    assert "worker_restarted" in r.infos[0], r.infos
    print(pool.workers[0].client.hello["pid"], flush=True)
    if sys.argv[1] == "die":
        os._exit(0)  # as a task killed at its deadline: the pool is never closed
    pool.close()
    """
)


def ldm_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("ldm-"))


def wait_gone(pid: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} outlived its host")


@pytest.mark.parametrize("ending", ["close", "die"])
def test_restarted_workers_leave_no_log_whether_the_host_closes_or_dies(
    toy, tmp_path: Path, ending: str
) -> None:
    from ldm_envs.backends import get_backend

    get_backend("venv").prepare(toy)  # built here, once, outside the measured temp dir
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = subprocess.run(
        [sys.executable, "-c", HOST, ending],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    wait_gone(int(out.stdout.split()[-1]))  # the worker ends when its host's socket closes
    assert ldm_files(tmp) == []  # used to be one empty ldm-XXXX.log per worker


def test_the_log_is_still_quoted_when_a_worker_fails(tmp_path: Path) -> None:
    import tempfile

    log = tempfile.TemporaryFile(dir=tmp_path)  # noqa: SIM115 - the worker closes it
    code = "import sys; print('ImportError: no module named box2d'); sys.exit(3)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    worker = SubprocessWorker(proc, log, "toy")
    proc.wait(timeout=60)
    assert worker.poll() == "exited with code 3"
    assert worker.log_tail() == "ImportError: no module named box2d"
    assert list(tmp_path.iterdir()) == []  # the log has no name
    worker.kill()
    assert worker.log_tail() == ""  # closed with the worker
    np.testing.assert_equal(log.closed, True)
