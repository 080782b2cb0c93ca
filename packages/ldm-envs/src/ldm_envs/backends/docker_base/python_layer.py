"""The layer over the rootfs: a copy of a host CPython at `/opt/python` and the host's uv.

The interpreter is found by `ldm_envs.interpreters` (the same discovery as the venv backend's),
keeping the first one that can be copied as a unit.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ldm_envs.backends.docker_base.engine import _DEFAULT_PATH, BaseImageError
from ldm_envs.interpreters import FOUND_BY_UV, find_pythons, parse_version

_SYSTEM_PREFIXES = frozenset({"/", "/usr", "/usr/local"})
# Python bits that are not worth shipping: the stdlib test suite, static libpython and the
# host's third-party packages (site-packages is recreated empty).
_SKIP_STDLIB_DIRS = frozenset({"test", "site-packages"})
_SKIP_FILE_SUFFIXES = (".a",)
_FIND_PYTHON_SNIPPET = (
    "import json, sys; print(json.dumps({'base_prefix': sys.base_prefix, "
    "'executable': sys.executable, 'version': list(sys.version_info[:3]), "
    "'implementation': sys.implementation.name}))"
)


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


def find_python(version: str) -> PythonInstall:
    """Find a host CPython installation of ``version`` that can be copied into an image.

    Takes the candidates of ``ldm_envs.interpreters.find_pythons`` in their order (``uv python
    find``, then pyenv's versions, newest first), resolving virtualenvs to their base
    interpreter, and keeps the first that can be copied as a unit: not a distribution Python
    under ``/usr``, whose files are spread over the system.

    Args:
        version: ``"3.11"`` or ``"3.11.7"`` (a leading ``python`` is tolerated).

    Returns:
        The installation.

    Raises:
        BaseImageError: No copyable installation was found; says where it looked.
    """
    try:
        parts = parse_version(version)
    except ValueError:
        raise BaseImageError("find-python", f"not a Python version: {version!r}") from None
    wanted = ".".join(map(str, parts))
    looked: list[str] = []
    for exe, found_by in find_pythons(wanted, notes=looked):
        install = _inspect_python(exe, found_by)
        if install is not None and install.version[: len(parts)] == parts:
            return install
        if found_by == FOUND_BY_UV:
            looked.append(f"`uv python find {wanted}` -> {exe} (not a copyable install)")
    raise BaseImageError(
        "find-python",
        f"no copyable CPython {wanted} on this host (looked at: {'; '.join(looked)}). "
        f"Install it (`uv python install {wanted}` or `pyenv install {wanted}`), or, with "
        f"access to a registry, set `base_image` in the manifest instead "
        f"(e.g. python:{'.'.join(map(str, parts[:2]))}-slim).",
    )


def _dotted(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


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
