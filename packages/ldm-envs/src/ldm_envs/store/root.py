"""`DataRoot`: one data root, local or remote, and the four operations the stages need on it."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from ldm_envs.atomic import TMP_MARK, atomic_path, replace_dir, tmp_sibling
from ldm_envs.errors import LDMEnvsError

#: What marks a published entry: `<rel>.done`, holding the entry's manifest, written last.
MARKER_SUFFIX = ".done"
#: The local cache's default bound (`DataRoot.cache_bytes`): 20 GiB.
DEFAULT_CACHE_BYTES = 20 * 1024**3
#: URL schemes that name a local folder (the identity: no copies, no markers).
_LOCAL_SCHEMES = ("", "file")


class StoreError(LDMEnvsError):
    """An operation on a data root failed; the message names the operation and the URL."""

    def __init__(self, operation: str, url: str, reason: str) -> None:
        self.operation = operation
        self.url = url
        super().__init__(f"{operation} {url}: {reason}")


class DataRoot(BaseModel):
    """A data root given as a local path or a URL (`file://`, `s3://bucket/prefix`, `gs://`).

    Entries are named by `rel`, a '/'-separated path under the root (`runs/ranking/...json`),
    the same relative paths the local layout uses, so the Path-based code keeps working on a
    local root and a remote one mirrors it.
    """

    model_config = ConfigDict(frozen=True)

    url: str = Field(description="a local path, or file://, s3://, gs:// URL")
    cache_bytes: int = Field(DEFAULT_CACHE_BYTES, gt=0, description="bound of `pull`'s cache")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="passed to the fsspec filesystem (endpoint, keys)"
    )
    _fs: Any = PrivateAttr(default=None)

    @classmethod
    def parse(cls, value: str | Path | DataRoot, **options: Any) -> DataRoot:
        """A `DataRoot` from a CLI value: a path stays a path, a URL keeps its scheme.

        Raises:
            StoreError: a scheme other than file, s3 or gs, or a URL without a bucket.
        """
        if isinstance(value, DataRoot):
            return value
        text = str(value)
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if scheme not in (*_LOCAL_SCHEMES, "s3", "gs", "gcs"):
            raise StoreError(
                "parse", text, f"unknown scheme {scheme!r}: use a path, file://, s3:// or gs://"
            )
        if scheme and not text.split("://", 1)[1].strip("/"):
            raise StoreError("parse", text, "the URL names no bucket or folder")
        if scheme in _LOCAL_SCHEMES:
            text = str(Path(text.split("://", 1)[-1]).expanduser().absolute())
        else:
            text = text.rstrip("/")
        return cls(url=text, **options)

    @property
    def is_local(self) -> bool:
        """Whether the root is a local folder, written and read in place."""
        return "://" not in self.url

    @property
    def path(self) -> Path:
        """The local folder of a local root.

        Raises:
            StoreError: the root is remote.
        """
        if not self.is_local:
            raise StoreError("path", self.url, "a remote root has no local folder")
        return Path(self.url)

    def local_folder(self, kind: str) -> Path:
        """`<data home>/<kind>/<url made a folder name>`: this machine's copy of a remote root.

        One naming for every package: ldm-autorl's driver mirror and ldm-model's run mirror
        (`kind="stores"`), ldm-model's shard cache (`kind="cache"`).
        """
        from ldm_envs.paths import data_home

        return data_home() / kind / re.sub(r"[^A-Za-z0-9_.\-]", "_", self.url)

    def __str__(self) -> str:
        return self.url

    # ---- remote plumbing -------------------------------------------------------------------

    def _filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the root's path in it, made on first use (lazy import)."""
        if self._fs is None:
            try:
                import fsspec  # type: ignore[import-untyped]
            except ImportError as exc:  # pragma: no cover - fsspec is a dependency
                raise StoreError("open", self.url, f"fsspec is not installed ({exc})") from exc
            try:
                # a filesystem of its own: fsspec's instance cache keys on the arguments only,
                # so a cached one could hold an endpoint or credentials the environment changed
                options = {"skip_instance_cache": True, **self.storage_options}
                fs, base = fsspec.core.url_to_fs(self.url, **options)
            except ImportError as exc:
                raise StoreError(
                    "open", self.url, f"{exc}; for s3:// install `ldm-envs[s3]`"
                ) from exc
            object.__setattr__(self, "_fs", (fs, base.rstrip("/")))
        fs, base = self._fs
        return fs, base

    def _remote(self, rel: str) -> str:
        return f"{self._filesystem()[1]}/{_clean(rel, self.url)}"

    def _url(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    @contextlib.contextmanager
    def _failing_as(self, operation: str, rel: str) -> Iterator[None]:
        """Turn any filesystem failure into a `StoreError` naming `operation` and the URL."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(operation, self._url(rel), f"{type(exc).__name__}: {exc}") from exc

    def _manifest(self, rel: str) -> dict[str, int] | None:
        """The published entry's files and sizes, or None when it has no marker."""
        fs, _ = self._filesystem()
        marker = self._remote(rel) + MARKER_SUFFIX
        with self._failing_as("read marker", rel):
            try:
                data = fs.cat_file(marker)
            except FileNotFoundError:
                return None
        try:
            files = json.loads(data)["files"]
            return {str(k): int(v) for k, v in files.items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError("read marker", self._url(rel) + MARKER_SUFFIX, str(exc)) from exc

    # ---- the operations --------------------------------------------------------------------

    def publish(self, local: Path, rel: str) -> None:
        """Make the local file or folder `local` visible as `rel`, all of it or nothing.

        On a local root it is copied in atomically (nothing is done when `local` already is
        that place); on a remote one it is uploaded and its marker written last.

        Raises:
            StoreError: `local` is missing, or an upload failed (the entry stays invisible).
        """
        local = Path(local)
        if not local.exists():
            raise StoreError("publish", self._url(rel), f"{local} does not exist")
        if self.is_local:
            self._publish_local(local, _clean(rel, self.url))
            return
        files = _files(local)
        fs, _ = self._filesystem()
        target = self._remote(rel)
        with self._failing_as("publish", rel):
            fs.rm_file(target + MARKER_SUFFIX) if fs.exists(target + MARKER_SUFFIX) else None
            sizes: dict[str, int] = {}
            for name, path in files:
                remote = target if not name else f"{target}/{name}"
                fs.put_file(str(path), remote)
                sizes[name] = path.stat().st_size
            fs.pipe_file(target + MARKER_SUFFIX, json.dumps({"files": sizes}).encode())

    def publish_bytes(self, data: bytes, rel: str) -> None:
        """Publish `data` as the file `rel` (a record, a ranking), atomically."""
        if self.is_local:
            with atomic_path(self.path / _clean(rel, self.url)) as tmp:
                tmp.write_bytes(data)
            return
        fs, _ = self._filesystem()
        target = self._remote(rel)
        with self._failing_as("publish", rel):
            if fs.exists(target + MARKER_SUFFIX):
                fs.rm_file(target + MARKER_SUFFIX)
            fs.pipe_file(target, data)
            fs.pipe_file(target + MARKER_SUFFIX, json.dumps({"files": {"": len(data)}}).encode())

    def exists(self, rel: str) -> bool:
        """Whether `rel` is published (locally: whether it exists)."""
        if self.is_local:
            return (self.path / _clean(rel, self.url)).exists()
        return self._manifest(rel) is not None

    def read_bytes(self, rel: str) -> bytes | None:
        """The published file `rel`'s content, or None when it is not published."""
        if self.is_local:
            path = self.path / _clean(rel, self.url)
            return path.read_bytes() if path.is_file() else None
        manifest = self._manifest(rel)
        if manifest is None:
            return None
        fs, _ = self._filesystem()
        with self._failing_as("read", rel):
            data = fs.cat_file(self._remote(rel))
        if len(data) != manifest.get("", -1):
            raise StoreError("read", self._url(rel), f"{len(data)} bytes, manifest says {manifest}")
        return bytes(data)

    def list(self, prefix: str = "") -> builtins.list[str]:
        """The published entries directly under `prefix`, as rel paths, sorted.

        Entries without a marker (an upload in progress or interrupted) are not listed; on a
        local root, hidden names and temporary siblings are not.
        """
        prefix = _clean(prefix, self.url) if prefix.strip("/") else ""
        join = (lambda name: f"{prefix}/{name}") if prefix else (lambda name: name)
        if self.is_local:
            here = self.path / prefix
            if not here.is_dir():
                return []
            names = [p.name for p in here.iterdir() if not _hidden(p.name)]
            return sorted(join(n) for n in names)
        fs, _ = self._filesystem()
        folder = self._remote(prefix) if prefix else self._filesystem()[1]
        with self._failing_as("list", prefix):
            fs.invalidate_cache()
            try:
                found = fs.ls(folder, detail=False)
            except FileNotFoundError:
                return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in found]
        return sorted(
            join(n[: -len(MARKER_SUFFIX)])
            for n in names
            if n.endswith(MARKER_SUFFIX) and not _hidden(n)
        )

    def list_folders(self, prefix: str) -> builtins.list[str]:
        """The names of the folders directly under `prefix` (env folders holding entries)."""
        prefix = _clean(prefix, self.url)
        if self.is_local:
            here = self.path / prefix
            if not here.is_dir():
                return []
            return sorted(p.name for p in here.iterdir() if p.is_dir() and not _hidden(p.name))
        fs, _ = self._filesystem()
        with self._failing_as("list", prefix):
            fs.invalidate_cache()
            try:
                found = fs.ls(self._remote(prefix), detail=True)
            except FileNotFoundError:
                return []
        names = [
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            for e in found
            if e.get("type") == "directory"
        ]
        return sorted(n for n in names if not _hidden(n))

    def pull(
        self,
        rel: str,
        cache_dir: Path | None = None,
        *,
        keep: Iterable[Path] = (),
        evict_after: bool = True,
    ) -> Path:
        """A local path holding the published entry `rel` (a file or a folder).

        A local root returns its own path (no copy). A remote one downloads into `cache_dir`
        what the cache lacks or holds at another size, marks the entry's files as just used,
        and evicts least-recently-used files (never this entry's or `keep`'s) until the cache
        holds at most `cache_bytes`. A caller pulling many entries at once passes
        `evict_after=False` and calls `evict` once at the end (each eviction walks the cache).

        Raises:
            StoreError: `rel` is not published, a download's size differs from the manifest, or
                the entry alone is larger than the cache bound.
        """
        rel = _clean(rel, self.url)
        if self.is_local:
            path = self.path / rel
            if not path.exists():
                raise StoreError("pull", self._url(rel), "not found")
            return path
        if cache_dir is None:
            raise StoreError("pull", self._url(rel), "a remote root needs a cache folder")
        manifest = self._manifest(rel)
        if manifest is None:
            raise StoreError("pull", self._url(rel), "not published (no marker)")
        total = sum(manifest.values())
        if total > self.cache_bytes:
            raise StoreError(
                "pull",
                self._url(rel),
                f"{total:,} bytes exceed the cache bound of {self.cache_bytes:,} bytes",
            )
        fs, _ = self._filesystem()
        dest = Path(cache_dir) / rel
        used: builtins.list[Path] = []
        for name, size in sorted(manifest.items()):
            path = dest / name if name else dest
            used.append(path)
            if path.is_file() and path.stat().st_size == size:
                os.utime(path)  # the LRU clock: a hit is a use
                continue
            remote = self._remote(rel) + (f"/{name}" if name else "")
            with (
                self._failing_as("pull", f"{rel}/{name}" if name else rel),
                atomic_path(path) as tmp,
            ):
                fs.get_file(remote, str(tmp))
                if tmp.stat().st_size != size:
                    raise StoreError(
                        "pull",
                        self._url(rel),
                        f"{name or rel}: got {tmp.stat().st_size:,} bytes, manifest says {size:,}",
                    )
        if evict_after:
            evict(Path(cache_dir), self.cache_bytes, in_use=[*used, *keep])
        return dest

    def _publish_local(self, local: Path, rel: str) -> None:
        final = self.path / rel
        if local.resolve() == final.resolve():
            return
        if local.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_sibling(final)
            shutil.copytree(local, tmp)
            replace_dir(tmp, final)
        else:
            with atomic_path(final) as tmp:
                shutil.copyfile(local, tmp)


def evict(cache_dir: Path, max_bytes: int, *, in_use: Iterable[Path] = ()) -> int:
    """Remove the least recently used files of `cache_dir` until it holds <= `max_bytes`.

    Files in `in_use` are never removed (a sampler has them open); returns the bytes kept.
    """
    pinned = {p.resolve() for p in in_use}
    files = [(p.stat().st_mtime, p.stat().st_size, p) for p in cache_dir.rglob("*") if p.is_file()]
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        if path.resolve() in pinned:
            continue
        path.unlink(missing_ok=True)
        total -= size
    return total


def _files(local: Path) -> list[tuple[str, Path]]:
    """A file as [("", file)], a folder as its files by '/'-separated relative name, sorted."""
    if local.is_file():
        return [("", local)]
    found = []
    for path in sorted(local.rglob("*")):
        if path.is_dir():
            continue
        name = path.relative_to(local).as_posix()
        if not any(_hidden(part) for part in name.split("/")):
            found.append((name, path))
    return found


def _hidden(name: str) -> bool:
    return name.startswith(".") or TMP_MARK in name


def _clean(rel: str, url: str) -> str:
    """`rel` as a relative '/'-path; '..' and absolute paths would escape the root."""
    rel = str(rel).replace("\\", "/").strip("/")
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        raise StoreError("resolve", f"{url}/{rel}", "an entry name must be a relative path")
    return rel
