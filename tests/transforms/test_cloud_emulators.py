"""Storage for real: S3 (moto's server) and GCS (gcp-storage-emulator) on loopback.

The servers speak the real protocols (botocore signs S3 requests with the dummy keys; gcsfs
speaks the JSON API), and are started and stopped here. Endpoints reach the code only
through the environment, as they do on workers that get no pipeline options.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from emulators import (DUMMY_SECRET_KEY, EXAMPLE_CORPUS, REPO_ROOT, GcsEmulator, MotoS3, apply_env,
                       dataset_digest, download_tree, local_reference, upload_tree)


@pytest.fixture(scope="module")
def s3():
    with MotoS3() as server:
        with apply_env(server.env):
            server.make_bucket("corpus")
            upload_tree(EXAMPLE_CORPUS, "s3://corpus/examples")
        yield server


@pytest.fixture(scope="module")
def gcs():
    with GcsEmulator(buckets=("corpus", "tokens")) as server:
        with apply_env(server.env):
            upload_tree(EXAMPLE_CORPUS, "gs://corpus/examples")
        yield server


@pytest.fixture(params=["s3", "gcs"])
def store(request, monkeypatch):
    """(server, bucket URL prefix) with the server's variables in this process's environment."""
    server = request.getfixturevalue(request.param)
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    if request.param == "s3":
        return server, "s3://corpus"
    return server, "gs://corpus"


def test_storage_primitives_round_trip(store):
    from audiotok.transforms import storage

    _, bucket = store
    base = f"{bucket}/primitives"
    storage.write_bytes(f"{base}/a/x.bin", b"x" * 1000)
    assert storage.read_bytes(f"{base}/a/x.bin") == b"x" * 1000
    assert [u for u, _ in storage.list_files(f"{base}/**")] == [f"{base}/a/x.bin"]
    storage.rename(f"{base}/a/x.bin", f"{base}/b/y.bin")
    assert not storage.exists(f"{base}/a/x.bin")
    assert storage.version_marker(dict(storage.list_files(f"{base}/b/y.bin"))[f"{base}/b/y.bin"])
    storage.remove(base)
    assert list(storage.list_files(f"{base}/**")) == []


def test_memory_per_open_object_is_bounded(store):
    """Reads hold a few blocks, writes one part, whatever the store's default (s3fs: 50 MiB
    each); a 20 MiB object streams through in parts both ways."""
    from audiotok.transforms import storage

    _, bucket = store
    url = f"{bucket}/bounded/big.bin"
    payload = os.urandom(1 << 20) * 20
    with storage.open_output(url) as f:
        assert f.blocksize == storage.WRITE_BLOCK_BYTES
        for i in range(0, len(payload), 1 << 20):
            f.write(payload[i:i + (1 << 20)])
            assert len(f.buffer.getbuffer()) <= storage.WRITE_BLOCK_BYTES + (1 << 20)
    with storage.open_input(url) as f:
        inner = f.raw.file  # the store's file under the retrying reader
        assert inner.blocksize == storage.READ_BLOCK_BYTES
        f.seek(15 << 20)
        assert f.read(1 << 20) == payload[15 << 20:16 << 20]
        f.seek(0)
        while f.read(1 << 20):  # the whole object, a MiB at a time
            pass
        assert inner.cache._fetch_block_cached.cache_info().currsize <= storage.READ_BLOCKS
    storage.remove(url)


def test_tokenize_bucket_to_bucket(store):
    """The whole job reads from the bucket and writes shards, failures and the index to the
    bucket, and writes the same tokens as a local run of the same corpus."""
    from audiotok.pipelines import tokenize
    from audiotok.runners import profiles
    from audiotok.transforms import dataset
    from audiotok.transforms.match import MatchConfig

    _, bucket = store
    output = f"{bucket}/tokens/run"
    config = tokenize.JobConfig(output=output, match=MatchConfig(patterns=(f"{bucket}/examples/**",)),
                                overwrite=True)
    index, _, _ = tokenize.run(config, profiles.pipeline_options("direct", []))

    assert dataset_digest(output) == local_reference()
    assert index["totals"]["samples"] > 0
    names = set(download_tree(output))
    assert {"index.json"} | {row["url"] for row in dataset.shard_rows(output, index)} <= names
    assert not any(n.startswith("_tmp/") for n in names), "finalize left temp files behind"


def _write_bad_inputs(bucket: str) -> str:
    """A broken file and a manifest with a missing object and a URL holding the secret."""
    from audiotok.transforms import storage

    storage.write_bytes(f"{bucket}/bad/broken.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20)
    manifest = f"{bucket}/bad/manifest.jsonl"
    lines = [
        {"uri": "broken.wav"},
        {"uri": f"{bucket}/bad/does-not-exist.wav"},
        {"uri": f"https://someone:{DUMMY_SECRET_KEY}@audio.example/a.wav"},
        {"uri": f"https://audio.example/b.wav?X-Amz-Credential=x&X-Amz-Signature={DUMMY_SECRET_KEY}"},
    ]
    storage.write_bytes(manifest, "".join(json.dumps(line) + "\n" for line in lines).encode())
    return manifest


def test_credentials_never_reach_outputs_or_logs(s3, tmp_path):
    """The CLI, in its own process with the dummy keys in its environment and storage
    libraries logging at DEBUG, runs bucket to bucket with failing inputs (one of them a URL
    that carries the secret). Neither the output folder nor the logs hold the secret; the
    dead letters name the bad URL with the secret masked."""
    with apply_env(s3.env):
        manifest = _write_bad_inputs("s3://corpus")
    output = "s3://corpus/tokens/secret-check"
    script = (
        "import logging, sys\n"
        "for name in ('botocore', 's3fs', 'fsspec', 'aiobotocore', 'urllib3'):\n"
        "    logging.getLogger(name).setLevel(logging.DEBUG)\n"
        "from audiotok.pipelines.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, **s3.env, "PYTHONPATH": REPO_ROOT}
    done = subprocess.run(
        [sys.executable, "-c", script, "tokenize", "--input", "s3://corpus/examples/**", "--manifest", manifest,
         "--output", output, "--overwrite"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "botocore" in logs, "storage libraries did not log: the check below would prove nothing"

    with apply_env(s3.env):
        written = download_tree(output)
    failures = b"".join(v for k, v in written.items() if k.startswith("failures/")).decode()
    records = [json.loads(line) for line in failures.splitlines()]
    by_uri = {r["uri"]: r for r in records}
    assert by_uri["s3://corpus/bad/does-not-exist.wav"]["reason"] == "read_error"
    assert by_uri["s3://corpus/bad/broken.wav"]["reason"] != "read_error"
    refused = [r for r in records if r["reason"] == "bad_manifest"]
    assert len(refused) == 2 and all("***" in r["message"] and "credentials" in r["message"] for r in refused)

    assert DUMMY_SECRET_KEY not in logs
    for name, data in written.items():
        assert DUMMY_SECRET_KEY.encode() not in data, f"the secret is in {name}"


def test_atomic_writes_with_preconditions(store, monkeypatch):
    """One conditional PUT per publish: If-None-Match / If-Match on S3 (moto enforces them),
    ifGenerationMatch on GCS (gcp-storage-emulator accepts and ignores it: the requests are checked)."""
    from audiotok.transforms import storage

    server, bucket = store
    sent = []
    if not isinstance(server, MotoS3):
        import gcsfs

        real_call = gcsfs.GCSFileSystem.call

        def recording_call(self, method, path, *args, **kwargs):
            if "/upload/" in path:
                sent.append(kwargs.get("ifGenerationMatch"))
            return real_call(self, method, path, *args, **kwargs)

        monkeypatch.setattr(gcsfs.GCSFileSystem, "call", recording_call)
    url = f"{bucket}/atomic/index.json"
    storage.write_atomic(url, b"v1", if_absent=True)
    first = storage.generation(url)
    assert first and storage.read_versioned(url) == (b"v1", first)
    storage.write_atomic(url, b"v2", if_generation=first)
    assert storage.read_bytes(url) == b"v2" and storage.generation(url) != first
    if isinstance(server, MotoS3):
        with pytest.raises(storage.PreconditionFailed):
            storage.write_atomic(url, b"v3", if_absent=True)
        with pytest.raises(storage.PreconditionFailed):
            storage.write_atomic(url, b"v3", if_generation=first)
        assert storage.read_bytes(url) == b"v2"
    else:
        assert sent == ["0", first]
    storage.remove(f"{bucket}/atomic")
    assert storage.generation(url) is None
