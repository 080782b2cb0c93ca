"""The Debian root filesystem under every local base image: debootstrap once, slimmed, cached.

The tarball is keyed by suite, architecture and package list, made under a file lock, and imported
once as `ldm-rootfs:<suite>-<key>`. Everything runs as root on the host (debootstrap needs it).
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
from collections.abc import Callable, Sequence
from pathlib import Path

from ldm_envs.backends.docker_base.engine import BaseImageError

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
