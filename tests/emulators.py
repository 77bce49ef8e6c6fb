"""Real storage protocol servers on loopback for tests: moto's S3 server and gcp-storage-emulator.

Each is a context manager that starts the server on a free 127.0.0.1 port, waits until it
answers HTTP, and on exit stops its whole process group (also when the test failed)::

    with MotoS3() as s3:                          # s3.env: AWS_ENDPOINT_URL + dummy keys
        bucket = s3.make_bucket("corpus")         # "s3://corpus"
    with GcsEmulator(buckets=("corpus",)) as gcs:  # gcs.env: STORAGE_EMULATOR_HOST
        ...

``env`` holds the variables a client needs: pass it to subprocesses, or use ``apply_env``
in-process. It also points the GCE metadata server at a closed loopback port and switches
off AWS's instance metadata, so no credential chain probes an address off this machine.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
import threading
import urllib.request
from typing import Iterator, Mapping, Sequence

from audiotok.runners.services import Service, free_port, http_ready

# Keys that no real store ever issued; tests grep outputs and logs for the secret.
DUMMY_ACCESS_KEY = "AKIAAUDIOTOKTESTKEY00"
DUMMY_SECRET_KEY = "audiotok-dummy-secret-7Qx9Vb2Lm4Np8Rs1Tw6Yz3"


@functools.lru_cache(maxsize=None)
def _closed_port() -> int:
    return free_port()


def no_cloud_probes_env() -> dict[str, str]:
    """Variables that keep Google's and AWS's credential chains on this machine."""
    dead = f"127.0.0.1:{_closed_port()}"
    return {
        "GCE_METADATA_HOST": dead,
        "GCE_METADATA_IP": dead,
        "NO_GCE_CHECK": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
        # no user config or credentials files leak in
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "CLOUDSDK_CONFIG": os.path.join(tempfile.gettempdir(), "audiotok-no-gcloud-config"),
    }


class _StorageServer:
    name = "storage server"

    def __init__(self) -> None:
        self.port = 0
        self._service: Service | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_path(self) -> str:
        return "/"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def start(self):
        attempts = 3  # the port may be taken between choosing and binding it
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            self._service = Service(self.name, self.command(), ready=http_ready(self.url + self.ready_path()),
                                    env={**os.environ, **no_cloud_probes_env()}, start_timeout_s=30, port=self.port)
            try:
                self._service.start()
                return self
            except RuntimeError:
                if attempt == attempts:
                    raise

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MotoS3(_StorageServer):
    """moto's S3 server. Clients sign requests with the dummy keys, as with real S3."""

    name = "moto S3 server"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def env(self) -> dict[str, str]:
        return {
            **no_cloud_probes_env(),
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def make_bucket(self, name: str) -> str:
        """Creates bucket ``name``; returns ``s3://name``."""
        import boto3

        with apply_env(self.env):
            boto3.client("s3").create_bucket(Bucket=name)
        return f"s3://{name}"


class CountingMotoS3(MotoS3):
    """moto's S3 server behind a middleware that logs every request it answers, to count
    storage requests by API and by the first folder of the key (:meth:`requests`)."""

    name = "moto S3 server (counting)"

    def __init__(self) -> None:
        super().__init__()
        self.log_path = tempfile.NamedTemporaryFile(prefix="audiotok-s3-requests-", suffix=".jsonl", delete=False).name
        self._seen = 0

    def command(self) -> list[str]:
        return [sys.executable, os.path.abspath(__file__), "--counting-moto", str(self.port), self.log_path]

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(OSError):
            os.remove(self.log_path)

    def reset_requests(self) -> None:
        self.requests(reset=True)

    def requests(self, reset: bool = False) -> dict[str, dict[str, int]]:
        """Requests since the last reset: first folder of the key -> API -> count. APIs: ``list``,
        ``read`` (GET), ``head``, ``write`` (PUT, multipart parts, multipart create/complete),
        ``copy``, ``delete`` (one per object, DeleteObjects counting its keys' batch as one)."""
        with open(self.log_path) as f:
            lines = f.read().splitlines()
        counts: dict[str, dict[str, int]] = {}
        for line in lines[self._seen:]:
            record = json.loads(line)
            side, api = classify_s3_request(record)
            if api == "create_bucket":
                continue
            by_api = counts.setdefault(side, {})
            by_api[api] = by_api.get(api, 0) + 1
        if reset:
            self._seen = len(lines)
        return counts


def classify_s3_request(record: Mapping[str, object]) -> tuple[str, str]:
    """(first folder of the key, API) of a logged request (``method``, ``path``, ``query``, ``copy``)."""
    from urllib.parse import parse_qs, unquote

    method, path = str(record["method"]), unquote(str(record["path"]))
    query = parse_qs(str(record["query"]), keep_blank_values=True)
    parts = path.strip("/").split("/")
    key = "/".join(parts[1:])
    if not key:  # a bucket request
        prefix = query.get("prefix", [""])[0]
        side = prefix.split("/", 1)[0] or "(bucket)"
        if method == "GET":
            return side, "list"
        if method == "POST" and "delete" in query:
            return side, "delete"
        if method == "PUT":
            return side, "create_bucket"
        return side, method.lower()
    side = key.split("/", 1)[0]
    if method == "HEAD":
        return side, "head"
    if method == "GET":
        return side, "read"
    if method == "DELETE":
        return side, "delete"
    if method == "PUT" and record.get("copy"):
        return side, "copy"
    return side, "write"  # PUT, UploadPart, POST ?uploads / ?uploadId


def _serve_counting_moto(port: int, log_path: str) -> None:
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)

    def counting(environ, start_response):
        record = {"method": environ["REQUEST_METHOD"], "path": environ.get("PATH_INFO", ""),
                  "query": environ.get("QUERY_STRING", ""), "copy": "HTTP_X_AMZ_COPY_SOURCE" in environ}
        with lock:
            log.write(json.dumps(record) + "\n")
        return app(environ, start_response)

    run_simple("127.0.0.1", port, counting, threaded=True)


class GcsEmulator(_StorageServer):
    """gcp-storage-emulator, in memory, with ``buckets`` created at start."""

    name = "GCS emulator"

    def __init__(self, buckets: Sequence[str] = ("audiotok-test",)):
        super().__init__()
        self.buckets = tuple(buckets)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={self.port}",
                "--in-memory", f"--default-bucket={self.buckets[0]}"]

    def ready_path(self) -> str:
        return "/storage/v1/b"

    def start(self):
        super().start()
        for name in self.buckets[1:]:
            self.make_bucket(name)
        return self

    @property
    def env(self) -> dict[str, str]:
        return {
            **no_cloud_probes_env(),
            "STORAGE_EMULATOR_HOST": self.url,
            # Read when gcsfs is imported (audiotok.transforms.storage copes with either import order).
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def make_bucket(self, name: str) -> str:
        """Creates bucket ``name``; returns ``gs://name``."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
        return f"gs://{name}"


@contextlib.contextmanager
def apply_env(values: Mapping[str, str]) -> Iterator[None]:
    """Sets environment variables for the block, restoring the old values after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload_tree(local_dir: str, url: str) -> list[str]:
    """Copies every file under ``local_dir`` to ``url`` (same relative paths); returns the URLs."""
    from audiotok.transforms import storage

    urls = []
    for root, _, files in sorted(os.walk(local_dir)):
        for name in sorted(files):
            path = os.path.join(root, name)
            target = storage.join(url, os.path.relpath(path, local_dir).replace(os.sep, "/"))
            with open(path, "rb") as f:
                storage.write_bytes(target, f.read())
            urls.append(target)
    return urls


def download_tree(url: str) -> dict[str, bytes]:
    """Every object under ``url`` -> its bytes, keyed by the path relative to ``url``."""
    from audiotok.transforms import storage

    base = url.rstrip("/")
    return {found[len(base) + 1:]: storage.read_bytes(found) for found, _ in storage.list_files(base + "/**")}


# ------------------------------------------------------------------ what a run wrote

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_CORPUS = os.path.join(REPO_ROOT, "examples", "corpus")


def dataset_digest(output: str) -> dict:
    """What a tokenize run wrote, independent of where it read from and wrote to.

    Returns:
        ``{"totals": index totals without byte counts, "samples": {(stem, start_ms): {member
        suffix: sha256}}}``: sample keys lose their source-URI hash, and the JSON metadata
        (which names the source URI) is left out; token arrays are compared by hash.
    """
    import hashlib
    import io
    import tarfile

    from audiotok.transforms import dataset, storage

    index = dataset.read_index(output)
    samples: dict = {}
    for row in dataset.shard_rows(output, index):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(storage.join(output, row["url"])))) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                if suffix == "json":
                    continue
                stem, _, start_ms = key.rsplit("-", 2)
                digest = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
                samples.setdefault((stem, start_ms), {})[suffix] = digest
    totals = {k: v for k, v in index["totals"].items() if k != "bytes"}
    return {"totals": totals, "samples": samples}


@functools.lru_cache(maxsize=None)
def local_reference(tokenizer: str = "logmel") -> dict:
    """``dataset_digest`` of the example corpus tokenized in this process, local folder to local
    folder (computed once per test session)."""
    from audiotok.pipelines import tokenize
    from audiotok.runners import profiles
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.tokenize import TokenizeConfig

    with tempfile.TemporaryDirectory() as tmp:
        config = tokenize.JobConfig(output=os.path.join(tmp, "out"),
                                    match=MatchConfig(patterns=(os.path.join(EXAMPLE_CORPUS, "**"),)),
                                    tokenize=TokenizeConfig(specs=tokenizer))
        tokenize.run(config, profiles.pipeline_options("direct", []))
        return dataset_digest(config.output)


# ------------------------------------------------------------------ a storage server that goes away


class TcpProxy:
    """A loopback TCP proxy in front of a server, that tests stop and start to make the server
    unreachable (connection refused, open connections reset) and reachable again, on the same
    port, without losing what the server holds::

        with MotoS3() as s3, TcpProxy(s3.port) as proxy:   # clients use proxy.url
            proxy.stop(); ...; proxy.start()
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = None
        self._conns: list = []
        self._lock = threading.Lock()
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._listener is not None

    def start(self) -> "TcpProxy":
        import socket
        import threading

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuses new connections and resets the open ones."""
        import socket
        import struct

        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                conn.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        import socket

        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__" and sys.argv[1:2] == ["--counting-moto"]:
    _serve_counting_moto(int(sys.argv[2]), sys.argv[3])
