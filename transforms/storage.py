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

Memory per open object is bounded: reads keep at most ``READ_BLOCKS`` blocks of
``READ_BLOCK_BYTES``, writes buffer one ``WRITE_BLOCK_BYTES`` part, whatever the filesystem's
default (s3fs buffers 50 MiB per file by default, which times a worker's dozen threads adds up).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import io
import logging
import os
import posixpath
import random
import re
import time
import uuid
from typing import IO, Callable, Iterable, Iterator, Mapping, TypeVar

import fsspec

logger = logging.getLogger(__name__)
# fsspec protocols that run programs or are otherwise not storage.
_REFUSED_PROTOCOLS = frozenset({"pipe", "cmd", "exec", "shell"})

# Reads fetch whole aligned blocks of this size (gcsfs defaults to 5 MiB, s3fs to 50 MiB) ...
READ_BLOCK_BYTES = 4 * 1024 * 1024
# ... and an open file keeps the last few it used: decoders read a file's head, then its tail
# (an ID3v1 tag, Ogg's last page), then its head again; each block is requested once.
READ_BLOCKS = 3
# Ranged reads of many small pieces (samples read back from spill files): requests in flight, and
# the bytes they may hold, ahead of the reader.
PREFETCH_REQUESTS = 16
PREFETCH_BYTES = 64 * 1024 * 1024
# Write buffer per open file: one multipart part (S3 needs >= 5 MiB parts; GCS resumable
# chunks must be multiples of 256 KiB).
WRITE_BLOCK_BYTES = 8 * 1024 * 1024

# botocore's own retries, kept short: :func:`retrying` retries transient errors with backoff for
# the run's whole retry budget, and botocore's legacy mode (5 attempts, up to ~15 s) under each of
# our attempts made every read of an unreachable endpoint stall.
S3_CLIENT_CONFIG = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 60}

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
    # (not a path: 'refusing pipe:cat /etc/passwd: ...' names a file, it holds no password)
    (re.compile(r"(?i)(?P<keep>(?<![/\\.])\b(?:aws_secret_access_key|aws_session_token|secret_access_key|secret_key|"
                r"session_token|client_secret|refresh_token|access_token|private_key|password|passwd)"
                r"['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\g<keep>" + _MASK),
    # secret: value / api-key=value in free text (exception messages echoing a configuration)
    (re.compile(r"(?i)(?P<keep>(?<![/\\.\w-])[\w-]*(?:secret|password|passwd|token|api[_-]?key|access[_-]?key(?:[_-]?id)?)\b"
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
        return {**({"endpoint_url": endpoint} if endpoint else {}), "config_kwargs": dict(S3_CLIENT_CONFIG)}
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


def is_local(url: str) -> bool:
    """Whether ``url`` is a path on this machine (a plain path or ``file://``)."""
    return protocol_of(url) in ("", "file", "local")


def absolute(url: str) -> str:
    """``url`` made independent of the working directory: a local path or ``file://`` URL
    becomes an absolute path (``~`` expanded, ``..`` resolved); other URLs are returned as they are."""
    if not is_local(url):
        return url
    path = url.split("://", 1)[1] if "://" in url else url
    return os.path.abspath(os.path.expanduser(path))


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


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local (POSIX) filesystem."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


_is_local = is_local_fs


def local_path(url: str) -> str | None:
    """The operating system's path of ``url`` when it names a local file (a plain path or
    ``file://``), else None."""
    if "::" in url or ("://" in url and protocol_of(url) not in ("file", "local")):
        return None  # another store, or a scheme fsspec does not know (nothing local to name)
    fs, path = filesystem(url)
    return path if _is_local(fs) else None


@contextlib.contextmanager
def open_input(url: str) -> Iterator[IO[bytes]]:
    """Opens a file for reads, holding at most ``READ_BLOCKS`` blocks of ``READ_BLOCK_BYTES``.

    On object stores, a read that fails with a transient error (see :func:`is_transient`) is
    retried with backoff, reopening the object at the same offset; what still fails raises
    :class:`TransientStorageError`.
    """
    fs, path = filesystem(url)
    if _is_local(fs):
        with fs.open(path, "rb") as f:
            yield f
        return
    raw = _RetryingReader(lambda: fs.open(path, "rb", block_size=READ_BLOCK_BYTES, cache_type="blockcache",
                                          cache_options={"maxblocks": READ_BLOCKS}), url)
    with io.BufferedReader(raw, buffer_size=64 * 1024) as f:
        yield f


def open_output(url: str) -> IO[bytes]:
    """Opens a file for streaming writes (parent folders made locally), buffering at most one
    ``WRITE_BLOCK_BYTES`` part. The object appears when the file is closed."""
    fs, path = filesystem(url)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
        return fs.open(path, "wb")
    return fs.open(path, "wb", block_size=WRITE_BLOCK_BYTES)


def read_bytes(url: str, fresh: bool = False) -> bytes:
    """The whole object. ``fresh``: forget what this process has cached of its folder's listing
    first (an object store client that listed the folder before another process wrote the object
    would not find it)."""
    if fresh:
        fs, path = filesystem(url)
        fs.invalidate_cache(path)
    with open_input(url) as f:
        return f.read()


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file: one ranged request on object stores, no read-ahead."""
    if end <= start:
        return b""
    fs, path = filesystem(url)
    return fs.cat_file(path, start=start, end=end)


def read_ranges(ranges: Iterable[tuple[str, int, int]], ahead_bytes: int = PREFETCH_BYTES,
                requests: int = PREFETCH_REQUESTS) -> Iterator[bytes]:
    """The bytes of each ``(url, start, end)``, in the order given.

    Local files stay open between reads (a seek each, at most 8 open). On object stores each range
    is one ranged request (retried while it fails transiently), and up to ``requests`` of them are
    in flight ahead of the consumer, holding at most ``ahead_bytes`` (at least one range): a writer
    reading thousands of small samples back from spill files is not bound by one request's latency.
    """
    ranges = list(ranges)
    if not ranges:
        return
    if all(_is_local(filesystem(url)[0]) for url in {url for url, _, _ in ranges}):
        yield from _read_local_ranges(ranges)
        return
    from concurrent.futures import ThreadPoolExecutor

    def fetch(url: str, start: int, end: int) -> bytes:
        return retrying(lambda: read_range(url, start, end), f"reading bytes {start}-{end} of {url}")

    pending: collections.deque = collections.deque()  # (future, bytes), in order
    held, i = 0, 0
    with ThreadPoolExecutor(max_workers=requests, thread_name_prefix="audiotok-ranges") as pool:
        try:
            while i < len(ranges) or pending:
                while i < len(ranges) and len(pending) < requests and (
                        not pending or held + ranges[i][2] - ranges[i][1] <= ahead_bytes):
                    url, start, end = ranges[i]
                    pending.append((pool.submit(fetch, url, start, end), end - start))
                    held += end - start
                    i += 1
                future, size = pending.popleft()
                held -= size
                yield future.result()
        finally:
            for future, _ in pending:  # the consumer stopped early or a read failed
                future.cancel()


def _read_local_ranges(ranges: list[tuple[str, int, int]], max_open: int = 8) -> Iterator[bytes]:
    files: dict[str, IO[bytes]] = {}
    try:
        for url, start, end in ranges:
            f = files.get(url)
            if f is None:
                if len(files) >= max_open:
                    files.pop(next(iter(files))).close()
                fs, path = filesystem(url)
                f = files[url] = fs.open(path, "rb")
            f.seek(start)
            yield f.read(end - start)
    finally:
        for f in files.values():
            f.close()


def write_bytes(url: str, data: bytes) -> None:
    """Writes a whole object (readers of an object store see all of it or nothing; a local
    file is written in place: use :func:`write_atomic` for files readers rely on)."""
    def write() -> None:
        with open_output(url) as f:
            f.write(data)

    retrying(write, f"writing {url}")


def rename(src: str, dst: str) -> None:
    """Moves an object: an atomic rename locally, a server-side copy then delete on object stores.

    Object stores go through copy + delete explicitly, the same on every store: gcsfs' ``mv``
    first tries GCS's newer ``moveTo`` call and retries it for half a minute where it is not
    implemented (emulators, other S3/GCS-compatible servers) before falling back to the same.
    Transient errors are retried; a retried move whose source is gone and whose target is
    there had already happened.
    """
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(dst_path) or ".", exist_ok=True)
        fs.mv(src_path, dst_path)
        return

    def move() -> None:
        try:
            fs.copy(src_path, dst_path)
        except FileNotFoundError:
            fs.invalidate_cache()
            if fs.exists(dst_path) and not fs.exists(src_path):
                return  # an earlier attempt copied and deleted, and its answer was lost
            raise
        try:
            fs.rm(src_path)
        except FileNotFoundError:
            pass

    retrying(move, f"moving {src} to {dst}")


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return retrying(lambda: fs.exists(path), f"looking up {url}")


def remove(url: str) -> None:
    fs, path = filesystem(url)

    def rm() -> None:
        if fs.exists(path):
            try:
                fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass  # gone already (a retried removal)

    retrying(rm, f"removing {url}")


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if _is_local(fs):
        fs.makedirs(path, exist_ok=True)


def list_folder(url: str) -> list[tuple[str, str]]:
    """(URL, name) of each entry directly in a folder (files and folders); [] when there is none."""
    fs, path = filesystem(url)
    try:
        found = retrying(lambda: fs.ls(path, detail=False), f"listing {url}")
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for entry in found:
        entry = entry.rstrip("/")
        if entry != path.rstrip("/"):
            out.append((unstrip(fs, url, entry), entry.rsplit("/", 1)[-1]))
    return out


def list_files(url_pattern: str) -> Iterator[tuple[str, dict]]:
    """Yields (url, info) for each file matching a glob pattern (``**`` recurses).

    A pattern without glob characters that names a directory matches every file below it. A
    relative local pattern is made absolute first (``..`` resolved), so a file has one URL
    whatever directory it was listed from.
    """
    if protocol_of(url_pattern) == "":
        url_pattern = absolute(url_pattern)
    fs, path = filesystem(url_pattern)
    if not any(c in path for c in "*?["):
        if retrying(lambda: fs.isdir(path), f"looking up {url_pattern}"):
            path = posixpath.join(path.rstrip("/"), "**")
        else:
            info = retrying(lambda: fs.info(path), f"looking up {url_pattern}")
            yield unstrip(fs, url_pattern, path), info
            return
    listed = retrying(lambda: fs.glob(path, detail=True), f"listing {url_pattern}")
    for found, info in sorted(listed.items()):
        if info.get("type") == "directory":
            continue
        yield unstrip(fs, url_pattern, found), info


def modified_time(url: str) -> float | None:
    """When an object was last written (Unix time), or None when it does not exist."""
    fs, path = filesystem(url)
    try:
        info = retrying(lambda: fs.info(path), f"looking up {url}")
    except FileNotFoundError:
        return None
    for key in ("mtime", "LastModified", "updated", "timeCreated", "created"):
        value = info.get(key)
        if value in (None, ""):
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, (int, float)):
            return float(value)
        try:
            from datetime import datetime

            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return None


def version_marker(info: dict) -> str | None:
    """The store's version of an object: GCS generation, S3 ETag, or local mtime."""
    for key in ("generation", "ETag", "etag", "mtime", "LastModified", "updated"):
        value = info.get(key)
        if value not in (None, ""):
            return f"{key}:{value}".replace('"', "")
    return None


# ------------------------------------------------------------------ transient errors and retries


class TransientStorageError(OSError):
    """A storage call that kept failing with errors that may pass (connection refused or reset,
    timeouts, 5xx answers, throttling) after every retry of the run.

    An input whose read ends here is recorded as transient and retried by the next refresh.
    """

    transient = True


class PreconditionFailed(OSError):
    """A conditional write lost: the object was not at the generation the writer planned from
    (or existed when the writer expected none)."""


_T = TypeVar("_T")

# Errno values of network failures that a later attempt may not meet.
_TRANSIENT_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EPIPE, errno.EAGAIN, errno.EBUSY,
    getattr(errno, "EREMOTEIO", -1),
})
# Exception class names of the storage libraries (botocore, aiohttp, requests, urllib3, fsspec)
# for the same, matched by name so that none of them is imported here.
_TRANSIENT_CLASSES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "ResponseStreamingError", "IncompleteRead", "ClientConnectorError",
    "ClientConnectionError", "ServerDisconnectedError", "ClientOSError", "ClientPayloadError", "ServerTimeoutError",
    "ConnectionTimeoutError", "SocketTimeoutError", "ProtocolError", "ChunkedEncodingError", "FSTimeoutError",
    "NewConnectionError", "MaxRetryError",
})
# HTTP statuses and S3 error codes that mean "try again".
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
    "408", "429", "500", "502", "503", "504",
})
# Definite answers: no retry makes them go away.
_DEFINITE = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
             PreconditionFailed)


def _transient_alone(exc: BaseException) -> bool:
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, _DEFINITE):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if any(cls.__name__ in _TRANSIENT_CLASSES for cls in type(exc).__mro__):
        return True
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and value in _TRANSIENT_STATUSES:
            return True
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):  # botocore's ClientError
        code = str((response.get("Error") or {}).get("Code", ""))
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUSES:
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error may pass if the call is repeated: connection refused or reset,
    timeouts, HTTP 408/429/5xx, throttling codes; also when such an error is the cause of the
    one raised (libraries wrap them). Missing objects, refused permissions and lost
    preconditions are definite answers, never transient."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _DEFINITE):
            return False
        if _transient_alone(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient storage errors are retried inside a run.

    Attributes:
        total_s: give up once this many seconds have passed since the first attempt
            (0: no retries).
        first_s: the first wait; each next one doubles, with jitter.
        max_s: the longest single wait.
    """

    total_s: float = 120.0
    first_s: float = 0.5
    max_s: float = 20.0

    def __post_init__(self) -> None:
        if self.total_s < 0 or self.first_s <= 0 or self.max_s < self.first_s:
            raise ValueError(f"need total_s >= 0 and 0 < first_s <= max_s. Found: {self}")

    def waits(self) -> Iterator[float]:
        """The waits between attempts (jittered, capped), until ``total_s`` would be passed."""
        spent, wait = 0.0, self.first_s
        while True:
            pause = wait * random.uniform(0.5, 1.0)
            if spent + pause > self.total_s:
                return
            spent += pause
            yield pause
            wait = min(wait * 2, self.max_s)


RETRY_ENV = "AUDIOTOK_STORAGE_RETRY_S"


def retry_policy(environ: Mapping[str, str] | None = None) -> RetryPolicy:
    """The run's retry policy: :class:`RetryPolicy` with ``total_s`` from ``AUDIOTOK_STORAGE_RETRY_S``
    when set (read here, like the endpoints: workers of portable runners get no pipeline options)."""
    env = os.environ if environ is None else environ
    raw = env.get(RETRY_ENV, "")
    if not raw:
        return RetryPolicy()
    try:
        total = float(raw)
    except ValueError:
        raise ValueError(f"{RETRY_ENV} must be a number of seconds. Found: {raw!r}") from None
    return RetryPolicy(total_s=max(0.0, total))


def retrying(call: Callable[[], _T], what: str, policy: RetryPolicy | None = None) -> _T:
    """``call()``, repeated with backoff while it fails with a transient error.

    Args:
        call: the storage operation (idempotent: it may run more than once).
        what: what it does, for the log line and the error (``reading gs://b/x``).
        policy: default :func:`retry_policy`.

    Raises:
        TransientStorageError: when it still fails transiently once the policy's time is spent
            (its cause is the last error).
        Exception: any non-transient error, at once.
    """
    policy = policy or retry_policy()
    waits = policy.waits()
    attempts, start = 0, time.monotonic()
    while True:
        attempts += 1
        try:
            return call()
        except Exception as e:
            if not is_transient(e):
                raise
            pause = next(waits, None)
            if pause is None:
                raise TransientStorageError(
                    f"{what}: {_one_line(e)} (still failing after {attempts} attempt(s) over "
                    f"{time.monotonic() - start:.0f} s)") from e
            logger.warning("%s: %s; retrying in %.1f s", redact(what), redact(_one_line(e)), pause)
            time.sleep(pause)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:300]


class _RetryingReader(io.RawIOBase):
    """A read-only, seekable view of an object store file that reopens the object at the same
    offset when a read fails transiently (see :func:`retrying`)."""

    def __init__(self, opener: Callable[[], IO[bytes]], url: str):
        super().__init__()
        self._opener, self._url, self._pos = opener, url, 0
        self._file: IO[bytes] | None = retrying(opener, f"opening {url}")

    @property
    def size(self) -> int | None:
        return getattr(self._file, "size", None)

    @property
    def file(self) -> IO[bytes] | None:
        """The store's file object read through now (None between a failure and the reopen)."""
        return self._file

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _do(self, op: Callable[[IO[bytes]], _T], what: str) -> _T:
        fresh = [False]

        def attempt() -> _T:
            if self._file is None or fresh[0]:
                self._reopen()
            fresh[0] = True  # a failed attempt leaves the file in an unknown state: reopen the next
            return op(self._file)

        return retrying(attempt, f"{what} {self._url}")

    def _reopen(self) -> None:
        old, self._file = self._file, None
        if old is not None:
            try:
                old.close()
            except Exception:  # the failed connection's file: nothing more to read from it
                pass
        self._file = self._opener()
        self._file.seek(self._pos)

    def read(self, size: int = -1) -> bytes:
        data = self._do(lambda f: f.read(size), "reading")
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._do(lambda f: f.seek(offset, whence), "seeking in")
        return self._pos

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        super().close()


# ------------------------------------------------------------------ atomic writes and generations


def generation(url: str) -> str | None:
    """The current generation of an object, or None when there is none.

    GCS: the object generation; S3: the ETag; local files: inode, change time and size (every
    :func:`write_atomic` makes a new inode); other stores: the version marker of their listing.
    """
    fs, path = filesystem(url)
    if _is_local(fs):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"

    def lookup() -> str | None:
        try:
            fs.invalidate_cache(path)
            info = fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return None
        value = info.get("generation") or info.get("ETag") or info.get("etag")
        return str(value).strip('"') if value not in (None, "") else (version_marker(info) or "")

    return retrying(lookup, f"looking up {url}")


def read_versioned(url: str) -> tuple[bytes, str]:
    """An object's bytes and the generation they belong to (see :func:`generation`).

    Raises:
        FileNotFoundError: when the object does not exist.
    """
    for _ in range(5):
        before = generation(url)
        if before is None:
            raise FileNotFoundError(url)
        data = read_bytes(url)
        if generation(url) == before:
            return data, before
    raise TransientStorageError(f"reading {url}: it changed under every one of 5 reads")


def write_atomic(url: str, data: bytes, if_generation: str | None = None, if_absent: bool = False) -> None:
    """Publishes a whole object so that readers see the old bytes or the new ones, never a part.

    Local (POSIX) files: written under a temporary name in the same folder, flushed to disk,
    then renamed over the target (``if_absent``: linked, which fails when the target exists).
    A full disk or a crash at any byte leaves the previous version intact. GCS and S3: one
    single-object write, conditional on the generation (``ifGenerationMatch``, ``If-Match``)
    or on absence (``ifGenerationMatch=0``, ``If-None-Match: *``). Other stores: the check,
    then a plain write.

    Args:
        url: the object.
        data: its new bytes.
        if_generation: write only if the object is at this generation (:func:`generation`).
        if_absent: write only if there is no object.

    Raises:
        PreconditionFailed: the object was not at ``if_generation`` (or existed, with ``if_absent``).
    """
    if if_generation is not None and if_absent:
        raise ValueError("give if_generation or if_absent, not both")
    fs, path = filesystem(url)
    if _is_local(fs):
        _write_atomic_local(path, data, if_generation, if_absent)
        return
    protocol = protocol_of(url)

    def write() -> None:
        try:
            if protocol in S3_PROTOCOLS:
                _write_s3(fs, path, data, if_generation, if_absent)
            elif protocol in GCS_PROTOCOLS:
                _write_gcs(fs, path, data, if_generation, if_absent)
            else:
                _check_precondition(url, if_generation, if_absent)
                fs.pipe_file(path, data)
        except PreconditionFailed:
            raise
        except FileExistsError as e:  # how s3fs and gcsfs report a lost 412 precondition
            raise PreconditionFailed(f"{url} changed since it was read ({e})") from e
        except OSError as e:
            if _lost_precondition(e):
                raise PreconditionFailed(f"{url} changed since it was read ({e})") from e
            raise
        finally:
            fs.invalidate_cache(path)

    try:
        retrying(write, f"writing {url}")
    except PreconditionFailed:
        # A retried write whose first attempt landed (its answer lost) fails its own precondition.
        try:
            if read_bytes(url) == data:
                return
        except FileNotFoundError:
            pass
        raise


def _lost_precondition(e: BaseException) -> bool:
    """An HTTP 412 answer, however the library wrapped it (s3fs: OSError(EINVAL) from a ClientError)."""
    while e is not None:
        response = getattr(e, "response", None)
        if isinstance(response, Mapping):
            if (str((response.get("Error") or {}).get("Code", "")) in ("PreconditionFailed", "412")
                    or (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") == 412):
                return True
        if getattr(e, "code", None) == 412 or getattr(e, "status", None) == 412:
            return True
        e = e.__cause__
    return False


def _check_precondition(url: str, if_generation: str | None, if_absent: bool) -> None:
    if if_generation is None and not if_absent:
        return
    current = generation(url)
    if if_absent and current is not None:
        raise PreconditionFailed(f"{url} exists")
    if if_generation is not None and current != if_generation:
        raise PreconditionFailed(f"{url} changed since it was read (generation {current}, expected {if_generation})")


def _write_atomic_local(path: str, data: bytes, if_generation: str | None, if_absent: bool) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if if_absent:
            try:
                os.link(temp, path)  # fails if the target exists: an exclusive create
            except FileExistsError:
                raise PreconditionFailed(f"{path} exists") from None
        else:
            # The lease (audiotok.transforms.lease) makes this check-then-rename the only writer's.
            _check_precondition(path, if_generation, False)
            os.replace(temp, path)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _write_s3(fs, path: str, data: bytes, if_generation: str | None, if_absent: bool) -> None:
    conditions = {}
    if if_absent:
        conditions["IfNoneMatch"] = "*"
    elif if_generation is not None:
        conditions["IfMatch"] = f'"{if_generation}"'
    # One PUT (up to 5 GB): S3 shows all of it or nothing.
    fs.pipe_file(path, data, chunksize=max(len(data), 1 << 20) + 1, **conditions)


def _write_gcs(fs, path: str, data: bytes, if_generation: str | None, if_absent: bool) -> None:
    from urllib.parse import quote

    bucket, key, _ = fs.split_path(path)
    match = "0" if if_absent else if_generation
    params = {"uploadType": "media", "name": key}
    if match is not None:
        params["ifGenerationMatch"] = str(match)
    # One media upload: GCS shows all of it or nothing.
    fs.call("POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o", data=data,
            headers={"Content-Type": "application/octet-stream"}, json_out=True, **params)
