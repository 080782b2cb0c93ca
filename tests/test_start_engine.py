"""`tools/docker/start-engine.sh --stop` puts the host back as the start found it.

The engine runs in its own network and mount namespaces (`unshare --net --mount`) with its own
socket, data and exec roots, so the bridge, iptables chains and ip_forward it changes are the
namespace's: an engine already running on the host is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools/docker/start-engine.sh"

pytestmark = pytest.mark.slow

# Runs inside the namespaces: snapshot, start, check that it changed things, stop, compare.
SCENARIO = r"""
set -euo pipefail
snapshot() {
    echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
    ip -o link show | awk -F': ' '{print "link " $2}' | cut -d@ -f1
    for t in filter nat mangle raw; do iptables -t "$t" -S | sed "s/^/$t /"; done
    mountpoint -q "$LDM_DOCKER_DATA" && echo "mounted $LDM_DOCKER_DATA" || true
}
echo 0 >/proc/sys/net/ipv4/ip_forward  # dockerd turns it on: --stop must turn it off again
snapshot >"$WORK/before"
bash "$SCRIPT" --export
snapshot >"$WORK/running"
bash "$SCRIPT" --stop
snapshot >"$WORK/after"
"""


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    return probe.returncode == 0 and shutil.which("iptables") is not None


@pytest.mark.skipif(not _namespaces_work(), reason="needs root, dockerd, iptables and unshare")
def test_stop_undoes_the_bridge_the_chains_and_ip_forward():
    work = Path(tempfile.mkdtemp(prefix="ldm-eng-", dir="/tmp"))  # socket paths stay short
    env = {
        **os.environ,
        "WORK": str(work),
        "SCRIPT": str(SCRIPT),
        "LDM_DOCKER_SOCK": str(work / "docker.sock"),
        "LDM_DOCKER_DATA": str(work / "data"),
        "LDM_DOCKER_EXEC": str(work / "exec"),
        "LDM_DOCKER_LOG": str(work / "dockerd.log"),
        "LDM_DOCKER_DRIVER": "vfs",
        "LDM_DOCKER_NO_INSTALL": "1",
    }
    try:
        done = subprocess.run(
            ["unshare", "--net", "--mount", "--propagation", "private", "bash", "-c", SCENARIO],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        before, running, after = (
            (work / name).read_text().splitlines() for name in ("before", "running", "after")
        )
        # the engine did set things up in the namespace...
        assert "ip_forward 1" in running and "link docker0" in running
        assert "filter -N DOCKER" in running and "nat -N DOCKER" in running
        assert any("MASQUERADE" in line for line in running)
        # ...and --stop took every one of them back
        assert after == before, "\n".join(sorted(set(after) ^ set(before)))
        assert "stopped; the host is as it was" in done.stderr
        assert not (work / "docker.sock").exists() and not (work / "exec.ldm-state").exists()
        again = subprocess.run(
            ["bash", str(SCRIPT), "--stop"], env=env, capture_output=True, text=True
        )
        assert again.returncode == 0 and "nothing to stop" in again.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
