"""Everything that touches storage goes through fsspec, here.

Local paths, ``file://``, ``gs://``, ``s3://`` and any other fsspec URL follow the same
code. Schemes that execute commands (webdataset's ``pipe:``) are refused, and so are URLs
that carry credentials: credentials come from each store's standard chain (Application
Default Credentials for GCS; environment, profile files and instance roles for S3), never
from a URL, a flag or a record.

Endpoints come from the environment, because workers of portable runners (an external
worker pool, Flink, Spark) are started without our pipeline options:

* ``STORAGE_EMULATOR_HOST`` (``http://host:port``): a GCS emulator; requests are then
  anonymous, as emulators expect.
* ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``: an S3-compatible server (MinIO, moto, ...).
  Access keys stay with botocore's chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  ``AWS_PROFILE``, instance roles).

:func:`storage_options` is the one place that reads them.

Memory per open object is bounded: reads keep one ``READ_BLOCK_BYTES`` read-ahead block,
writes buffer one ``WRITE_BLOCK_BYTES`` part, whatever the filesystem's default (s3fs
buffers 50 MiB per file by default, which times a worker's dozen threads adds up).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
from typing import IO, Iterator, Mapping

import fsspec

# fsspec protocols that run programs or are otherwise not storage.
_REFUSED_PROTOCOLS = frozenset({"pipe", "cmd", "exec", "shell"})

# Read-ahead per open file (gcsfs defaults to 5 MiB, s3fs to 50 MiB).
READ_BLOCK_BYTES = 4 * 1024 * 1024
# Write buffer per open file: one multipart part (S3 needs >= 5 MiB parts; GCS resumable
# chunks must be multiples of 256 KiB).
WRITE_BLOCK_BYTES = 8 * 1024 * 1024

GCS_PROTOCOLS = frozenset({"gs", "gcs"})
S3_PROTOCOLS = frozenset({"s3", "s3a"})


# ------------------------------------------------------------------ credentials


# Environment variables whose values are secrets; their values are masked wherever they show up.
SECRET_ENV_VARS: tuple[str, ...] = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN", "GCS_OAUTH_TOKEN",
    "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET", "HF_TOKEN",
)
_MASK = "***"
# A secret shorter than this is not masked by value (it would mask ordinary words).
_MIN_SECRET_CHARS = 8

# scheme://userinfo@host: the userinfo (user:password, or a bare token) goes. Secrets pasted
# without percent-encoding may hold '/' (AWS secret keys do), so user:password may span slashes;
# host:port/ is no password.
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s?#:]+:(?!\d+/)[^@\s]*|[^/@\s?#:]+)@")

_SECRET_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    # PEM private keys (service-account JSON); first, before key=value cuts them
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
     "-----PRIVATE KEY " + _MASK + "-----"),
    (_USERINFO, r"\g<scheme>" + _MASK + "@"),
    # query parameters that carry signatures or tokens (presigned S3/GCS URLs, SAS, API keys)
    (re.compile(r"(?i)(?P<keep>[?&;][^=&;\s#]*(?:sig|signature|token|key|secret|password|passwd|pwd|credential|auth)"
                r"[^=&;\s#]*=)[^&;#\s'\"]+"), r"\g<keep>" + _MASK),
    # Authorization headers and bearer tokens
    (re.compile(r"(?i)(?P<keep>\bbearer\s+)[A-Za-z0-9._~+/=-]+"), r"\g<keep>" + _MASK),
    (re.compile(r"(?i)(?P<keep>\bauthorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+"), r"\g<keep>" + _MASK),
    # key = value, "key": "value" (config files, JSON credentials, reprs)
    (re.compile(r"(?i)(?P<keep>\b(?:aws_secret_access_key|aws_session_token|secret_access_key|secret_key|"
                r"session_token|client_secret|refresh_token|access_token|private_key|password|passwd)"
                r"['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\g<keep>" + _MASK),
    # secret: value / api-key=value in free text (exception messages echoing a configuration)
    (re.compile(r"(?i)(?P<keep>\b[\w-]*(?:secret|password|passwd|token|api[_-]?key|access[_-]?key(?:[_-]?id)?)\b"
                r"\s*[=:]\s*)(?!\*\*\*)[^\s&,;'\"]+"), r"\g<keep>" + _MASK),
)


def url_credentials(uri: str | None) -> list[str]:
    """The userinfo of ``uri`` and its parts of 4+ characters, longest first (libraries echo
    them without the scheme: ``Invalid bucket name "KEY:SECRET@b"``)."""
    if not isinstance(uri, str):
        return []
    found = []
    for m in _USERINFO.finditer(uri):
        userinfo = m.group("userinfo")
        found.append(userinfo)
        found.extend(part for part in userinfo.split(":", 1) if len(part) >= 4)
    return sorted(set(found), key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None, uri: str | None = None) -> str:
    """``text`` with credentials masked: the values of :data:`SECRET_ENV_VARS`, user info in
    URLs, signed-URL signatures and tokens, bearer tokens, ``secret=...`` pairs, private keys.

    ``s3://KEY:SECRET@bucket/x`` -> ``s3://***@bucket/x``;
    ``https://h/x?X-Amz-Signature=abc`` -> ``https://h/x?X-Amz-Signature=***``. Idempotent;
    paths and file names are left alone.

    Args:
        text: a message, log line, URL or record.
        environ: where the secret values are looked up (default ``os.environ``).
        uri: a URL whose credentials are also masked wherever they appear in ``text``.
    """
    if not isinstance(text, str) or not text:
        return text
    for secret in url_credentials(uri):
        text = text.replace(secret, _MASK)
    env = os.environ if environ is None else environ
    for name in SECRET_ENV_VARS:
        value = env.get(name, "")
        if len(value) >= _MIN_SECRET_CHARS and value in text:
            text = text.replace(value, _MASK)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through :func:`redact`.

    Install it on the handlers that write logs (``install_log_redaction``); a filter on a
    handler sees the records of every logger that reaches it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handler reports it, as it would unfiltered
            return True
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Adds a :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


# ------------------------------------------------------------------ URLs and filesystems


def protocol_of(url: str) -> str:
    """The fsspec protocol of ``url`` (``""`` for a local path)."""
    return url.split("::", 1)[0].split("://", 1)[0].lower() if "://" in url else ""


def check_url(url: str) -> str:
    """Returns ``url`` if it names storage.

    Raises:
        ValueError: for command-running schemes, and for URLs that carry credentials
            (a password, a signature or a token): those come from the standard chains.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"expected a non-empty path or URL. Found: {url!r}")
    if url.startswith("pipe:") or protocol_of(url) in _REFUSED_PROTOCOLS:
        raise ValueError(f"refusing {url!r}: only storage URLs (local paths, file://, gs://, s3://, ...) are accepted")
    if "://" in url and redact(url) != url:
        raise ValueError(
            f"refusing {redact(url)!r}: it carries credentials; give none in URLs and let the standard chains "
            "supply them (gcloud auth application-default login / GOOGLE_APPLICATION_CREDENTIALS for gs://, "
            "AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://)")
    return url


def storage_options(protocol: str, environ: Mapping[str, str] | None = None) -> dict:
    """Keyword arguments for the filesystem of ``protocol``, from the endpoint variables of
    the environment (see the module docstring). Never credentials.

    Passing the endpoint explicitly also keys fsspec's instance cache by it, so a process
    that changes endpoints does not reuse a filesystem bound to the old one.
    """
    env = os.environ if environ is None else environ
    protocol = protocol.lower()
    if protocol in GCS_PROTOCOLS:
        host = env.get("STORAGE_EMULATOR_HOST", "")
        if host and host != "default":
            if "://" not in host:
                host = "http://" + host
            # Emulators accept any request; asking the credential chain would probe the GCE
            # metadata server (off this host) and wait for it.
            return {"endpoint_url": host, "token": "anon"}
        return {}
    if protocol in S3_PROTOCOLS:
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        return {"endpoint_url": endpoint} if endpoint else {}
    return {}


def _use_plain_gcsfs() -> None:
    # gcsfs' experimental zonal/HNS layer (on unless GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
    # before gcsfs is imported) asks a gRPC API for every bucket's layout; an emulator has none,
    # and each write stalls 60 s on it. Against an emulator, use the plain JSON-API filesystem
    # whatever the import order was.
    from gcsfs.core import GCSFileSystem

    for protocol in GCS_PROTOCOLS:
        if fsspec.get_filesystem_class(protocol) is not GCSFileSystem:
            fsspec.register_implementation(protocol, GCSFileSystem, clobber=True)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for ``url``."""
    protocol = protocol_of(check_url(url))
    options = storage_options(protocol) if "::" not in url else {}
    if protocol in GCS_PROTOCOLS and options:
        _use_plain_gcsfs()
    return fsspec.core.url_to_fs(url, **options)


def join(base: str, *parts: str) -> str:
    """Joins path parts onto a local path or URL."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(base, *parts)


def unstrip(fs: fsspec.AbstractFileSystem, like_url: str, path: str) -> str:
    """Turns a path of ``fs`` back into a URL with the scheme of ``like_url``."""
    if "://" not in like_url:
        return path
    return fs.unstrip_protocol(path)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


@contextlib.contextmanager
def open_input(url: str) -> Iterator[IO[bytes]]:
    """Opens a file for streaming reads, holding at most one ``READ_BLOCK_BYTES`` block."""
    fs, path = filesystem(url)
    kwargs = {} if _is_local(fs) else {"block_size": READ_BLOCK_BYTES, "cache_type": "readahead"}
    with fs.open(path, "rb", **kwargs) as f:
        yield f


def open_output(url: str) -> IO[bytes]:
    """Opens a file for streaming writes (parent folders made locally), buffering at most one
    ``WRITE_BLOCK_BYTES`` part. The object appears when the file is closed."""
    fs, path = filesystem(url)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
        return fs.open(path, "wb")
    return fs.open(path, "wb", block_size=WRITE_BLOCK_BYTES)


def read_bytes(url: str) -> bytes:
    with open_input(url) as f:
        return f.read()


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file: one ranged request on object stores, no read-ahead."""
    if end <= start:
        return b""
    fs, path = filesystem(url)
    return fs.cat_file(path, start=start, end=end)


class RangeReader:
    """Reads ranges of many files: local files stay open between reads (a seek each); on object
    stores each range is one ranged request (no read-ahead). A context manager."""

    def __init__(self, max_open: int = 8):
        self._open: dict[str, IO[bytes]] = {}
        self._max_open = max_open

    def read(self, url: str, start: int, end: int) -> bytes:
        f = self._open.get(url)
        if f is None:
            fs, path = filesystem(url)
            if not _is_local(fs):
                return read_range(url, start, end)
            if len(self._open) >= self._max_open:
                self._open.pop(next(iter(self._open))).close()
            f = self._open[url] = fs.open(path, "rb")
        f.seek(start)
        return f.read(end - start)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self) -> "RangeReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_bytes(url: str, data: bytes) -> None:
    """Writes a whole object (readers of an object store see all of it or nothing)."""
    with open_output(url) as f:
        f.write(data)


def rename(src: str, dst: str) -> None:
    """Moves an object: an atomic rename locally, a server-side copy then delete on object stores.

    Object stores go through copy + delete explicitly, the same on every store: gcsfs' ``mv``
    first tries GCS's newer ``moveTo`` call and retries it for half a minute where it is not
    implemented (emulators, other S3/GCS-compatible servers) before falling back to the same.
    """
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(dst_path) or ".", exist_ok=True)
        fs.mv(src_path, dst_path)
        return
    fs.copy(src_path, dst_path)
    fs.rm(src_path)


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
