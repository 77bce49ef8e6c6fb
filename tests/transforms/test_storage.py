"""audiotok.transforms.storage without a server: URLs, endpoints from the environment, redaction.

The same functions against real S3 and GCS protocol servers: tests/transforms/test_cloud_emulators.py.
"""

from __future__ import annotations

import logging

import pytest

from audiotok.transforms import storage

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize("url", ["/data/x.wav", "file:///data/x.wav", "gs://b/x.wav", "s3://b/a/**",
                                 "https://host/x.wav", "memory://x", "s3://b/key:with:colons@2x.wav",
                                 "http://127.0.0.1:9000/b/voice@2x.wav"])
def test_check_url_accepts_storage(url):
    assert storage.check_url(url) == url


@pytest.mark.parametrize("url", ["pipe:cat /etc/passwd", "PIPE://x", "cmd://ls", "", None])
def test_check_url_refuses_commands_and_empties(url):
    with pytest.raises(ValueError):
        storage.check_url(url)


@pytest.mark.parametrize("url", [
    f"https://user:{SECRET}@host/a.wav",
    f"s3://AKIAX:{SECRET}@bucket/a.wav",
    f"https://b.s3.amazonaws.com/a.wav?X-Amz-Credential=AKIAX&X-Amz-Signature={SECRET}",
    f"https://storage.googleapis.com/b/a.wav?X-Goog-Signature={SECRET}",
    f"https://host/a.wav?access_token={SECRET}",
])
def test_check_url_refuses_credentials_and_does_not_echo_them(url):
    with pytest.raises(ValueError, match="credentials") as e:
        storage.check_url(url)
    assert SECRET not in str(e.value)


# ------------------------------------------------------------------ endpoints


def test_storage_options_follow_the_environment():
    assert storage.storage_options("gs", {}) == {}
    assert storage.storage_options("gs", {"STORAGE_EMULATOR_HOST": "localhost:9023"}) == {
        "endpoint_url": "http://localhost:9023", "token": "anon"}
    assert storage.storage_options("gcs", {"STORAGE_EMULATOR_HOST": "default"}) == {}
    assert storage.storage_options("s3", {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}) == {
        "endpoint_url": "http://127.0.0.1:5000", "config_kwargs": storage.S3_CLIENT_CONFIG}
    # the service-specific variable wins, as in botocore
    assert storage.storage_options("s3", {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"})[
        "endpoint_url"] == "http://b"
    assert storage.storage_options("file", {"AWS_ENDPOINT_URL": "http://a"}) == {}


def test_storage_options_never_carry_credentials():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_ACCESS_KEY_ID": "AKIAX",
           "AWS_SECRET_ACCESS_KEY": SECRET, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023"}
    for protocol in ("s3", "gs"):
        assert SECRET not in repr(storage.storage_options(protocol, env))


def test_filesystem_against_an_emulator_uses_plain_gcsfs(monkeypatch):
    """gcsfs' experimental zonal-bucket layer stalls on emulators; it is bypassed whatever the
    import order of gcsfs was."""
    gcsfs = pytest.importorskip("gcsfs")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    fs, path = storage.filesystem("gs://bucket/a/b.wav")
    assert type(fs) is gcsfs.core.GCSFileSystem
    assert path == "bucket/a/b.wav"
    assert fs._location == "http://127.0.0.1:9"


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize("text", [
    f"https://user:{SECRET}@host/a.wav",
    f"GET /a.wav?X-Amz-Signature={SECRET}&x=1",
    f"headers={{'Authorization': 'Bearer {SECRET}'}}",
    f"Authorization: AWS4-HMAC-SHA256 Credential=AKIAX/2026, Signature={SECRET}",
    f"aws_secret_access_key = {SECRET}",
    f'{{"client_secret": "{SECRET}", "type": "authorized_user"}}',
    f'"private_key": "-----BEGIN PRIVATE KEY-----\\nMII{SECRET}\\n-----END PRIVATE KEY-----\\n"',
    # shapes the log filter missed while failure records had their own rules
    f"https://{SECRET.replace('/', '')}@huggingface.co/org/model",  # a bare token as user info
    f"s3://AKIAEXAMPLE:{SECRET}/with/slashes@bucket/a.wav",
    f"ValueError: api-key: {SECRET} rejected",
    f"GET /a.wav?sv=2024&sig={SECRET}",
])
def test_redact_masks_credential_shapes(text):
    out = storage.redact(text, environ={})
    assert SECRET not in out and SECRET.replace("/", "") not in out
    assert "***" in out


def test_redact_masks_the_values_of_secret_variables_anywhere():
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": "AKIAPUBLICID"}
    out = storage.redact(f"botocore said {SECRET!r} for AKIAPUBLICID", environ=env)
    assert out == "botocore said '***' for AKIAPUBLICID"


def test_redact_masks_the_credentials_of_a_uri_where_libraries_echo_them():
    uri = f"s3://AKIAEXAMPLE:{SECRET}@bucket/a.wav"
    out = storage.redact(f'Invalid bucket name "AKIAEXAMPLE:{SECRET}@bucket"', environ={}, uri=uri)
    assert SECRET not in out and "AKIAEXAMPLE" not in out


def test_redact_leaves_ordinary_text_alone():
    text = "decode_error: soundfile: Error opening s3://bucket/a/b.wav: format not recognised (key=3)"
    assert storage.redact(text, environ={"AWS_SECRET_ACCESS_KEY": "short"}) == text


def test_log_redaction_filter_masks_messages_arguments_and_tracebacks(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("audiotok.test.redaction")
    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        storage.install_log_redaction(logger)
        storage.install_log_redaction(logger)  # idempotent
        assert sum(isinstance(f, storage.RedactingFilter) for f in handler.filters) == 1
        logger.warning("credentials %s in an argument", SECRET)
        try:
            raise OSError(f"refused https://u:{SECRET}@h/x")
        except OSError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert len(records) == 2
    assert all(SECRET not in r for r in records)
    assert "OSError" in records[1]


def test_failure_records_are_redacted(monkeypatch):
    from audiotok.transforms.failures import READ_ERROR, Failure

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    record = Failure(uri=f"https://u:{SECRET}@h/x.wav", reason=READ_ERROR,
                     message=f"ClientError: signature {SECRET} does not match").to_json()
    assert SECRET not in record


# ------------------------------------------------------------------ local files


def test_local_open_output_makes_folders_and_rename_moves(tmp_path):
    url = str(tmp_path / "a" / "b" / "x.bin")
    with storage.open_output(url) as f:
        f.write(b"abc")
    storage.rename(url, str(tmp_path / "c" / "y.bin"))
    assert storage.read_bytes(str(tmp_path / "c" / "y.bin")) == b"abc"
    assert not storage.exists(url)


def test_memory_filesystem_round_trip():
    """Any fsspec filesystem follows the object-store path (copy + delete on rename)."""
    storage.write_bytes("memory://audiotok-test/a/x.bin", b"123")
    storage.rename("memory://audiotok-test/a/x.bin", "memory://audiotok-test/b/x.bin")
    (found, _), = storage.list_files("memory://audiotok-test/**")
    assert found.endswith("audiotok-test/b/x.bin") and storage.read_bytes(found) == b"123"
    storage.remove("memory://audiotok-test")


# ------------------------------------------------------------------ atomic writes and generations


def test_write_atomic_replaces_whole_files_and_leaves_no_temp(tmp_path):
    url = str(tmp_path / "meta" / "index.json")
    storage.write_atomic(url, b"one")
    first = storage.generation(url)
    storage.write_atomic(url, b"two", if_generation=first)
    assert storage.read_bytes(url) == b"two" and storage.generation(url) != first
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == ["index.json"]
    assert storage.read_versioned(url) == (b"two", storage.generation(url))


def test_write_atomic_failing_at_any_byte_keeps_the_previous_version(tmp_path, monkeypatch):
    """A full disk while the new bytes are written: the old file is whole, no temp is left."""
    import errno
    import os as os_module

    url = str(tmp_path / "index.json")
    storage.write_atomic(url, b'{"old": true}')

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os_module, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        storage.write_atomic(url, b'{"new": true, "padding": "' + b"x" * 100_000 + b'"}')
    assert storage.read_bytes(url) == b'{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_write_atomic_preconditions(tmp_path):
    url = str(tmp_path / "lease.json")
    storage.write_atomic(url, b"mine", if_absent=True)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_atomic(url, b"theirs", if_absent=True)
    stale = storage.generation(url)
    storage.write_atomic(url, b"changed")
    with pytest.raises(storage.PreconditionFailed):
        storage.write_atomic(url, b"late", if_generation=stale)
    assert storage.read_bytes(url) == b"changed"
    assert storage.generation(str(tmp_path / "missing")) is None
    with pytest.raises(FileNotFoundError):
        storage.read_versioned(str(tmp_path / "missing"))


def test_write_atomic_on_an_object_store_checks_the_precondition():
    base = "memory://audiotok-atomic"
    storage.write_atomic(f"{base}/x", b"1", if_absent=True)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_atomic(f"{base}/x", b"2", if_absent=True)
    storage.remove(base)


# ------------------------------------------------------------------ transient errors


class _ClientError(Exception):
    """Shaped like botocore's ClientError."""

    def __init__(self, code, status):
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class EndpointConnectionError(Exception):
    """Named like botocore's: matched by name."""


def _wrapped(cause):
    try:
        raise cause
    except Exception as e:
        try:
            raise OSError(5, "wrapped by the library") from e
        except OSError as outer:
            return outer


@pytest.mark.parametrize("error", [
    ConnectionRefusedError(111, "Connection refused"), ConnectionResetError(), TimeoutError("read timed out"),
    EndpointConnectionError('Could not connect to the endpoint URL: "http://127.0.0.1:9/b"'),
    _ClientError("SlowDown", 503), _ClientError("InternalError", 500), _ClientError("Throttling", 400),
    _wrapped(ConnectionRefusedError(111, "refused")), _wrapped(_ClientError("ServiceUnavailable", 503)),
])
def test_transient_errors_are_recognised(error):
    assert storage.is_transient(error)


@pytest.mark.parametrize("error", [
    FileNotFoundError("gone"), PermissionError("denied"), ValueError("bad"), _ClientError("AccessDenied", 403),
    _ClientError("NoSuchKey", 404), storage.PreconditionFailed("lost"), _wrapped(FileNotFoundError("x")),
])
def test_definite_errors_are_not_transient(error):
    assert not storage.is_transient(error)


def test_retrying_outlasts_a_short_outage_and_gives_up_after_its_budget(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"

    assert storage.retrying(flaky, "reading s3://b/x", storage.RetryPolicy(total_s=60)) == "ok"
    assert len(calls) == 4

    def down():
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(storage.TransientStorageError, match="reading s3://b/x: ConnectionRefusedError") as e:
        storage.retrying(down, "reading s3://b/x", storage.RetryPolicy(total_s=3, first_s=0.5, max_s=1))
    assert storage.is_transient(e.value) and isinstance(e.value, OSError)
    with pytest.raises(FileNotFoundError):  # definite errors pass at once
        storage.retrying(lambda: (_ for _ in ()).throw(FileNotFoundError("x")), "reading x")


def test_retry_policy_from_the_environment():
    assert storage.retry_policy({}) == storage.RetryPolicy()
    assert storage.retry_policy({storage.RETRY_ENV: "5"}).total_s == 5
    assert list(storage.retry_policy({storage.RETRY_ENV: "0"}).waits()) == []
    waits = list(storage.RetryPolicy(total_s=30, first_s=1, max_s=8).waits())
    assert sum(waits) <= 30 and max(waits) <= 8 and len(waits) >= 4


def test_a_read_that_breaks_mid_object_resumes_at_its_offset(monkeypatch):
    """An object store connection dropped mid-read: the reader reopens the object where it was."""
    import fsspec.implementations.memory as memory

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    url = "memory://audiotok-retry/x.bin"
    payload = bytes(range(256)) * 1000
    storage.write_bytes(url, payload)
    real_read = memory.MemoryFile.read
    state = {"reads": 0}

    def dropping_read(self, *args):
        state["reads"] += 1
        if state["reads"] in (3, 4):
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_read(self, *args)

    monkeypatch.setattr(memory.MemoryFile, "read", dropping_read)
    with storage.open_input(url) as f:
        head = f.read(1000)
        f.seek(5000)
        middle = f.read(70_000)
        f.seek(-10, 2)
        tail = f.read()
    assert head == payload[:1000] and middle == payload[5000:75_000] and tail == payload[-10:]
    assert state["reads"] > 4
    storage.remove("memory://audiotok-retry")


def test_redact_leaves_a_path_named_like_a_secret_alone():
    """A pipe: refusal names /etc/passwd: a path, not a password; the message stays readable."""
    from audiotok.transforms.failures import Failure

    with pytest.raises(ValueError) as e:
        storage.check_url("pipe:cat /etc/passwd")
    assert storage.redact(str(e.value)) == str(e.value)
    assert "only storage URLs" in Failure("m.jsonl:3", "bad_manifest", str(e.value)).message
    assert storage.redact("password: hunter22") == "password: ***"
    assert storage.redact("db_password=abc123 token: xyz") == "db_password=*** token: ***"


def _slow_ranges(monkeypatch, data: bytes, fail_first: set[int] = frozenset()):
    """storage.read_range over ``data`` that takes a moment per call and records how many calls
    overlap and how many bytes are held unconsumed; ranges starting in ``fail_first`` fail once."""
    import threading

    pause = threading.Event()  # never set: its wait() is a sleep that the patched time.sleep leaves alone
    state = {"active": 0, "max_active": 0, "calls": 0}
    lock, failed = threading.Lock(), set()

    def read_range(url, start, end):
        with lock:
            state["calls"] += 1
            state["active"] += 1
            state["max_active"] = max(state["max_active"], state["active"])
        try:
            pause.wait(0.002 * (1 + start % 3))  # answers come back out of order
            if start in fail_first and start not in failed:
                failed.add(start)
                raise ConnectionResetError("reset by peer")
            return data[start:end]
        finally:
            with lock:
                state["active"] -= 1

    monkeypatch.setattr(storage, "read_range", read_range)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)  # retry waits
    return state


def test_read_ranges_on_an_object_store_prefetch_in_order_and_bounded(monkeypatch):
    data = bytes(range(256)) * 64
    ranges = [("memory://spill/a.bin", s, s + 40) for s in range(0, 16000, 97)][::-1]  # any order
    state = _slow_ranges(monkeypatch, data, fail_first={ranges[5][1]})
    got = list(storage.read_ranges(ranges, ahead_bytes=400, requests=8))
    assert got == [data[s:e] for _, s, e in ranges]  # in the order asked, the failed one retried
    assert state["calls"] == len(ranges) + 1
    assert 1 < state["max_active"] <= 8  # concurrent, at most `requests`
    state["max_active"] = 0
    list(storage.read_ranges(ranges[:20], ahead_bytes=80, requests=8))
    assert state["max_active"] <= 2  # 80 bytes ahead: two 40-byte ranges at a time


def test_read_ranges_stopped_early_leaves_nothing_running(monkeypatch):
    data = bytes(4000)
    state = _slow_ranges(monkeypatch, data)
    ranges = [("memory://spill/a.bin", s, s + 10) for s in range(0, 4000, 10)]
    reader = storage.read_ranges(ranges, requests=4)
    assert next(reader) == bytes(10)
    reader.close()  # waits for the requests in flight; the queued ones are cancelled
    assert state["active"] == 0 and state["calls"] < len(ranges)


def test_read_ranges_on_local_files(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"0123456789")
    b.write_bytes(b"abcdefghij")
    ranges = [(str(b), 2, 5), (str(a), 0, 3), (str(b), 8, 10), (str(a), 9, 10)]
    assert list(storage.read_ranges(ranges)) == [b"cde", b"012", b"ij", b"9"]
    assert list(storage.read_ranges([])) == []
