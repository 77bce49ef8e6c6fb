"""Everything that touches storage goes through fsspec, here.

Local paths, ``file://``, ``gs://``, ``s3://`` and any other fsspec URL follow the same
code. Schemes that execute commands (webdataset's ``pipe:``) are refused.
"""

from __future__ import annotations

import contextlib
import posixpath
from typing import IO, Iterator

import fsspec

# fsspec protocols that run programs or are otherwise not storage.
_REFUSED_PROTOCOLS = frozenset({"pipe", "cmd", "exec", "shell"})

# Read-ahead per open file. gcsfs/s3fs default to 5-50 MiB; with many worker threads
# that multiplies, so keep it modest and bounded.
READ_BLOCK_BYTES = 4 * 1024 * 1024


def check_url(url: str) -> str:
    """Returns ``url`` if it names storage; raises ValueError for command-running schemes."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"expected a non-empty path or URL. Found: {url!r}")
    protocol = url.split("::", 1)[0].split("://", 1)[0] if "://" in url else ""
    if url.startswith("pipe:") or protocol.lower() in _REFUSED_PROTOCOLS:
        raise ValueError(f"refusing {url!r}: only storage URLs (local paths, file://, gs://, s3://, ...) are accepted")
    return url


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for ``url``."""
    return fsspec.core.url_to_fs(check_url(url))


def join(base: str, *parts: str) -> str:
    """Joins path parts onto a local path or URL."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    import os

    return os.path.join(base, *parts)


def unstrip(fs: fsspec.AbstractFileSystem, like_url: str, path: str) -> str:
    """Turns a path of ``fs`` back into a URL with the scheme of ``like_url``."""
    if "://" not in like_url:
        return path
    return fs.unstrip_protocol(path)


@contextlib.contextmanager
def open_input(url: str) -> Iterator[IO[bytes]]:
    """Opens a file for reading, with bounded read-ahead."""
    fs, path = filesystem(url)
    kwargs = {} if _is_local(fs) else {"block_size": READ_BLOCK_BYTES}
    with fs.open(path, "rb", **kwargs) as f:
        yield f


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def read_bytes(url: str) -> bytes:
    with open_input(url) as f:
        return f.read()


def write_bytes(url: str, data: bytes) -> None:
    """Writes a whole object (one PUT on object stores, so readers see all or nothing)."""
    fs, path = filesystem(url)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def rename(src: str, dst: str) -> None:
    """Moves an object (a copy then delete on object stores, atomic rename locally)."""
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(dst_path) or ".", exist_ok=True)
    fs.mv(src_path, dst_path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if _is_local(fs):
        fs.makedirs(path, exist_ok=True)


def list_files(url_pattern: str) -> Iterator[tuple[str, dict]]:
    """Yields (url, info) for each file matching a glob pattern (``**`` recurses).

    A pattern without glob characters that names a directory matches every file below it.
    """
    fs, path = filesystem(url_pattern)
    if not any(c in path for c in "*?["):
        if fs.isdir(path):
            path = posixpath.join(path.rstrip("/"), "**")
        else:
            info = fs.info(path)
            yield unstrip(fs, url_pattern, path), info
            return
    for found, info in sorted(fs.glob(path, detail=True).items()):
        if info.get("type") == "directory":
            continue
        yield unstrip(fs, url_pattern, found), info


def version_marker(info: dict) -> str | None:
    """The store's version of an object: GCS generation, S3 ETag, or local mtime."""
    for key in ("generation", "ETag", "etag", "mtime", "LastModified", "updated"):
        value = info.get(key)
        if value not in (None, ""):
            return f"{key}:{value}".replace('"', "")
    return None
