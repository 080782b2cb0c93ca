"""Library health for `ldm-envs list`: what each plugin declares, leaves out, and last passed.

Everything here reads what is already on disk: the manifests (through the registry), the
results `ldm-envs check` saved under the data home (`checks/<library>-<backend>.json`), the
venv's ready marker (a stat) and, for docker, one listing of the engine's `ldm-envlib-*` images.
It never imports a library, starts a worker or opens a venv, so `list` stays under 2 seconds
with 20 libraries (`tools/bench_list.py`). The docker listing speaks the engine's HTTP API
directly over its Unix socket: importing the docker SDK alone would cost a sixth of that budget.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import statistics
from datetime import datetime, timezone
from urllib.parse import quote

from pydantic import BaseModel, Field

from ldm_envs.backends import BACKENDS, get_backend
from ldm_envs.checker import LibraryCheck, last_check
from ldm_envs.errors import LDMError
from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.plugins import LibraryRegistry

#: The backends whose build state and checks `list` reports (inprocess has neither).
HEALTH_BACKENDS = tuple(b for b in BACKENDS if b != "inprocess")
#: How long `list` waits for a docker engine before reporting the build state as unknown.
ENGINE_TIMEOUT = 2.0

#: Short kinds of the causes `ldm-envs add` writes under `excluded`, first match wins; the
#: table counts envs per kind, `list -l NAME` prints each cause in full.
_CAUSE_KINDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), kind)
    for pattern, kind in (
        (r"^cannot be made, reset or stepped: (?:[\w.]+\.)?(\w+)", "make: {0}"),
        (r"observation has \d+ dims after flattening; the limit is (\d+)", "obs over {0} dims"),
        (r"action has \d+ dims; the limit is (\d+)", "action over {0} dims"),
        (r"image action", "image action"),
        (r"^failed in random steps: (?:[\w.]+\.)?(\w+)", "step: {0}"),
        (r"non-finite reward", "non-finite reward"),
        (r"NaN", "NaN observation"),
        (r"^too slow", "too slow"),
        (r"unsupported space", "unsupported space"),
    )
)


def cause_kind(cause: str) -> str:
    """A few words that class an exclusion cause, so 40 similar causes read as one count."""
    for pattern, kind in _CAUSE_KINDS:
        found = pattern.search(cause)
        if found:
            return kind.format(*found.groups())
    first = cause.strip().splitlines()[0] if cause.strip() else "no cause"
    return first if len(first) <= 32 else first[:31] + "…"


class ExcludedEnv(BaseModel):
    """An env the library registers that the manifest leaves out on purpose."""

    env_id: str
    cause: str = Field(description="why, as `ldm-envs add` (or a person) wrote it")
    kind: str = Field(description="a short class of the cause, e.g. 'obs over 128 dims'")


class FailingEnv(BaseModel):
    """A declared env the last check could not make or step."""

    env_id: str
    cause: str = Field(description="the last line of the check's first problem")


class BackendHealth(BaseModel):
    """A library's state through one isolation backend."""

    backend: str
    built: bool | None = Field(
        description="whether its environment is built; null when unknown (no docker engine)"
    )
    checked_at: datetime | None = Field(
        default=None, description="when the last full `ldm-envs check` started (UTC); null: never"
    )
    ok: int | None = Field(default=None, description="envs that passed the last check")
    total: int | None = Field(default=None, description="envs the last check ran")
    seconds: float | None = Field(default=None, description="the last check's wall time")
    steps_per_second: float | None = Field(
        default=None,
        description="median random env-steps/s of the envs that passed the last check "
        "(2 copies per env, as `check` steps them)",
    )
    failing: list[FailingEnv] = Field(default=[], description="envs the last check failed")
    unchecked: list[str] = Field(
        default=[], description="envs declared now that the last check did not run"
    )


class LibraryHealth(BaseModel):
    """One installed env library at a glance."""

    name: str
    version: str
    distribution: str | None = Field(description="the plugin package; null for a bare manifest")
    python: str
    api: str
    envs_declared: int
    envs_probed: int = Field(description="declared envs whose spaces are filled in")
    spaces: list[str] = Field(description="the distinct 'observation -> action' kinds")
    ranking_subset: list[str]
    excluded: list[ExcludedEnv]
    backends: list[BackendHealth]
    steps_per_second: float | None = Field(
        description="steps/s of the most recent check of any backend; null: never checked"
    )


class HealthReport(BaseModel):
    """What `ldm-envs list --json` prints."""

    libraries: list[LibraryHealth]
    broken: dict[str, str] = Field(description="plugins that failed to load, with why")
    docker_engine: bool = Field(description="whether a docker engine answered the listing")


def _space_kind(space: object) -> str:
    return space.describe().split("[")[0].split("(")[0] if space is not None else "?"  # type: ignore[attr-defined]


def _cause(problems: list[str]) -> str:
    return problems[0].strip().splitlines()[-1] if problems else "(no cause recorded)"


def backend_health(
    spec: EnvLibrarySpec, backend: str, built: bool | None, check: LibraryCheck | None
) -> BackendHealth:
    """A backend's build state and its saved last check, compared with the manifest now."""
    health = BackendHealth(backend=backend, built=built)
    if check is None:
        return health
    speeds = [e.steps_per_second for e in check.envs if e.ok and e.steps_per_second > 0]
    checked = {e.env_id for e in check.envs}
    health.checked_at = datetime.fromtimestamp(check.when, tz=timezone.utc)
    health.ok = sum(e.ok for e in check.envs)
    health.total = len(check.envs)
    health.seconds = check.seconds
    health.steps_per_second = round(statistics.median(speeds), 1) if speeds else None
    health.failing = [
        FailingEnv(env_id=e.env_id, cause=_cause(e.problems)) for e in check.envs if not e.ok
    ]
    health.unchecked = [e for e in spec.env_ids if e not in checked]
    return health


def library_health(
    spec: EnvLibrarySpec, distribution: str | None, docker_tags: set[str] | None
) -> LibraryHealth:
    """One library's health; `docker_tags` is the engine's image listing (None: no engine)."""
    backends = []
    for name in HEALTH_BACKENDS:
        backend = get_backend(name)
        built: bool | None
        try:
            if name == "docker":
                built = None if docker_tags is None else backend.image_tag(spec) in docker_tags  # type: ignore[attr-defined]
            else:
                built = backend.is_ready(spec)
        except LDMError:  # e.g. a local package gone: the hash, hence the build, is unknown
            built = None
        backends.append(backend_health(spec, name, built, last_check(spec.name, name)))
    latest = max(
        (b for b in backends if b.checked_at is not None and b.steps_per_second is not None),
        key=lambda b: b.checked_at,  # type: ignore[arg-type,return-value]
        default=None,
    )
    return LibraryHealth(
        name=spec.name,
        version=spec.version,
        distribution=distribution,
        python=spec.environment.python,
        api=spec.environment.api.value,
        envs_declared=len(spec.envs),
        envs_probed=sum(e.probed for e in spec.envs),
        spaces=sorted(
            {
                f"{_space_kind(e.observation_space)} -> {_space_kind(e.action_space)}"
                for e in spec.envs
                if e.probed
            }
        ),
        ranking_subset=spec.ranking_envs,
        excluded=[
            ExcludedEnv(env_id=env_id, cause=cause, kind=cause_kind(cause))
            for env_id, cause in spec.excluded.items()
        ],
        backends=backends,
        steps_per_second=latest.steps_per_second if latest else None,
    )


def health_report(reg: LibraryRegistry, names: list[str] | None = None) -> HealthReport:
    """The health of `names` (default: every installed library) and the broken plugins.

    Raises:
        UnknownLibraryError, PluginError: for a name that is not installed, or broken.
    """
    entries = [reg.entry(n) for n in names] if names else [reg.entry(n) for n in reg.names()]
    tags = engine_image_tags() if "docker" in HEALTH_BACKENDS else None
    return HealthReport(
        libraries=[library_health(e.spec, e.distribution, tags) for e in entries],
        broken={} if names else dict(sorted(reg.broken.items())),
        docker_engine=tags is not None,
    )


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def engine_image_tags(timeout: float = ENGINE_TIMEOUT) -> set[str] | None:
    """The tags of the engine's `ldm-envlib-*` images, or None when no engine answers in time.

    `$DOCKER_HOST` as the docker backend reads it; a TLS engine goes through the docker SDK.
    """
    from ldm_envs.backends.docker import IMAGE_REPO

    url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    query = "/images/json?filters=" + quote(json.dumps({"reference": [f"{IMAGE_REPO}-*"]}))
    conn: http.client.HTTPConnection
    if url.startswith("unix://"):
        conn = _UnixHTTPConnection(url.removeprefix("unix://"), timeout)
    elif url.startswith(("tcp://", "http://")) and not os.environ.get("DOCKER_TLS_VERIFY"):
        conn = http.client.HTTPConnection(url.split("://", 1)[1], timeout=timeout)
    else:
        return _sdk_image_tags(timeout)
    try:
        conn.request("GET", query)
        reply = conn.getresponse()
        images = json.loads(reply.read()) if reply.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if not isinstance(images, list):
        return None
    return {tag for image in images for tag in image.get("RepoTags") or []}


def _sdk_image_tags(timeout: float) -> set[str] | None:
    try:
        import docker

        from ldm_envs.backends.docker import IMAGE_REPO

        client = docker.from_env(timeout=int(max(timeout, 1)))
        images = client.api.images(filters={"reference": f"{IMAGE_REPO}-*"})
    except Exception:  # any engine trouble means the same here: build state unknown
        return None
    return {tag for image in images for tag in image.get("RepoTags") or []}


def ago(when: datetime, now: datetime | None = None) -> str:
    """`when` as a short age: `40s ago`, `12m ago`, `5h ago`, `3d ago`."""
    seconds = max(0.0, ((now or datetime.now(tz=timezone.utc)) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
