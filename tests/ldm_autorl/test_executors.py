"""ldm_autorl.executors: real processes (and a real local Ray) running tasks_for_tests."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ldm_autorl.executors import (
    Executor,
    LocalExecutor,
    RayExecutor,
    TaskResult,
    TaskSpec,
    make_executor,
)

T = "tests.ldm_autorl.tasks_for_tests"


def spec(key: str, fn: str, timeout_s: float = 120, retries: int = 0, **kwargs: object) -> TaskSpec:
    return TaskSpec(
        key=key, target=f"{T}:{fn}", kwargs=kwargs, timeout_s=timeout_s, retries=retries
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_task_spec_validation() -> None:
    with pytest.raises(ValueError, match=r"package\.module:function"):
        TaskSpec(key="a", target="no_colon")
    with pytest.raises(ValueError, match="JSON"):
        TaskSpec(key="a", target="m:f", kwargs={"x": object()})
    with pytest.raises(ValueError):
        TaskSpec(key="", target="m:f")
    assert TaskSpec(key="a", target="m:f").retries == 1


def test_make_executor() -> None:
    assert isinstance(make_executor("local", max_workers=2), LocalExecutor)
    assert isinstance(make_executor("ray"), RayExecutor)
    assert isinstance(make_executor("local"), Executor)
    with pytest.raises(ValueError, match="choose one of: local, ray"):
        make_executor("dask")
    with pytest.raises(ValueError, match="address"):
        make_executor("local", address="auto")


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        LocalExecutor(show_progress=False).run([spec("a", "ok"), spec("a", "ok")])
    assert LocalExecutor().run([]) == []


def test_local_executor_outcomes(tmp_path: Path) -> None:
    state = tmp_path / "flaky-state"
    pid_file = tmp_path / "grandchild.pid"
    tasks = [
        spec("ok", "ok", x=7),
        spec("raise", "fail", message="bad hyperparameters"),
        spec("hang", "hang_with_grandchild", timeout_s=4, pid_file=str(pid_file)),
        spec("exit", "crash", code=7),
        spec("segv", "segfault"),
        spec("flaky", "flaky", retries=1, state_file=str(state)),
        spec("notjson", "not_json"),
    ]
    seen: list[TaskResult] = []
    start = time.monotonic()
    results = LocalExecutor(max_workers=2).run(tasks, on_result=seen.append, description="test")
    elapsed = time.monotonic() - start
    by_key = {r.key: r for r in results}
    assert [r.key for r in results] == [t.key for t in tasks]
    assert sorted(r.key for r in seen) == sorted(by_key)

    good = by_key["ok"]
    assert good.ok and good.value["x"] == 7 and good.attempts == 1 and good.error == ""
    assert good.value["pid"] != os.getpid()

    raised = by_key["raise"]
    assert not raised.ok and raised.attempts == 1
    assert "ValueError: bad hyperparameters" in raised.error
    assert "Traceback" in raised.error

    hung = by_key["hang"]
    assert not hung.ok and "timed out after 4 s" in hung.error
    # killed at its 4 s timeout, not after the 3600 s sleep; the upper bound leaves a loaded
    # CI machine 3x the timeout
    assert 4 <= hung.seconds < 3 * 4
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(grandchild), "the hung task's own child survived the timeout"

    assert not by_key["exit"].ok and "exited with code 7" in by_key["exit"].error
    assert "-11 (SIGSEGV)" in by_key["segv"].error

    flaky = by_key["flaky"]
    assert flaky.ok and flaky.value == "recovered" and flaky.attempts == 2
    assert "not JSON-able" in by_key["notjson"].error
    assert elapsed < 120


def test_retries_report_every_attempt(tmp_path: Path) -> None:
    results = LocalExecutor(max_workers=1, show_progress=False).run(
        [spec("twice", "fail", retries=2, message="always")]
    )
    (r,) = results
    assert not r.ok and r.attempts == 3
    assert r.error.startswith("attempt 1: ValueError: always\nattempt 2: ValueError: always\n")
    assert "attempt 3: Traceback" in r.error


def test_forked_attempts_see_the_callers_environment_of_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python keeps one fork server per process, with the environment it started with; an
    attempt must still see what the caller has now (a test's or a notebook's new
    `MLFLOW_TRACKING_URI` once sent every run to the store of the first executor)."""
    name = "LDM_TEST_EXECUTOR_VALUE"
    seen = []
    for value, cwd in (("first", tmp_path), ("second", tmp_path / "later")):
        cwd.mkdir(exist_ok=True)
        monkeypatch.setenv(name, value)
        monkeypatch.chdir(cwd)
        executor = LocalExecutor(max_workers=1, show_progress=False, preload=["json"])
        (result,) = executor.run([spec(value, "environment", name=name)])
        assert result.ok, result.error
        seen.append(result.value)
    assert seen == [
        {"value": "first", "cwd": str(tmp_path)},
        {"value": "second", "cwd": str(tmp_path / "later")},
    ]


def test_logs_go_to_log_dir_and_errors_quote_them(tmp_path: Path) -> None:
    (r,) = LocalExecutor(log_dir=tmp_path / "logs", show_progress=False).run(
        [spec("seg/v", "segfault")]
    )
    assert not r.ok and "SIGSEGV" in r.error
    assert "Fatal Python error: Segmentation fault" in r.error  # faulthandler, via the log tail
    assert (tmp_path / "logs" / "seg_v.1.log").is_file()


def test_a_failing_callback_stops_the_run_and_kills_attempts(tmp_path: Path) -> None:
    pid_file = tmp_path / "gc.pid"

    def explode(result: TaskResult) -> None:
        # Fail only once the slow attempt has started its grandchild, so the kill is checked.
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise OSError("disk full")

    tasks = [spec("quick", "ok"), spec("slow", "hang_with_grandchild", pid_file=str(pid_file))]
    with pytest.raises(OSError, match="disk full"):
        LocalExecutor(max_workers=2, show_progress=False).run(tasks, on_result=explode)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(grandchild)


@pytest.mark.slow
def test_ray_executor(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    executor = RayExecutor(num_cpus=2, object_store_memory=100 * 1024**2)
    try:
        tasks = [
            spec("ok", "ok", x=1),
            spec("raise", "fail", message="ray says no"),
            spec("hang", "hang", timeout_s=8),
            spec("exit", "crash", code=5),
            spec("flaky", "flaky", retries=1, state_file=str(tmp_path / "state")),
        ]
        seen: list[str] = []
        results = executor.run(tasks, on_result=lambda r: seen.append(r.key), description="ray")
        assert ray.is_initialized()
        by_key = {r.key: r for r in results}
        assert sorted(seen) == sorted(by_key)
        assert by_key["ok"].ok and by_key["ok"].value["x"] == 1
        assert by_key["ok"].value["pid"] != os.getpid()
        assert not by_key["raise"].ok and "ValueError: ray says no" in by_key["raise"].error
        assert not by_key["hang"].ok and "timed out after 8 s" in by_key["hang"].error
        assert by_key["hang"].seconds < 3 * 8  # its 8 s timeout, not the 3600 s sleep
        assert not by_key["exit"].ok and "died" in by_key["exit"].error
        assert by_key["flaky"].ok and by_key["flaky"].attempts == 2
        print(f"\nray init {executor.init_seconds:.1f}s; seconds per task:")
        for r in results:
            print(f"  {r.key}: {r.seconds}s, {r.attempts} attempt(s), {r.error[-200:]!r}")
    finally:
        executor.close()
    assert not ray.is_initialized()


def _descendants(pid: int) -> set[int]:
    """`pid`'s child processes, theirs, and so on (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _listening(pids: set[int]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses of the TCP sockets these processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(cols[1].split(":")[0])
            # each 32-bit word is in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
            addresses.append(ipaddress.ip_address(packed))
    return addresses


def _loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from /proc")
def test_a_local_ray_listens_on_loopback_only() -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray is already connected in this process")
    executor = RayExecutor(num_cpus=1, object_store_memory=80 * 1024**2)
    try:
        (result,) = executor.run([spec("ok", "ok", x=2)], description="ray")
        assert result.ok and result.value["x"] == 2  # a task still runs on the loopback node
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        addresses = _listening(_descendants(os.getpid()) | {os.getpid()})
        assert addresses, "found none of Ray's servers"
        # it used to be `*` (every interface) for the GCS, the raylet and the workers
        assert all(_loopback(a) for a in addresses), [str(a) for a in addresses]
    finally:
        executor.close()
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ  # this process is left alone


def test_importing_is_cheap() -> None:
    code = (
        "import sys, ldm_autorl.executors; "
        "heavy = {'mlflow', 'ray', 'polars', 'matplotlib'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
