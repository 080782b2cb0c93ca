"""A real S3-compatible server (moto's `moto_server`) in its own process, for the store tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

#: Credentials moto accepts; exported so subprocesses (executor tasks) reach the same server.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """Start `moto_server` on a free port; yield its endpoint URL; stop it at the end."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    port = _free_port()
    log = (log_dir / "moto.log").open("wb")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = f"moto_server did not start: see {log_dir / 'moto.log'}"
                    raise RuntimeError(why) from exc
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def make_bucket(endpoint: str) -> str:
    """A fresh bucket on the server; its name."""
    import boto3

    name = f"ldm-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, **_boto_env()).create_bucket(Bucket=name)
    return name


def _boto_env() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def export_env(monkeypatch: object, endpoint: str) -> None:
    """Point every s3fs client (this process and its children) at the server."""
    setenv = monkeypatch.setenv  # type: ignore[attr-defined]
    for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        setenv(key, value)
    os.environ.pop("AWS_PROFILE", None)
