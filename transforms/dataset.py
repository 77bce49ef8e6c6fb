"""The dataset on disk, as trainers and tools read it: names, keys, the index, sample encoding.

An audiotok dataset is a folder (any fsspec URL)::

    .audiotok                               the marker: written first, so only audiotok datasets are ever
                                            written to
    index.json                              the live dataset: settings, streams, totals, and the part
                                            files below (written last, one small object)
    shards/vNNNNNN/shard-BBBBBB-NNNN.tar    WebDataset shards: KEY.json, KEY.<stream>.npy, KEY.txt per sample
    shards/vNNNNNN/vectors-BBBBBB-NNNN.tar  with ``--separate-vectors``: the vector streams' KEY.<stream>.npy
                                            of that shard's samples, same order (a shard set of their own)
    index/vNNNNNN/rows-PPPPP.json           shard rows (url, counts, excluded sources) and failure-file rows
    state/vNNNNNN/state-PPPPP.jsonl         per-input bookkeeping for incremental refreshes, one line per input
    failures/vNNNNNN/failures-PPPPP.jsonl   dead-letter records
    state/retired-vNNNNNN.json              the files version N stopped naming (for ``audiotok gc``)

Whatever the size of the corpus, ``index.json`` stays small: the shard rows and the per-input state
live in part files. An input, a shard and a failure file belong to part ``P`` by a hash of their
URL (:func:`slot_of`, :func:`part_of`; an input by its :func:`input_identity`), so the parts are
written in parallel and a refresh joins each part of the listing with the same part of the
previous state. :func:`shard_rows`, :func:`failure_rows` and :func:`state_entries` read them
whatever the layout (index version 1 held the rows inline and the state in one file).

Vector streams (log-mel, SSL embeddings: ``kind`` ``vectors``) hold most of the bytes of a
dataset that also has discrete streams (log-mel frames take 160 times the bytes of HuBERT units
per hour: the README's tokenizer table). Written into a shard set of their own, beside the
discrete one, a trainer of discrete tokens reads (and downloads from a bucket) only the
discrete set; each set is a WebDataset of its own, and a shard row names both (``url``,
``vectors_url``; ``bytes``, ``vectors_bytes``).

A sample key is ``STEM-SOURCEHASH-MS``; a refresh never rewrites a shard, it excludes the samples
of superseded inputs by their source hash (``excluded_sources`` of a shard row: :func:`is_live`).

This module imports neither Beam nor torch: the reader, the vocabulary, ``verify``, ``inspect``
and the card's statistics build on it in a trainer's environment.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from typing import Any, Iterator, Mapping

import numpy as np

from audiotok.transforms import storage
from audiotok.transforms.records import TRANSCRIPT_FIELDS, Sample

INDEX_NAME = "index.json"
INDEX_FORMAT = "audiotok-dataset"
INDEX_VERSION = 2
# Index versions this module reads: 1 named every shard and failure file inline and kept the state in
# one file; 2 names part files.
READABLE_INDEX_VERSIONS = (1, 2)
SHARDS_DIR = "shards"
FAILURES_DIR = "failures"
TMP_DIR = "_tmp"
STATE_DIR = "state"
ROWS_DIR = "index"
MARKER_NAME = ".audiotok"
# Hash slots of keys (input URIs, shard and failure-file URLs); a part holds a contiguous range of them,
# so a dataset may change its number of parts between versions.
SLOTS = 4096

# Names the project gives to what it writes per dataset version, and to its temporary files:
# the only names clean-up and garbage collection ever delete.
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_VERSIONED_FILE = re.compile(r"^(?:state|retired)-v(\d{6,})\.json$")
_TEMP_FILE = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_STREAM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TAR_BLOCK = 512


def version_name(version: int) -> str:
    return f"v{version:06d}"


def state_path(version: int) -> str:
    """The single state file of index version 1 (read when such a dataset is refreshed)."""
    return f"{STATE_DIR}/state-{version_name(version)}.json"


def state_part_path(version: int, part: int) -> str:
    return f"{STATE_DIR}/{version_name(version)}/state-{part:05d}.jsonl"


def rows_part_path(version: int, part: int) -> str:
    return f"{ROWS_DIR}/{version_name(version)}/rows-{part:05d}.json"


def failures_part_path(version: int, part: int) -> str:
    return f"{FAILURES_DIR}/{version_name(version)}/failures-{part:05d}.jsonl"


def shard_path(version: int, bucket: int, seq: int) -> str:
    """A shard's name: its group (bucket) of source files and its place within the group."""
    return f"{SHARDS_DIR}/{version_name(version)}/shard-{bucket:06d}-{seq:04d}.tar"


def slot_of(key: str) -> int:
    """The hash slot of an input URI or a file URL, in ``[0, SLOTS)``; stable across processes."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:4], "big") % SLOTS


def part_of(slot: int, parts: int) -> int:
    """The part (of ``parts``) holding ``slot``: parts are contiguous ranges of slots."""
    return slot * parts // SLOTS


def part_slots(part: int, parts: int) -> range:
    """The slots of ``part`` (of ``parts``)."""
    return range(-(-part * SLOTS // parts), -(-(part + 1) * SLOTS // parts))


def input_identity(uri: str) -> str:
    """What makes two input URIs the same input: local paths made absolute and normalised
    (``file://`` dropped), ``gcs://`` as ``gs://``, ``s3a://`` as ``s3://``, ``//`` and ``/./`` folded."""
    protocol = storage.protocol_of(uri)
    if protocol in ("", "file", "local"):
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return os.path.normpath(os.path.abspath(path))
    rest = uri.split("://", 1)[1]
    family = "gs" if protocol in storage.GCS_PROTOCOLS else "s3" if protocol in storage.S3_PROTOCOLS else protocol
    return f"{family}://{posixpath.normpath(rest)}"


def order_key(uri: str) -> tuple[int, str]:
    """Where an input (or anything a dead letter names) goes: the slot of its identity, then the
    identity. Lines of the state parts and of the listing runs are in this order, and two URIs
    naming one input meet."""
    identity = input_identity(uri)
    return slot_of(identity), identity


def retired_path(version: int) -> str:
    """The list of files that version ``version`` stopped referencing (for garbage collection)."""
    return f"{STATE_DIR}/retired-{version_name(version)}.json"


def version_of_name(folder: str, name: str) -> int | None:
    """The dataset version of an entry the project writes under ``folder`` (``shards``,
    ``failures``, ``index``: ``vNNNNNN`` folders; ``state``: ``vNNNNNN`` folders of parts, and
    ``state-vNNNNNN.json`` (index version 1), ``retired-vNNNNNN.json``), or None for any other name."""
    m = _VERSION_DIR.match(name)
    if m is None and folder == STATE_DIR:
        m = _VERSIONED_FILE.match(name)
    return int(m.group(1)) if m else None


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of an atomic write (a run killed mid-write leaves one)."""
    return bool(_TEMP_FILE.match(name))


def marker_bytes() -> bytes:
    return json.dumps({"format": INDEX_FORMAT}, sort_keys=True).encode("utf-8") + b"\n"


def is_marker(data: bytes) -> bool:
    """Whether ``data`` is the content of an audiotok dataset's marker."""
    try:
        return json.loads(data).get("format") == INDEX_FORMAT
    except (ValueError, AttributeError):
        return False


def source_of_key(key: str) -> str:
    """The source hash inside a sample key ``STEM-SOURCEHASH-MS``."""
    parts = key.rsplit("-", 2)
    return parts[1] if len(parts) == 3 else ""


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
    """The tar members of one sample, metadata first, streams by name (``split_members`` parts
    them into the two shard sets)."""
    key = check_key(sample.key)
    members = [(f"{key}.json", json.dumps(sample.meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))]
    for name in sorted(sample.streams):
        if not _STREAM.match(name):
            raise ValueError(f"unsafe stream name {name!r}")
        members.append((f"{key}.{name}.npy", npy_bytes(sample.streams[name])))
    text = transcript_text(sample.meta)
    if text is not None:
        members.append((f"{key}.txt", text.encode("utf-8")))
    return members


def vector_streams(specs: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """The streams that go into the vector shard set: those of kind ``vectors``."""
    return frozenset(name for name, spec in specs.items() if spec.get("kind") == "vectors")


def member_stream(name: str) -> str | None:
    """The stream a member holds (``KEY.<stream>.npy`` -> ``stream``), None for others."""
    parts = name.split(".")
    return parts[1] if len(parts) == 3 and parts[2] == "npy" else None


def split_members(members: list[tuple[str, bytes]], vectors: frozenset[str]) -> tuple[list, list]:
    """A sample's members -> (the discrete set's, the vector set's), each in order."""
    discrete, vector = [], []
    for name, data in members:
        (vector if member_stream(name) in vectors else discrete).append((name, data))
    return discrete, vector


def vectors_url(shard_url: str) -> str:
    """``shards/vNNNNNN/shard-BBBBBB-NNNN.tar`` -> ``shards/vNNNNNN/vectors-BBBBBB-NNNN.tar``."""
    folder, _, name = shard_url.rpartition("/")
    if not name.startswith("shard-"):
        raise ValueError(f"not a shard name: {shard_url!r}")
    return f"{folder}/vectors-{name[len('shard-'):]}" if folder else f"vectors-{name[len('shard-'):]}"


def transcript_text(meta: Mapping[str, Any]) -> str | None:
    """The text of ``KEY.txt``: the segment's share of a timed transcript (its ``text``, which
    segmentation cut along with the audio), or None when the source had no timed transcript.

    A manifest's plain ``text`` describes the whole file, not one segment, so it stays in
    ``KEY.json`` only.
    """
    if any(isinstance(meta.get(f), list) for f in TRANSCRIPT_FIELDS) and isinstance(meta.get("text"), str):
        return meta["text"]
    return None


def member_tar_bytes(payload_len: int) -> int:
    """Bytes a member takes in a tar: a header block plus the payload padded to blocks."""
    return TAR_BLOCK + -(-payload_len // TAR_BLOCK) * TAR_BLOCK


def count_tokens(streams: Mapping[str, np.ndarray], specs: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Tokens per stream: K*T for codes, T for units and durations, T frames for vectors."""
    counts = {}
    for name, array in streams.items():
        kind = specs.get(name, {}).get("kind")
        counts[name] = int(array.shape[0]) if kind == "vectors" else int(array.size)
    return counts


def join_index(output: str) -> str:
    return storage.join(output, INDEX_NAME)


def read_index(output: str) -> dict:
    """Reads ``OUTPUT/index.json`` as it is now: a worker process may just have published it."""
    return json.loads(storage.read_bytes(storage.join(output, INDEX_NAME), fresh=True))


def layout(index: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The part files an index names (``parts``, ``state``, ``rows``), or None for index version 1."""
    return index.get("layout") if index.get("version", 1) >= 2 else None


def read_rows_part(output: str, rel: str) -> dict[str, list[dict]]:
    """One rows part: ``{"shards": [...], "failures": [...]}``, each sorted by url."""
    data = json.loads(storage.read_bytes(storage.join(output, rel)))
    return {"shards": list(data.get("shards", [])), "failures": list(data.get("failures", []))}


def _rows(output: str, index: Mapping[str, Any] | None, kind: str) -> Iterator[dict]:
    index = read_index(output) if index is None else index
    parts = layout(index)
    if parts is None:
        yield from index.get(kind, [])
        return
    rows: list[dict] = []
    for rel in parts.get("rows", []):
        if rel:
            rows.extend(read_rows_part(output, rel)[kind])
    yield from sorted(rows, key=lambda r: r["url"])


def shard_rows(output: str, index: Mapping[str, Any] | None = None) -> Iterator[dict]:
    """The live shard rows of a dataset, by url, whatever the index's layout.

    Each row: ``url`` (relative to ``output``), ``samples``, ``live_samples``, ``bytes``,
    ``audio_s``, ``tokens``, ``excluded_sources`` when a refresh superseded some of its
    samples (:func:`is_live`), and ``vectors_url``, ``vectors_bytes`` when its vector streams are
    in the vector shard set.
    """
    return _rows(output, index, "shards")


def failure_rows(output: str, index: Mapping[str, Any] | None = None) -> Iterator[dict]:
    """The dead-letter files of a dataset (every version's), by url: ``url``, ``records``, ``reasons``."""
    return _rows(output, index, "failures")


def read_jsonl(output: str, rel: str) -> Iterator[str]:
    """The non-empty lines of a JSON-lines file of the dataset, streamed."""
    with storage.open_input(storage.join(output, rel)) as f:
        for raw in f:
            line = raw.decode("utf-8").strip()
            if line:
                yield line


def state_entries(output: str, index: Mapping[str, Any] | None = None) -> Iterator[tuple[str, dict]]:
    """``(uri, entry)`` for every URI the state records, whatever the layout. An entry is an
    input's (``size``, ``version``, ``fingerprint``, ``run``, where its samples are...) when it
    has a ``fingerprint``; besides, or instead, it may hold ``deleted`` (the version that found
    the input gone), ``pending`` (``{"run"}``: the run that could not read it, transiently) and
    ``unlisted`` (``{"run", "records"}``: dead letters of something that is no input)."""
    index = read_index(output) if index is None else index
    parts = layout(index)
    if parts is None:
        if index.get("state"):
            yield from v1_state_entries(json.loads(storage.read_bytes(storage.join(output, index["state"]))))
        return
    for rel in parts.get("state", []):
        if rel:
            for line in read_jsonl(output, rel):
                entry = json.loads(line)
                yield entry.pop("uri"), entry


def v1_state_entries(state: Mapping[str, Any]) -> Iterator[tuple[str, dict]]:
    """The one state object of index version 1 (``inputs``, ``deleted``, ``pending``,
    ``unlisted``, each by URI) as :func:`state_entries` gives entries, by URI."""
    uris = set()
    for field in ("inputs", "deleted", "pending", "unlisted"):
        uris.update(state.get(field, {}))
    for uri in sorted(uris):
        entry = dict(state.get("inputs", {}).get(uri, {}))
        if uri in state.get("deleted", {}) and "fingerprint" not in entry:
            entry["deleted"] = int(state["deleted"][uri].get("run", 0))
        for field in ("pending", "unlisted"):
            if uri in state.get(field, {}):
                entry[field] = dict(state[field][uri])
        yield uri, entry


def referenced_files(output: str, index: Mapping[str, Any]) -> set[str]:
    """The files (relative to the dataset) an index names: its shards (both sets), failure files,
    state and rows parts (reading the rows parts)."""
    rows = list(shard_rows(output, index))
    files = {row["url"] for row in rows} | {row["url"] for row in failure_rows(output, index)}
    files |= {row["vectors_url"] for row in rows if row.get("vectors_url")}
    parts = layout(index)
    if parts is None:
        if index.get("state"):
            files.add(index["state"])
        return files
    return files | {rel for rel in (*parts.get("state", []), *parts.get("rows", [])) if rel}


def failure_is_live(run: int | None, entry: Mapping[str, Any] | None, version: int) -> bool:
    """Whether a dead-letter record still counts: a record written by run ``run`` (the version
    of its ``failures/vNNNNNN/`` file) about a URI whose state line is ``entry`` (None: the state
    has none), in dataset ``version``.

    It counts when it is from the run that last failed to read a pending input (``pending``: a
    transient failure), from the run that last changed the records of something that is no
    input (``unlisted``: a pattern, a manifest line, a refused file), from the run that last
    processed a live input, or, for anything else, from this version.
    """
    if entry is not None:
        for field in ("pending", "unlisted"):
            if field in entry:
                return entry[field].get("run") == run
        if "fingerprint" in entry:
            return entry.get("run") == run
    return run == version


def is_live(key: str, row: Mapping[str, Any]) -> bool:
    """Whether a sample read from a shard of the index is live (readers call this)."""
    excluded = row.get("excluded_sources")
    return not excluded or source_of_key(key) not in excluded
