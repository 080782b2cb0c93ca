"""Build a local Python base image for the docker backend without any registry.

Docker Hub may be unreachable (only package mirrors are), so the base image is made from parts
that are already here:

1. a Debian root filesystem made once with ``debootstrap --variant=minbase`` and cached as a
   tarball under ``cache_dir`` (keyed by suite, architecture and package list), with the runtime
   libraries a CPython built from source needs, a few GUI-less rendering libraries, and a user
   ``ldm`` (uid/gid 1000, home ``/home/ldm``);
2. that tarball imported once as ``ldm-rootfs:<suite>-<key>`` (``docker import`` through the SDK);
3. a thin image built on top (``FROM ldm-rootfs:...``) that adds a copy of the requested host
   interpreter at ``/opt/python`` and the host's ``uv`` binary, then smoke-tests the interpreter.

Step 3 is a layer over the shared rootfs image, so ``ldm-base:py3.10`` and ``ldm-base:py3.11``
share the Debian layer on disk. Everything runs as root on the host (debootstrap needs it).

A user with a registry can skip all this by setting ``base_image`` in the manifest (for
instance ``python:3.10-slim``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm_envs.errors import LDMEnvsError

if TYPE_CHECKING:
    import docker

__all__ = [
    "GUI_PACKAGES",
    "PYTHON_RUNTIME_PACKAGES",
    "BaseImageError",
    "PythonInstall",
    "base_image_exists",
    "build_base_image",
    "build_image",
    "find_python",
]

#: Debian packages whose shared libraries a CPython built from source (pyenv) links against:
#: ssl/hashlib, zlib, ctypes, bz2, sqlite3, readline, lzma, curses, uuid, dbm, nis and crypt.
PYTHON_RUNTIME_PACKAGES: tuple[str, ...] = (
    "ca-certificates",
    "libbz2-1.0",
    "libcrypt1",
    "libffi8",
    "libgdbm6",
    "libgdbm-compat4",
    "liblzma5",
    "libncursesw6",
    "libnsl2",
    "libreadline8",
    "libsqlite3-0",
    "libssl3",
    "libstdc++6",
    "libtirpc3",
    "libuuid1",
    "tzdata",
    "zlib1g",
)

#: Libraries that env libraries commonly load without a display (OpenGL/EGL offscreen
#: rendering, OpenCV's GUI-less needs). Optional: left out when the suite lacks them.
GUI_PACKAGES: tuple[str, ...] = (
    "libegl1",
    "libgl1",
    "libglib2.0-0",
    "libsm6",
    "libxext6",
    "libxrender1",
)

_ROOTFS_REPO = "ldm-rootfs"
_DEFAULT_PATH = "/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SYSTEM_PREFIXES = frozenset({"/", "/usr", "/usr/local"})
_LOG_TAIL_LINES = 60
# The legacy builder wraps a RUN step's stderr in colour codes (ESC[91m ... ESC[0m).
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Python bits that are not worth shipping: the stdlib test suite, static libpython and the
# host's third-party packages (site-packages is recreated empty).
_SKIP_STDLIB_DIRS = frozenset({"test", "site-packages"})
_SKIP_FILE_SUFFIXES = (".a",)
_FIND_PYTHON_SNIPPET = (
    "import json, sys; print(json.dumps({'base_prefix': sys.base_prefix, "
    "'executable': sys.executable, 'version': list(sys.version_info[:3]), "
    "'implementation': sys.implementation.name}))"
)


class BaseImageError(LDMEnvsError, RuntimeError):
    """Building the base image failed.

    Attributes:
        step: The step that failed (``debootstrap``, ``import``, ``build``, ...).
        log: The tail of that step's log (may be empty).
    """

    def __init__(self, step: str, message: str, log: str = "") -> None:
        self.step = step
        self.log = log
        tail = "\n".join(log.strip().splitlines()[-_LOG_TAIL_LINES:])
        text = f"base image: {step} failed: {message}"
        if tail:
            text += f"\n--- last lines of the {step} log ---\n{tail}"
        super().__init__(text)


@dataclass(frozen=True)
class PythonInstall:
    """A CPython installation on the host that can be copied into an image.

    Attributes:
        prefix: The installation prefix (``sys.base_prefix``), holding ``bin`` and ``lib``.
        version: ``(major, minor, micro)``.
        found_by: How it was found (``uv python find`` or ``pyenv``).
    """

    prefix: Path
    version: tuple[int, int, int]
    found_by: str

    @property
    def short_version(self) -> str:
        """``major.minor``, e.g. ``3.11``."""
        return f"{self.version[0]}.{self.version[1]}"


# --------------------------------------------------------------------------------------------
# Public API


def base_image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Whether an image with this tag exists in the engine (no registry lookup).

    Args:
        client: A connected Docker client.
        tag: Image reference, e.g. ``ldm-base:py3.11``.

    Returns:
        True when the engine has the image locally.
    """
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def build_base_image(
    client: docker.DockerClient,
    python: str,
    *,
    tag: str | None = None,
    suite: str = "bookworm",
    mirror: str = "http://deb.debian.org/debian",
    extra_apt: Sequence[str] = (),
    cache_dir: Path,
    log: Callable[[str], None] | None = None,
) -> str:
    """Build (or rebuild) a base image holding a host CPython at ``/opt/python``.

    The Debian rootfs is made once per (suite, packages) and cached under ``cache_dir``; the
    rootfs image is imported once; the Python layer is rebuilt on each call but the Docker build
    cache makes an unchanged rebuild take seconds. Callers that only need the image to exist
    should check :func:`base_image_exists` first.

    The image runs as root by default (so ``RUN uv pip install`` works in derived images); run
    containers with ``user="1000:1000"`` (the ``ldm`` user). ``UV_PYTHON`` points at the copied
    interpreter and ``UV_PYTHON_DOWNLOADS=never``.

    Args:
        client: A connected Docker client.
        python: Version to copy, ``"3.11"`` or ``"3.11.7"``.
        tag: Image tag; defaults to ``ldm-base:py{major}.{minor}``.
        suite: Debian suite for debootstrap. It should match the system the interpreter was
            built on (library sonames differ between releases).
        mirror: Debian mirror URL.
        extra_apt: More Debian packages for the rootfs (part of the cache key).
        cache_dir: Where the rootfs tarball and lock files live.
        log: Receives progress lines (debootstrap, import and build output).

    Returns:
        The image tag.

    Raises:
        BaseImageError: A step failed; the message names the step and ends with its log tail.
    """
    emit = log or (lambda _line: None)
    install = find_python(python)
    image_tag = tag or f"ldm-base:py{install.short_version}"
    emit(
        f"base image {image_tag}: Python {_dotted(install.version)} from {install.prefix} "
        f"(found by {install.found_by})"
    )
    uv_bin = _find_uv_binary()

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arch = _dpkg_arch()
    required = sorted({*PYTHON_RUNTIME_PACKAGES, *extra_apt})
    key = _rootfs_key(suite, arch, required, GUI_PACKAGES)
    rootfs_tag = f"{_ROOTFS_REPO}:{suite}-{key}"

    if not base_image_exists(client, rootfs_tag):
        tarball = _ensure_rootfs_tarball(
            cache_dir,
            suite=suite,
            mirror=mirror,
            arch=arch,
            key=key,
            required=required,
            optional=GUI_PACKAGES,
            emit=emit,
        )
        _import_rootfs(client, tarball, rootfs_tag, emit)

    with tempfile.TemporaryDirectory(prefix=".ldm-base-ctx-", dir=cache_dir) as ctx:
        context = Path(ctx)
        _stage_python(install, context / "python")
        shutil.copy2(uv_bin, context / "uv")
        (context / "Dockerfile").write_text(
            _python_dockerfile(rootfs_tag, install, uv_version=_uv_version(uv_bin))
        )
        started = time.monotonic()
        emit(f"building {image_tag} from {rootfs_tag}")
        build_image(client, context, image_tag, step="build", emit=emit, network_mode="none")
        emit(f"built {image_tag} in {time.monotonic() - started:.1f}s")
    return image_tag


def build_image(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    *,
    step: str = "build",
    emit: Callable[[str], None] | None = None,
    network_mode: str | None = None,
    buildargs: dict[str, str] | None = None,
) -> str:
    """Run ``docker build`` through the SDK, streaming the log and keeping it for errors.

    Uses the low-level ``client.api.build(decode=True)`` stream instead of
    ``client.images.build`` so every line can be shown while the build runs.

    Args:
        client: A connected Docker client.
        context: Build context directory holding a ``Dockerfile``.
        tag: Tag for the result.
        step: Step name used in errors.
        emit: Receives each log line.
        network_mode: Network for ``RUN`` steps (``"none"``, ``"bridge"``, ``"host"``).
        buildargs: Build arguments.

    Returns:
        The image id.

    Raises:
        BaseImageError: The engine reported an error; carries the build log tail.
    """
    import docker.errors

    emit = emit or (lambda _line: None)
    lines: list[str] = []
    image_id = ""
    try:
        stream: Iterator[dict[str, Any]] = client.api.build(
            path=str(context),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            network_mode=network_mode,
            buildargs=buildargs,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = _ANSI.sub("", str(detail.get("message") or chunk["error"])).strip()
                lines.append(message)
                raise BaseImageError(step, f"docker build of {tag}: {message}", "\n".join(lines))
            text = _ANSI.sub("", str(chunk.get("stream") or chunk.get("status") or ""))
            for line in text.splitlines():
                if line.strip():
                    lines.append(line)
                    emit(line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = str(aux["ID"])
    except docker.errors.APIError as exc:
        raise BaseImageError(step, f"docker build of {tag}: {exc}", "\n".join(lines)) from exc
    if not image_id:
        image_id = client.images.get(tag).id or ""
    return image_id


def find_python(version: str) -> PythonInstall:
    """Find a host CPython installation of ``version`` that can be copied into an image.

    Looks with ``uv python find`` first (resolving virtualenvs to their base interpreter and
    skipping distribution Pythons under ``/usr``, which cannot be copied out), then scans
    ``$(pyenv root)/versions/<version>*`` and picks the newest match.

    Args:
        version: ``"3.11"`` or ``"3.11.7"`` (a leading ``python`` is tolerated).

    Returns:
        The installation.

    Raises:
        BaseImageError: No copyable installation was found; says where it looked.
    """
    wanted = version.strip().removeprefix("python")
    if not re.fullmatch(r"\d+(\.\d+){0,2}", wanted):
        raise BaseImageError("find-python", f"not a Python version: {version!r}")
    parts = tuple(int(p) for p in wanted.split("."))
    looked: list[str] = []

    uv = shutil.which("uv")
    if uv is not None:
        try:
            found = subprocess.run(
                [uv, "python", "find", "--system", "--no-project", wanted],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            looked.append(f"`uv python find {wanted}` failed: {exc}")
        else:
            exe = found.stdout.strip().splitlines()[-1:] if found.returncode == 0 else []
            if exe:
                install = _inspect_python(Path(exe[0]), "uv python find")
                if install is not None and install.version[: len(parts)] == parts:
                    return install
                looked.append(f"`uv python find {wanted}` -> {exe[0]} (not a copyable install)")
            else:
                looked.append(f"`uv python find {wanted}` found nothing")
    else:
        looked.append("uv is not on PATH")

    root = _pyenv_root()
    candidates: list[tuple[tuple[int, ...], Path]] = []
    versions_dir = root / "versions"
    if versions_dir.is_dir():
        for entry in versions_dir.iterdir():
            m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", entry.name)
            if m is None:
                continue
            numbers = tuple(int(g) for g in m.groups() if g is not None)
            if numbers[: len(parts)] == parts:
                candidates.append((numbers, entry))
    looked.append(f"{versions_dir}/{wanted}*")
    for _numbers, entry in sorted(candidates, reverse=True):
        exe = _python_in_prefix(entry)
        if exe is None:
            continue
        install = _inspect_python(exe, "pyenv")
        if install is not None:
            return install

    raise BaseImageError(
        "find-python",
        f"no copyable CPython {wanted} on this host (looked at: {'; '.join(looked)}). "
        f"Install it (`uv python install {wanted}` or `pyenv install {wanted}`), or, with "
        f"access to a registry, set `base_image` in the manifest instead "
        f"(e.g. python:{'.'.join(map(str, parts[:2]))}-slim).",
    )


# --------------------------------------------------------------------------------------------
# Finding the interpreter and uv


def _dotted(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


def _pyenv_root() -> Path:
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pyenv, "root"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
                stdin=subprocess.DEVNULL,
            ).stdout.strip()
            if out:
                return Path(out)
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _python_in_prefix(prefix: Path) -> Path | None:
    for name in ("python3", "python"):
        exe = prefix / "bin" / name
        if exe.exists():
            return exe
    return None


def _inspect_python(exe: Path, found_by: str) -> PythonInstall | None:
    """Ask an interpreter for its base prefix; None when it cannot be copied as a unit."""
    try:
        out = subprocess.run(
            [str(exe), "-c", _FIND_PYTHON_SNIPPET],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout
        info = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    prefix = Path(info["base_prefix"]).resolve()
    version = tuple(int(v) for v in info["version"])
    if info.get("implementation") != "cpython" or str(prefix) in _SYSTEM_PREFIXES:
        return None
    short = f"{version[0]}.{version[1]}"
    if not (prefix / "lib" / f"python{short}" / "os.py").exists():
        return None
    return PythonInstall(
        prefix=prefix, version=(version[0], version[1], version[2]), found_by=found_by
    )


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def _find_uv_binary() -> Path:
    """The real uv executable (pyenv puts a shell shim named ``uv`` first on PATH)."""
    tried: list[str] = []
    with contextlib.suppress(ImportError, FileNotFoundError):
        from uv import find_uv_bin

        candidate = Path(find_uv_bin())
        if _is_elf(candidate):
            return candidate
        tried.append(str(candidate))
    which = shutil.which("uv")
    if which is not None:
        candidate = Path(which).resolve()
        if _is_elf(candidate):
            return candidate
        tried.append(f"{candidate} (not an ELF binary: a shim?)")
    raise BaseImageError(
        "find-uv", f"no uv binary to copy into the image (tried: {', '.join(tried) or 'none'})"
    )


def _uv_version(uv_bin: Path) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [str(uv_bin), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        if len(out) >= 2:
            return out[1]
    return "unknown"


# --------------------------------------------------------------------------------------------
# Root filesystem


def _dpkg_arch() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg", "--print-architecture"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        if out:
            return out
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _rootfs_key(suite: str, arch: str, required: Sequence[str], optional: Sequence[str]) -> str:
    payload = json.dumps(
        {
            "v": 1,
            "suite": suite,
            "arch": arch,
            "variant": "minbase",
            "required": sorted(required),
            "optional": sorted(optional),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _ensure_rootfs_tarball(
    cache_dir: Path,
    *,
    suite: str,
    mirror: str,
    arch: str,
    key: str,
    required: Sequence[str],
    optional: Sequence[str],
    emit: Callable[[str], None],
) -> Path:
    """The cached rootfs tarball, made with debootstrap under a file lock when missing."""
    from filelock import FileLock

    tarball = cache_dir / f"rootfs-{suite}-{arch}-{key}.tar"
    with FileLock(str(tarball) + ".lock"):
        if tarball.exists():
            emit(f"rootfs cached: {tarball}")
            return tarball
        if os.geteuid() != 0:
            raise BaseImageError(
                "debootstrap",
                "making the Debian rootfs needs root (debootstrap creates device nodes and "
                "chowns files); run once as root, or set `base_image` in the manifest",
            )
        debootstrap = shutil.which("debootstrap") or (
            "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
        )
        if debootstrap is None:
            raise BaseImageError(
                "debootstrap",
                "debootstrap is not installed (apt-get install debootstrap, "
                "or run tools/docker/start-engine.sh)",
            )
        work = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=cache_dir))
        try:
            rootfs = work / "rootfs"
            _run_debootstrap(
                debootstrap,
                rootfs,
                work / "debootstrap.log",
                suite=suite,
                mirror=mirror,
                arch=arch,
                required=required,
                optional=optional,
                emit=emit,
            )
            _customize_rootfs(rootfs)
            partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.partial")
            started = time.monotonic()
            _run_logged(
                [
                    "tar",
                    "--numeric-owner",
                    "--xattrs",
                    "--acls",
                    "-C",
                    str(rootfs),
                    "-cf",
                    str(partial),
                    ".",
                ],
                work / "tar.log",
                step="tar-rootfs",
            )
            os.replace(partial, tarball)
            emit(
                f"rootfs tarball {tarball} ({tarball.stat().st_size / 2**20:.0f} MiB) "
                f"written in {time.monotonic() - started:.1f}s"
            )
        finally:
            _safe_rmtree(work, emit)
            for stale in cache_dir.glob(f".{tarball.name}.{os.getpid()}.partial"):
                stale.unlink(missing_ok=True)
        return tarball


def _run_debootstrap(
    debootstrap: str,
    rootfs: Path,
    log_path: Path,
    *,
    suite: str,
    mirror: str,
    arch: str,
    required: Sequence[str],
    optional: Sequence[str],
    emit: Callable[[str], None],
) -> None:
    """Run debootstrap; packages the suite lacks are renamed (``t64``) or, if optional, dropped."""
    include = list(dict.fromkeys([*required, *optional]))
    for _attempt in range(4):
        if rootfs.exists() and not _safe_rmtree(rootfs, emit):
            break
        cmd = [
            debootstrap,
            "--variant=minbase",
            f"--arch={arch}",
            f"--include={','.join(include)}",
            suite,
            str(rootfs),
            mirror,
        ]
        emit("$ " + " ".join(cmd))
        started = time.monotonic()
        ok = _run_logged(cmd, log_path, step="debootstrap", check=False, emit=emit)
        if ok:
            emit(f"debootstrap finished in {time.monotonic() - started:.0f}s")
            return
        missing = _missing_debs(log_path.read_text(errors="replace"))
        if not missing:
            break
        fixable = True
        for name in missing:
            if name in optional and name in include:
                include.remove(name)
                emit(f"debootstrap: {suite} has no {name}; leaving it out (optional)")
            elif name in include and name.startswith("lib") and not name.endswith("t64"):
                include[include.index(name)] = f"{name}t64"
                emit(f"debootstrap: {suite} has no {name}; trying {name}t64")
            else:
                fixable = False
        if not fixable:
            break
    # The inner log (gpgv, wget chatter) first, so the tail ends with debootstrap's own E: line.
    text = ""
    inner = rootfs / "debootstrap" / "debootstrap.log"
    if inner.exists():
        text += inner.read_text(errors="replace") + "\n--- debootstrap output ---\n"
    text += log_path.read_text(errors="replace") if log_path.exists() else ""
    missing = _missing_debs(text)
    reason = f": {suite} has no {', '.join(missing)}" if missing else ""
    raise BaseImageError(
        "debootstrap", f"debootstrap of {suite} from {mirror} failed{reason}", text
    )


def _missing_debs(text: str) -> list[str]:
    found = re.findall(r"Couldn't find these debs: (.+)", text)
    return found[-1].split() if found else []


def _customize_rootfs(rootfs: Path) -> None:
    """Slim the rootfs, add the ``ldm`` user and the ld.so path of ``/opt/python``."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/man", "usr/share/info"):
        target = rootfs / sub
        if target.is_dir():
            for child in target.iterdir():
                if child.is_file() or child.is_symlink():
                    child.unlink()
                elif child.is_dir() and child.name != "partial":
                    shutil.rmtree(child)
    doc = rootfs / "usr/share/doc"
    if doc.is_dir():
        for pkg in doc.iterdir():
            if pkg.is_dir() and not pkg.is_symlink():
                for item in pkg.iterdir():
                    if item.name == "copyright":
                        continue
                    if item.is_dir() and not item.is_symlink():
                        shutil.rmtree(item)
                    else:
                        item.unlink()
    shutil.rmtree(rootfs / "debootstrap", ignore_errors=True)
    dpkg_cfg = rootfs / "etc/dpkg/dpkg.cfg.d"
    dpkg_cfg.mkdir(parents=True, exist_ok=True)
    (dpkg_cfg / "ldm-slim").write_text(
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
    )
    apt_conf = rootfs / "etc/apt/apt.conf.d"
    apt_conf.mkdir(parents=True, exist_ok=True)
    (apt_conf / "90ldm").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
    )

    _append_unique(rootfs / "etc/passwd", "ldm:", "ldm:x:1000:1000:ldm:/home/ldm:/bin/bash\n")
    _append_unique(rootfs / "etc/group", "ldm:", "ldm:x:1000:\n")
    shadow = rootfs / "etc/shadow"
    if shadow.exists():
        _append_unique(shadow, "ldm:", "ldm:*:19000:0:99999:7:::\n")
    gshadow = rootfs / "etc/gshadow"
    if gshadow.exists():
        _append_unique(gshadow, "ldm:", "ldm:!::\n")
    home = rootfs / "home/ldm"
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, 1000, 1000)
    home.chmod(0o755)

    ld_conf = rootfs / "etc/ld.so.conf.d"
    ld_conf.mkdir(parents=True, exist_ok=True)
    (ld_conf / "ldm-python.conf").write_text("/opt/python/lib\n")


def _append_unique(path: Path, prefix: str, line: str) -> None:
    text = path.read_text() if path.exists() else ""
    if any(existing.startswith(prefix) for existing in text.splitlines()):
        return
    if text and not text.endswith("\n"):
        text += "\n"
    mode = path.stat().st_mode if path.exists() else 0o644
    path.write_text(text + line)
    path.chmod(mode & 0o7777)


def _import_rootfs(
    client: docker.DockerClient, tarball: Path, tag: str, emit: Callable[[str], None]
) -> None:
    """``docker import`` the rootfs tarball (a path that does not exist is taken for a URL)."""
    import docker.errors

    repository, _, version = tag.partition(":")
    started = time.monotonic()
    emit(f"importing {tarball} as {tag}")
    try:
        result = client.api.import_image(
            src=str(tarball),
            repository=repository,
            tag=version,
            changes=[
                f"ENV PATH={_DEFAULT_PATH}",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/bash"]',
            ],
        )
    except docker.errors.APIError as exc:
        raise BaseImageError("import", f"docker import of {tarball}: {exc}") from exc
    # The engine answers 200 with a JSON stream; errors come as {"error": ...} lines.
    for raw in str(result).splitlines():
        with contextlib.suppress(ValueError):
            chunk = json.loads(raw)
            if isinstance(chunk, dict) and "error" in chunk:
                raise BaseImageError("import", f"docker import of {tarball}", str(result))
    if not base_image_exists(client, tag):
        raise BaseImageError("import", f"docker import of {tarball} left no {tag}", str(result))
    emit(f"imported {tag} in {time.monotonic() - started:.1f}s")


# --------------------------------------------------------------------------------------------
# Python layer


def _stage_python(install: PythonInstall, dest: Path) -> None:
    """Copy the interpreter prefix (bin/python*, lib, include) without tests and host packages."""
    short = install.short_version
    (dest / "bin").mkdir(parents=True)
    for exe in sorted((install.prefix / "bin").iterdir()):
        if re.fullmatch(r"python(\d(\.\d+)?m?)?(-config)?", exe.name):
            shutil.copy2(exe, dest / "bin" / exe.name, follow_symlinks=False)

    stdlib = install.prefix / "lib" / f"python{short}"

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n.endswith(_SKIP_FILE_SUFFIXES)}
        if Path(directory) == stdlib:
            skipped |= {n for n in names if n in _SKIP_STDLIB_DIRS}
        return skipped

    for sub in ("lib", "include"):
        src = install.prefix / sub
        if src.is_dir():
            shutil.copytree(src, dest / sub, symlinks=True, ignore=ignore)
    site = dest / "lib" / f"python{short}" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    (site / "README.txt").write_text("Packages go into virtualenvs made with uv.\n")


def _python_dockerfile(rootfs_tag: str, install: PythonInstall, *, uv_version: str) -> str:
    short = install.short_version
    exe = f"/opt/python/bin/python{short}"
    smoke = (
        "import ssl, sqlite3, ctypes, zlib, bz2, lzma, hashlib, uuid, readline; "
        "print(ssl.OPENSSL_VERSION)"
    )
    return "\n".join(
        [
            f"FROM {rootfs_tag}",
            "COPY python /opt/python",
            "COPY uv /usr/local/bin/uv",
            "RUN ldconfig"
            f" && ln -sf {exe} /usr/local/bin/python{short}"
            f" && ln -sf {exe} /usr/local/bin/python3"
            f" && ln -sf {exe} /usr/local/bin/python"
            f" && python3 -c {_sh_quote(smoke)}"
            " && uv --version",
            f"ENV PATH={_DEFAULT_PATH} LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1"
            f" UV_PYTHON={exe} UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1",
            f'LABEL org.ldm.python="{_dotted(install.version)}" org.ldm.rootfs="{rootfs_tag}"'
            f' org.ldm.uv="{uv_version}"',
            "WORKDIR /home/ldm",
            'CMD ["python3"]',
            "",
        ]
    )


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# --------------------------------------------------------------------------------------------
# Processes and cleanup


def _run_logged(
    cmd: Sequence[str],
    log_path: Path,
    *,
    step: str,
    check: bool = True,
    emit: Callable[[str], None] | None = None,
) -> bool:
    """Run a command with stdout+stderr to ``log_path`` (and to ``emit`` line by line)."""
    with log_path.open("a") as log_file:
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise BaseImageError(step, f"cannot run {cmd[0]}: {exc}") from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            if emit is not None:
                emit(line.rstrip())
        rc = proc.wait()
    if rc != 0 and check:
        raise BaseImageError(
            step,
            f"{' '.join(cmd[:2])} ... exited with {rc}",
            log_path.read_text(errors="replace"),
        )
    return rc == 0


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    mounts: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 2:
                continue
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            if point == prefix or point.startswith(prefix + "/"):
                mounts.append(point)
    return mounts


def _safe_rmtree(path: Path, emit: Callable[[str], None] | None = None) -> bool:
    """Remove a debootstrap work dir, unmounting what a failed run left mounted (/proc, /dev).

    Never deletes through a mount point (a bind-mounted host /dev would lose its nodes): when
    something stays mounted, the directory is left in place and a warning emitted.

    Returns:
        True when the directory is gone.
    """
    if not path.exists():
        return True
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    left = _mounts_under(path)
    if left:
        if emit is not None:
            emit(f"warning: not deleting {path}: still mounted: {', '.join(left)}")
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()
