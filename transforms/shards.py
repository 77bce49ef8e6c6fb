"""WebDataset shards: sample encoding, rolling tar writers, temp -> final, and the index.

A sample ``KEY`` becomes ``KEY.json`` (metadata) and one ``KEY.<stream>.npy`` per stream.
Shards are written under a temporary name and only renamed to ``shards/shard-NNNNNN.tar``
by the finalize step, after every writer has finished; the index (``index.json``) is
written last, as one object.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
import uuid
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from transforms import metrics, storage
from transforms.failures import Failure
from transforms.records import Sample

INDEX_NAME = "index.json"
INDEX_FORMAT = "audiotok-dataset"
INDEX_VERSION = 1
SHARDS_DIR = "shards"
FAILURES_DIR = "failures"
TMP_DIR = "_tmp"

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_STREAM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BLOCK = 512


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """When a shard closes.

    Attributes:
        max_samples: samples per shard at most.
        max_bytes: tar bytes per shard at most (a single larger sample still gets a shard of its own).
    """

    max_samples: int = 1000
    max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1. Found: {self.max_samples}")
        if self.max_bytes < 4 * _BLOCK:
            raise ValueError(f"max_bytes must be >= {4 * _BLOCK}. Found: {self.max_bytes}")


def check_key(key: str) -> str:
    """Returns ``key`` if it is a safe sample key; raises ValueError otherwise."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"unsafe sample key {key!r}: keys are 1-200 characters of [A-Za-z0-9_-]")
    return key


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_sample(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of one sample, metadata first, streams by name."""
    key = check_key(sample.key)
    members = [(f"{key}.json", json.dumps(sample.meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))]
    for name in sorted(sample.streams):
        if not _STREAM.match(name):
            raise ValueError(f"unsafe stream name {name!r}")
        members.append((f"{key}.{name}.npy", npy_bytes(sample.streams[name])))
    return members


def member_tar_bytes(payload_len: int) -> int:
    """Bytes a member takes in a tar: a header block plus the payload padded to blocks."""
    return _BLOCK + -(-payload_len // _BLOCK) * _BLOCK


def count_tokens(streams: Mapping[str, np.ndarray], specs: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Tokens per stream: K*T for codes, T for units and durations, T frames for vectors."""
    counts = {}
    for name, array in streams.items():
        kind = specs.get(name, {}).get("kind")
        counts[name] = int(array.shape[0]) if kind == "vectors" else int(array.size)
    return counts


@dataclasses.dataclass(frozen=True)
class WrittenFile:
    """A file a writer finished under a temporary name, waiting for finalize.

    Attributes:
        kind: ``shard`` or ``failures``.
        temp_url: where it is now.
        first_key: the smallest key (or URI for failures) it holds; orders the final names.
        samples: samples (or failure records) in it.
        bytes: its size.
        audio_s: seconds of audio in its samples.
        tokens: stream name -> tokens.
        reasons: failure reason -> count (failures files only).
    """

    kind: str
    temp_url: str
    first_key: str
    samples: int
    bytes: int
    audio_s: float = 0.0
    tokens: Mapping[str, int] = dataclasses.field(default_factory=dict)
    reasons: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # reproducible: no wall-clock values in the data
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class ShardWriter:
    """Writes samples into tar shards under ``temp_dir``, closing each at the configured size.

    Use as a context manager; ``add`` returns the shards it closed, ``close`` the last one.
    """

    def __init__(self, temp_dir: str, config: ShardConfig, stream_specs: Mapping[str, Mapping[str, Any]] | None = None):
        self.temp_dir = temp_dir
        self.config = config
        self.stream_specs = dict(stream_specs or {})
        self._file = None
        self._tar: tarfile.TarFile | None = None
        self._reset()

    def _reset(self) -> None:
        self._url = ""
        self._count = 0
        self._bytes = 0
        self._audio_s = 0.0
        self._tokens: dict[str, int] = {}
        self._first_key: str | None = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, sample: Sample) -> list[WrittenFile]:
        """Adds one sample; returns the shard it closed to make room, if any."""
        members = encode_sample(sample)
        size = sum(member_tar_bytes(len(data)) for _, data in members)
        closed = []
        if self._count and (self._count >= self.config.max_samples or self._bytes + size > self.config.max_bytes):
            closed.append(self._close_current())
        if self._tar is None:
            self._open()
        for name, data in members:
            self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        self._count += 1
        self._bytes += size
        self._audio_s += float(sample.meta.get("duration_s", 0.0))
        for name, n in count_tokens(sample.streams, self.stream_specs).items():
            self._tokens[name] = self._tokens.get(name, 0) + n
        self._first_key = sample.key if self._first_key is None else min(self._first_key, sample.key)
        return closed

    def close(self) -> list[WrittenFile]:
        """Closes the open shard; returns it (nothing when no sample was added since the last one)."""
        return [self._close_current()] if self._tar is not None else []

    def abort(self) -> None:
        """Drops the open shard (its temp file is removed where possible)."""
        url = self._url
        try:
            if self._tar is not None:
                self._tar.close()
            if self._file is not None:
                self._file.close()
        finally:
            self._tar = self._file = None
            self._reset()
        if url:
            try:
                storage.remove(url)
            except OSError:
                pass  # left for finalize's clean-up of the temp folder

    def _open(self) -> None:
        self._url = storage.join(self.temp_dir, f"{uuid.uuid4().hex}.tar")
        fs, path = storage.filesystem(self._url)
        storage.makedirs(self.temp_dir)
        self._file = fs.open(path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT)

    def _close_current(self) -> WrittenFile:
        self._tar.close()
        self._file.close()
        total = self._bytes + 2 * _BLOCK  # the end-of-archive blocks
        written = WrittenFile(
            kind="shard", temp_url=self._url, first_key=self._first_key or "", samples=self._count,
            bytes=_padded_archive_size(total), audio_s=round(self._audio_s, 6), tokens=dict(self._tokens))
        self._tar = self._file = None
        self._reset()
        return written


def _padded_archive_size(n: int) -> int:
    # tarfile pads the archive to a multiple of its record size (20 blocks).
    record = tarfile.RECORDSIZE
    return -(-n // record) * record


def write_failures_file(temp_dir: str, lines: Sequence[str], reasons: Mapping[str, int], first: str) -> WrittenFile:
    """Writes dead-letter JSON lines to a temp file."""
    url = storage.join(temp_dir, f"{uuid.uuid4().hex}.jsonl")
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    storage.write_bytes(url, data)
    return WrittenFile(kind="failures", temp_url=url, first_key=first, samples=len(lines), bytes=len(data),
                       reasons=dict(reasons))


def finalize(output: str, temp_dir: str, written: Iterable[WrittenFile], run_info: Mapping[str, Any]) -> dict:
    """Renames temp files to their final names, writes the index last, removes the temp folder.

    Final names follow the order of each file's first key, so they do not depend on which
    worker wrote what first.

    Returns:
        The index that was written.
    """
    files = sorted(written, key=lambda w: (w.kind, w.first_key, w.temp_url))
    shards = [w for w in files if w.kind == "shard"]
    fails = [w for w in files if w.kind == "failures"]
    shard_rows = []
    for i, w in enumerate(shards):
        rel = f"{SHARDS_DIR}/shard-{i:06d}.tar"
        storage.rename(w.temp_url, storage.join(output, rel))
        shard_rows.append({"url": rel, "samples": w.samples, "bytes": w.bytes, "audio_s": w.audio_s,
                           "tokens": dict(sorted(w.tokens.items()))})
    failure_rows = []
    by_reason: dict[str, int] = {}
    for i, w in enumerate(fails):
        rel = f"{FAILURES_DIR}/failures-{i:06d}.jsonl"
        storage.rename(w.temp_url, storage.join(output, rel))
        failure_rows.append({"url": rel, "records": w.samples})
        for reason, n in w.reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    tokens: dict[str, int] = {}
    for row in shard_rows:
        for name, n in row["tokens"].items():
            tokens[name] = tokens.get(name, 0) + n
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        **run_info,
        "totals": {
            "shards": len(shard_rows),
            "samples": sum(r["samples"] for r in shard_rows),
            "bytes": sum(r["bytes"] for r in shard_rows),
            "audio_s": round(sum(r["audio_s"] for r in shard_rows), 3),
            "tokens": dict(sorted(tokens.items())),
            "failures": sum(r["records"] for r in failure_rows),
            "failures_by_reason": dict(sorted(by_reason.items())),
        },
        "shards": shard_rows,
        "failures": failure_rows,
    }
    storage.write_bytes(storage.join(output, INDEX_NAME),
                        json.dumps(index, indent=1, sort_keys=True).encode("utf-8"))
    try:
        storage.remove(temp_dir)
        tmp_root = storage.join(output, TMP_DIR)
        fs, path = storage.filesystem(tmp_root)
        if fs.exists(path) and not fs.ls(path):
            fs.rm(path, recursive=True)
    except OSError:
        pass  # an orphan temp folder is harmless: nothing reads _tmp/
    return index


def read_index(output: str) -> dict:
    """Reads ``OUTPUT/index.json``."""
    return json.loads(storage.read_bytes(storage.join(output, INDEX_NAME)))


# ---------------------------------------------------------------------------- Beam


class _WriteShardsFn(beam.DoFn):
    """Writes each bundle's samples into temp shards; emits a WrittenFile per closed shard."""

    def __init__(self, temp_dir: str, config: ShardConfig, stream_specs: Mapping[str, Mapping[str, Any]]):
        self._temp_dir = temp_dir
        self._config = config
        self._stream_specs = dict(stream_specs)

    def start_bundle(self) -> None:
        self._writer = ShardWriter(self._temp_dir, self._config, self._stream_specs)

    def process(self, sample: Sample):
        for written in self._writer.add(sample):
            metrics.counter("shards").inc()
            yield written

    def finish_bundle(self):
        for written in self._writer.close():
            metrics.counter("shards").inc()
            yield GlobalWindows.windowed_value(written)

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.abort()


class _WriteFailuresFn(beam.DoFn):
    """Writes each bundle's failures as one temp JSON lines file."""

    def __init__(self, temp_dir: str):
        self._temp_dir = temp_dir

    def start_bundle(self) -> None:
        self._lines: list[str] = []
        self._reasons: dict[str, int] = {}
        self._first = None

    def process(self, failure: Failure):
        self._lines.append(failure.to_json())
        self._reasons[failure.reason] = self._reasons.get(failure.reason, 0) + 1
        self._first = failure.uri if self._first is None else min(self._first, failure.uri)

    def finish_bundle(self):
        if self._lines:
            yield GlobalWindows.windowed_value(
                write_failures_file(self._temp_dir, self._lines, self._reasons, self._first or ""))


class WriteDataset(beam.PTransform):
    """Samples and failures -> shards, failure files and the index under ``output``.

    Applied to a dict ``{"samples": PCollection[Sample], "failures": PCollection[Failure]}``;
    returns a PCollection with the one index that was written.
    """

    def __init__(self, output: str, config: ShardConfig, stream_specs: Mapping[str, Mapping[str, Any]],
                 run_info: Mapping[str, Any], run_id: str | None = None):
        super().__init__()
        self.output = storage.check_url(output)
        self.config = config
        self.stream_specs = dict(stream_specs)
        self.run_info = dict(run_info)
        self.temp_dir = storage.join(output, TMP_DIR, run_id or uuid.uuid4().hex)

    def expand(self, inputs):
        shards = inputs["samples"] | "WriteTempShards" >> beam.ParDo(
            _WriteShardsFn(self.temp_dir, self.config, self.stream_specs))
        fails = inputs["failures"] | "WriteTempFailures" >> beam.ParDo(_WriteFailuresFn(self.temp_dir))
        return ((shards, fails)
                | "AllWritten" >> beam.Flatten()
                | "CollectWritten" >> beam.combiners.ToList()
                | "Finalize" >> beam.Map(
                    lambda written, output, temp_dir, info: finalize(output, temp_dir, written, info),
                    self.output, self.temp_dir, self.run_info))
