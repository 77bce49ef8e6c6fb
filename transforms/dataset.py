"""The dataset on disk, as trainers and tools read it: names, keys, the index, sample encoding.

An audiotok dataset is a folder (any fsspec URL)::

    .audiotok                       the marker: written first, so only audiotok datasets are ever written to
    index.json                      the live dataset: settings, streams, totals, shard rows (written last)
    shards/vNNNNNN/shard-NNNNNN.tar WebDataset shards: KEY.json, KEY.<stream>.npy, KEY.txt per sample
    shards/vNNNNNN/vectors-NNNNNN.tar  with ``--separate-vectors``: the vector streams' KEY.<stream>.npy of
                                    the samples of shard-NNNNNN.tar, same order (a shard set of their own)
    failures/vNNNNNN/*.jsonl        dead-letter records
    state/state-vNNNNNN.json        per-input bookkeeping for incremental refreshes

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

import io
import json
import re
from typing import Any, Mapping

import numpy as np

from audiotok.transforms import storage
from audiotok.transforms.records import TRANSCRIPT_FIELDS, Sample

INDEX_NAME = "index.json"
INDEX_FORMAT = "audiotok-dataset"
INDEX_VERSION = 1
SHARDS_DIR = "shards"
FAILURES_DIR = "failures"
TMP_DIR = "_tmp"
STATE_DIR = "state"
MARKER_NAME = ".audiotok"

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
    return f"{STATE_DIR}/state-{version_name(version)}.json"


def retired_path(version: int) -> str:
    """The list of files that version ``version`` stopped referencing (for garbage collection)."""
    return f"{STATE_DIR}/retired-{version_name(version)}.json"


def version_of_name(folder: str, name: str) -> int | None:
    """The dataset version of an entry the project writes under ``folder`` (``shards``,
    ``failures``: ``vNNNNNN`` folders; ``state``: ``state-vNNNNNN.json``, ``retired-vNNNNNN.json``),
    or None for any other name."""
    pattern = _VERSIONED_FILE if folder == STATE_DIR else _VERSION_DIR
    m = pattern.match(name)
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
    """``shards/vNNNNNN/shard-NNNNNN.tar`` -> ``shards/vNNNNNN/vectors-NNNNNN.tar``."""
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
    """Reads ``OUTPUT/index.json``."""
    return json.loads(storage.read_bytes(storage.join(output, INDEX_NAME)))


def referenced_files(index: Mapping[str, Any]) -> set[str]:
    """The files (relative to the dataset) an index names: its shards (both sets), failure files and state."""
    files = {row["url"] for row in index.get("shards", [])} | {row["url"] for row in index.get("failures", [])}
    files |= {row["vectors_url"] for row in index.get("shards", []) if row.get("vectors_url")}
    if index.get("state"):
        files.add(index["state"])
    return files


def failure_is_live(uri: str, run: int | None, state: Mapping[str, Any], version: int) -> bool:
    """Whether a dead-letter record still counts: ``uri``'s record written by run ``run`` (the
    version of its ``failures/vNNNNNN/`` file), given the live ``state`` of dataset ``version``.

    It counts when it is from the run that last processed a live input, from the run that last
    failed to read a pending input (``pending``: a transient failure), from the run that last
    changed the records of something that is no input (``unlisted``: a pattern, a manifest
    line, a refused file), or, for anything else, from this version.
    """
    for field in ("pending", "unlisted", "inputs"):
        entry = state.get(field, {}).get(uri)
        if entry is not None:
            return entry.get("run") == run
    return run == version


def is_live(key: str, row: Mapping[str, Any]) -> bool:
    """Whether a sample read from a shard of the index is live (readers call this)."""
    excluded = row.get("excluded_sources")
    return not excluded or source_of_key(key) not in excluded
