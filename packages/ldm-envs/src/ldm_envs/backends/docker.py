"""The docker backend: one image per library, built with the docker SDK, tagged by manifest hash.

Workers run with no network, limited memory and pids, as uid 1000, and reach the host through
the Unix socket of `spawn_socket_worker`, whose folder is bind-mounted into the container.
Images derive from a base image: the manifest's `base_image` for users with a registry, else a
locally built `ldm-base:py<X.Y>` (debootstrap + docker import, see `docker_base/`).

Builds need PyPI from inside the build container. Where the network intercepts TLS, pass the
CA bundle to trust (`ca_bundle=` / `--ca-bundle`, else `LDM_DOCKER_CA_BUNDLE`, else
`SSL_CERT_FILE`); it is copied into the build context, never baked into the final layers' env.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

import ldm_envs.worker as worker_module
from ldm_envs.backends.base import (
    SOCKET_NAME,
    Backend,
    copy_local_packages,
    spawn_socket_worker,
)
from ldm_envs.backends.docker_base import (
    BaseImageError,
    base_image_exists,
    build_base_image,
    build_image,
)
from ldm_envs.errors import BuildError, LDMEnvsError
from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.paths import docker_dir
from ldm_envs.protocol import WorkerClient, WorkerProcess

if TYPE_CHECKING:
    import docker

CONTAINER_SOCKET_DIR = "/ldm/sock"
WORKER_PATH = "/opt/ldm/worker.py"
VENV_PYTHON = "/opt/ldm/venv/bin/python"
IMAGE_REPO = "ldm-envlib"


def connect(base_url: str | None = None) -> docker.DockerClient:
    """A client for `base_url`, `$DOCKER_HOST` or the default socket, checked with a ping.

    Raises:
        LDMEnvsError: when no engine answers, saying how to start one.
    """
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a dependency of ldm-envs
        raise LDMEnvsError("the docker backend needs the docker SDK: pip install docker") from exc
    url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=url, timeout=600)
        client.ping()
    except Exception as exc:
        raise LDMEnvsError(
            f"no Docker engine answers at {url} ({type(exc).__name__}); start one with "
            "`bash tools/docker/start-engine.sh` or set DOCKER_HOST"
        ) from None
    return client


def default_ca_bundle() -> Path | None:
    """The CA bundle builds should trust: `$LDM_DOCKER_CA_BUNDLE`, else `$SSL_CERT_FILE`."""
    for var in ("LDM_DOCKER_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


class ContainerWorker(WorkerProcess):
    """A worker container; its logs and exit state explain a failure."""

    def __init__(self, container: Any, library: str) -> None:
        self.container = container
        self.description = f"{library} docker worker ({container.short_id})"

    def poll(self) -> str | None:
        try:
            self.container.reload()
        except Exception:
            return "container is gone"
        state = self.container.attrs.get("State", {})
        if state.get("Running"):
            return None
        if state.get("OOMKilled"):
            return "killed: out of memory (raise the backend's mem_limit)"
        return f"exited with code {state.get('ExitCode')}"

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.container.remove(force=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return self.container.logs(tail=lines).decode(errors="replace").strip()
        except Exception:
            return ""


class DockerBackend(Backend):
    """Builds `ldm-envlib-<library>:<hash>` images and runs one container per worker."""

    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        ca_bundle: Path | None = None,
        mem_limit: str = "4g",
        pids_limit: int = 512,
        console: Console | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        super().__init__(console=console, start_timeout=start_timeout)
        self.base_url = base_url
        self.ca_bundle = ca_bundle or default_ca_bundle()
        self.mem_limit = mem_limit
        self.pids_limit = pids_limit
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        """The engine connection, opened on first use."""
        if self._client is None:
            self._client = connect(self.base_url)
        return self._client

    def base_image(self, spec: EnvLibrarySpec) -> str:
        """The manifest's base image, or the local `ldm-base:py<X.Y>`."""
        major_minor = ".".join(spec.environment.python.split(".")[:2])
        return spec.environment.base_image or f"ldm-base:py{major_minor}"

    def image_tag(self, spec: EnvLibrarySpec) -> str:
        """Tag by the hash of the environment block, the base image and the worker's source."""
        worker_hash = hashlib.sha256(Path(worker_module.__file__).read_bytes()).hexdigest()[:12]
        digest = spec.environment_hash(self.base_image(spec), worker_hash)
        return f"{IMAGE_REPO}-{spec.name}:{digest}"

    def is_ready(self, spec: EnvLibrarySpec) -> bool:
        return base_image_exists(self.client, self.image_tag(spec))

    def describe(self, spec: EnvLibrarySpec) -> str:
        return self.image_tag(spec)

    def ensure_base(self, spec: EnvLibrarySpec) -> str:
        """Build the local base image when the manifest names none and it is missing."""
        tag = self.base_image(spec)
        if base_image_exists(self.client, tag):
            return tag
        if spec.environment.base_image is not None:
            raise BuildError(
                spec.name,
                "finding the base image",
                f"base image {tag!r} is not in the engine and Docker Hub may be unreachable; "
                "pull or load it first",
            )
        return build_base(spec.environment.python, console=self.console, client=self.client)

    def _dockerfile(self, spec: EnvLibrarySpec, base: str, local: list[Path]) -> str:
        env_block = spec.environment
        cert = "SSL_CERT_FILE=/opt/ldm/ca.crt " if self.ca_bundle else ""
        lines = [f"FROM {base}", "USER root"]
        if env_block.apt_packages:
            pkgs = " ".join(env_block.apt_packages)
            lines.append(
                "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
                f"--no-install-recommends {pkgs} && rm -rf /var/lib/apt/lists/*"
            )
        lines.append("COPY ldm /opt/ldm")
        install = (
            f"{cert}uv pip install --compile-bytecode --python {VENV_PYTHON} "
            "-r /opt/ldm/requirements.txt"
        ) + (
            " --build-constraint /opt/ldm/build-constraints.txt"
            if env_block.build_constraints
            else ""
        )
        install += "".join(f" /opt/ldm/local/{path.name}" for path in local)
        lines.append(
            f"RUN {cert}uv venv --seed --python /opt/python/bin/python3 /opt/ldm/venv "
            f"&& {install} && {VENV_PYTHON} -c 'import numpy' && rm -f /opt/ldm/ca.crt "
            "&& rm -rf /root/.cache"
        )
        for key, value in env_block.env_vars.items():
            lines.append(f"ENV {key}={value!r}".replace("'", '"'))
        lines += ["ENV OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1", "USER 1000:1000", "WORKDIR /home/ldm"]
        return "\n".join(lines) + "\n"

    def prepare(self, spec: EnvLibrarySpec, *, rebuild: bool = False) -> str:
        tag = self.image_tag(spec)
        if not rebuild and self.is_ready(spec):
            return tag
        try:
            base = self.ensure_base(spec)
            root = docker_dir() / "contexts"
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f"{spec.name}-", dir=root) as ctx:
                context = Path(ctx)
                files = context / "ldm"
                files.mkdir()
                (files / "requirements.txt").write_text("\n".join(spec.environment.requirements))
                if spec.environment.build_constraints:
                    (files / "build-constraints.txt").write_text(
                        "\n".join(spec.environment.build_constraints)
                    )
                shutil.copy2(worker_module.__file__, files / "worker.py")
                local = copy_local_packages(spec, files / "local")
                if self.ca_bundle:
                    shutil.copy2(self.ca_bundle, files / "ca.crt")
                (context / "Dockerfile").write_text(self._dockerfile(spec, base, local))
                log: list[str] = []
                with self.console.status(f"[bold]building image {tag}[/]"):
                    build_image(
                        self.client,
                        context,
                        tag,
                        step="build",
                        emit=log.append,
                        network_mode="bridge",
                    )
        except BaseImageError as exc:
            raise BuildError(spec.name, f"docker {exc.step}", str(exc)) from None
        self.console.print(f"[green]built[/] image {tag}")
        return tag

    def spawn(self, spec: EnvLibrarySpec) -> WorkerClient:
        tag = self.prepare(spec)

        def start(sock_dir: Path) -> WorkerProcess:
            container = self.client.containers.run(
                tag,
                [VENV_PYTHON, WORKER_PATH, "--connect", f"{CONTAINER_SOCKET_DIR}/{SOCKET_NAME}"],
                detach=True,
                network_mode="none",
                mem_limit=self.mem_limit,
                memswap_limit=self.mem_limit,
                pids_limit=self.pids_limit,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                init=True,
                user="1000:1000",
                volumes={str(sock_dir): {"bind": CONTAINER_SOCKET_DIR, "mode": "rw"}},
                labels={"ldm.library": spec.name},
            )
            return ContainerWorker(container, spec.name)

        return spawn_socket_worker(spec.name, start, self.start_timeout)


def build_base(
    python: str,
    *,
    tag: str | None = None,
    console: Console | None = None,
    client: docker.DockerClient | None = None,
) -> str:
    """Build `ldm-base:py<X.Y>` locally from debootstrap and a host interpreter."""
    console = console or Console(stderr=True)
    client = client or connect()
    with console.status(f"[bold]building base image for python {python}[/] (debootstrap once)"):
        try:
            return build_base_image(
                client,
                python,
                tag=tag,
                cache_dir=docker_dir() / "base",
                log=lambda line: console.log(line, highlight=False),
            )
        except BaseImageError as exc:
            raise BuildError("(base image)", f"base image {exc.step}", str(exc)) from None
