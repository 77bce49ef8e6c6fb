"""WebDataset shards: rolling tar writers, temp -> final, the rows part files, and the index.

A sample ``KEY`` becomes ``KEY.json`` (metadata) and one ``KEY.<stream>.npy`` per stream.
Samples are grouped by source file into buckets (``--files-per-bucket``); each bucket's
samples are sorted by key and written by one worker, under temporary names renamed to
``shards/vNNNNNN/shard-BBBBBB-NNNN.tar`` once complete. The state parts, the rows parts and,
last, ``index.json`` (one small object) publish the version.

On the way to the bucket writers, tokens do not travel through the runner: each bundle
appends its samples to a spill file under the run's temp folder (:class:`_SpillFn`) and only
their places are grouped, so a local run holds no more samples in memory for a thousand hours
of audio than for one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import tarfile
import uuid
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from audiotok.transforms import dataset, incremental, lease, metrics, storage
from audiotok.transforms import failures as failures_module
from audiotok.transforms.failures import Failure
from audiotok.transforms.records import AudioRef, Sample

@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """When a shard closes, and what goes into which shard set.

    Attributes:
        max_samples: samples per shard at most.
        max_bytes: tar bytes per shard at most, both sets together (a single larger sample
            still gets a shard of its own).
        files_per_bucket: inputs per shard group. Each group's samples are sorted by key and
            written by one worker, so shards are the same whatever the runner; the worker holds
            the group's sample list (keys and places in the spill files) and reads the samples
            back one by one. A group's shards are its own: short clips want larger groups.
        separate_vectors: write the vector streams (kind ``vectors``: log-mel, embeddings)
            into a shard set of their own (``vectors-BBBBBB-NNNN.tar`` beside each
            ``shard-BBBBBB-NNNN.tar``), so that readers of the discrete streams never fetch them.
    """

    max_samples: int = 1000
    max_bytes: int = 1 << 30
    files_per_bucket: int = 64
    separate_vectors: bool = False

    def __post_init__(self) -> None:
        if self.files_per_bucket < 1:
            raise ValueError(f"files_per_bucket must be >= 1. Found: {self.files_per_bucket}")
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1. Found: {self.max_samples}")
        if self.max_bytes < 4 * dataset.TAR_BLOCK:
            raise ValueError(f"max_bytes must be >= {4 * dataset.TAR_BLOCK}. Found: {self.max_bytes}")


@dataclasses.dataclass(frozen=True)
class WrittenFile:
    """A shard a writer finished under a temporary name, waiting to be published.

    Attributes:
        kind: ``shard``.
        temp_url: where it is now.
        first_key: the smallest key it holds; orders the final names.
        samples: samples in it.
        bytes: its size.
        audio_s: seconds of audio in its samples.
        tokens: stream name -> tokens.
        sources: source hash -> {"uri", "samples", "audio_s", "tokens"}.
        vectors_temp_url: the shard's vector set tar (``ShardConfig.separate_vectors``), or "".
        vectors_bytes: its size.
    """

    kind: str
    temp_url: str
    first_key: str
    samples: int
    bytes: int
    audio_s: float = 0.0
    tokens: Mapping[str, int] = dataclasses.field(default_factory=dict)
    sources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    vectors_temp_url: str = ""
    vectors_bytes: int = 0


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # reproducible: no wall-clock values in the data
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def tar_member(name: str, data: bytes) -> tuple[bytes, bytes]:
    """(header, padding) of a regular-file member as ``tarfile`` writes it in USTAR format
    (``TarFile.addfile`` makes the same header, after a ``copy.copy`` of the TarInfo that cost
    more than the rest of writing a shard)."""
    header = _tarinfo(name, len(data)).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    return header, b"\0" * (-len(data) % dataset.TAR_BLOCK)


class _TempTar:
    """One tar being written under a temporary name in ``temp_dir``: the bytes ``tarfile``'s
    stream mode (``w|``, USTAR) writes, headers made by ``TarInfo.tobuf``."""

    def __init__(self, temp_dir: str):
        self.url = storage.join(temp_dir, f"{uuid.uuid4().hex}.tar")
        self._file = storage.open_output(self.url)
        self.member_bytes = 0

    def add(self, members: Sequence[tuple[str, bytes]]) -> None:
        for name, data in members:
            header, padding = tar_member(name, data)
            self._file.write(header)
            self._file.write(data)
            if padding:
                self._file.write(padding)
            self.member_bytes += dataset.member_tar_bytes(len(data))

    def close(self) -> int:
        """Writes the end-of-archive blocks and the record padding, closes the file; returns its size."""
        size = _padded_archive_size(self.member_bytes + 2 * dataset.TAR_BLOCK)
        self._file.write(b"\0" * (size - self.member_bytes))
        self._file.close()
        return size

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            try:
                storage.remove(self.url)
            except OSError:
                pass  # left for finalize's clean-up of the temp folder


class ShardWriter:
    """Writes samples into tar shards under ``temp_dir``, closing each at the configured size;
    with ``config.separate_vectors``, the vector streams' members go into a second tar per shard.

    Use as a context manager; ``add`` returns the shards it closed, ``close`` the last one.
    """

    def __init__(self, temp_dir: str, config: ShardConfig, stream_specs: Mapping[str, Mapping[str, Any]] | None = None):
        self.temp_dir = temp_dir
        self.config = config
        self.stream_specs = dict(stream_specs or {})
        self._vector_streams = dataset.vector_streams(self.stream_specs) if config.separate_vectors else frozenset()
        self._tar: _TempTar | None = None
        self._vectors: _TempTar | None = None
        self._reset()

    def _reset(self) -> None:
        self._count = 0
        self._bytes = 0
        self._audio_s = 0.0
        self._tokens: dict[str, int] = {}
        self._sources: dict[str, dict[str, Any]] = {}
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
        return self.add_encoded(sample.key, dataset.encode_sample(sample), float(sample.meta.get("duration_s", 0.0)),
                                (sample.meta.get("source") or {}).get("uri", ""),
                                dataset.count_tokens(sample.streams, self.stream_specs))

    def add_encoded(self, key: str, members: Sequence[tuple[str, bytes]], duration_s: float, uri: str,
                    tokens: Mapping[str, int]) -> list[WrittenFile]:
        """Adds one sample given as its tar members (``dataset.encode_sample``), its duration,
        source URI and tokens per stream; returns the shard it closed to make room, if any."""
        members, vector_members = dataset.split_members(list(members), self._vector_streams)
        size = sum(dataset.member_tar_bytes(len(data)) for _, data in members + vector_members)
        closed = []
        if self._count and (self._count >= self.config.max_samples or self._bytes + size > self.config.max_bytes):
            closed.append(self._close_current())
        if self._tar is None:
            self._tar = _TempTar(self.temp_dir)
        self._tar.add(members)
        if vector_members:
            if self._vectors is None:
                self._vectors = _TempTar(self.temp_dir)
            self._vectors.add(vector_members)
        self._count += 1
        self._bytes += size
        self._audio_s += duration_s
        source = self._sources.setdefault(dataset.source_of_key(key),
                                          {"uri": uri, "samples": 0, "audio_s": 0.0, "tokens": {}})
        source["samples"] += 1
        source["audio_s"] = round(source["audio_s"] + duration_s, 6)
        for name, n in tokens.items():
            self._tokens[name] = self._tokens.get(name, 0) + n
            source["tokens"][name] = source["tokens"].get(name, 0) + n
        self._first_key = key if self._first_key is None else min(self._first_key, key)
        return closed

    def close(self) -> list[WrittenFile]:
        """Closes the open shard; returns it (nothing when no sample was added since the last one)."""
        return [self._close_current()] if self._tar is not None else []

    def abort(self) -> None:
        """Drops the open shard (its temp files are removed where possible)."""
        try:
            for part in (self._tar, self._vectors):
                if part is not None:
                    part.abort()
        finally:
            self._tar = self._vectors = None
            self._reset()

    def _close_current(self) -> WrittenFile:
        vectors = self._vectors
        written = WrittenFile(
            kind="shard", temp_url=self._tar.url, first_key=self._first_key or "", samples=self._count,
            bytes=self._tar.close(), audio_s=round(self._audio_s, 6), tokens=dict(self._tokens),
            sources=self._sources, vectors_temp_url=vectors.url if vectors else "",
            vectors_bytes=vectors.close() if vectors else 0)
        self._tar = self._vectors = None
        self._reset()
        return written


def _padded_archive_size(n: int) -> int:
    # tarfile pads the archive to a multiple of its record size (20 blocks).
    record = tarfile.RECORDSIZE
    return -(-n // record) * record


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run publishes and what it builds on.

    Attributes:
        version: this run's dataset version (shards go under ``shards/vNNNNNN/``).
        fingerprint: the settings fingerprint inputs are compared with.
        previous: the published dataset a refresh builds on (None for a fresh dataset, or one
            replaced by ``--overwrite``).
        index_generation: the generation of the index the run planned from (None: there was
            none); the run publishes only if it is still the live one.
        lease_owner: the run that holds the dataset's lease; publishing checks it still does.
        release_lease: whether publishing releases the lease (a job launched without waiting).
    """

    version: int = 1
    fingerprint: str = ""
    previous: incremental.Previous | None = None
    index_generation: str | None = None
    lease_owner: str | None = None
    release_lease: bool = False


class IndexChanged(storage.PreconditionFailed):
    """The live index is no longer the one the run planned from: another writer published."""


def check_publishable(output: str, plan: RunPlan) -> bytes | None:
    """Checks, before anything is put in place, that the run still holds the dataset's lease
    and that the live index is still the one it planned from; returns that index's bytes. Every
    writer of a version's files checks it first (a run that lost its lease writes nothing).

    Raises:
        lease.LeaseLost, IndexChanged: nothing may be published.
    """
    if plan.lease_owner:
        lease.check_owner(output, plan.lease_owner)
    try:
        data, generation = storage.read_versioned(dataset.join_index(output))
    except FileNotFoundError:
        data, generation = None, None
    if generation != plan.index_generation:
        raise IndexChanged(f"{dataset.join_index(output)} changed since this run planned from it (another run "
                           "published meanwhile): nothing was published; run --incremental again")
    return data


def publish_index(output: str, index: Mapping[str, Any], plan: RunPlan) -> None:
    """Writes the index in one atomic write, only over the index the run planned from."""
    try:
        storage.write_atomic(dataset.join_index(output), json.dumps(index, indent=1, sort_keys=True).encode("utf-8"),
                             if_generation=plan.index_generation, if_absent=plan.index_generation is None)
    except storage.PreconditionFailed as e:
        raise IndexChanged(f"{dataset.join_index(output)} changed while this run published (another run published "
                           f"meanwhile): this run's version {plan.version} is not live; run --incremental "
                           "again") from e


# ---------------------------------------------------------------------------- publishing, per part


def publish_shard(output: str, version: int, bucket: int, seq: int, written: WrittenFile,
                  parts: int) -> tuple[tuple[int, dict], list[tuple[int, bytes]]]:
    """Renames a finished temp shard (and its vector shard) to its final name (idempotent: a
    retried writer renames the same bytes onto the same name).

    Returns:
        ((rows part, the shard's row), [(state part, JSON of [shard url, source hash -> stats of
        the sources of that part])]).
    """
    rel = dataset.shard_path(version, bucket, seq)
    row: dict[str, Any] = {"url": rel, "samples": written.samples, "bytes": written.bytes,
                           "audio_s": written.audio_s, "tokens": dict(sorted(written.tokens.items()))}
    if written.vectors_temp_url:  # first, so that a published shard always has its vector shard
        row["vectors_url"] = dataset.vectors_url(rel)
        row["vectors_bytes"] = written.vectors_bytes
        storage.rename(written.vectors_temp_url, storage.join(output, row["vectors_url"]))
    storage.rename(written.temp_url, storage.join(output, rel))
    by_part: dict[int, dict] = {}
    for source, stats in sorted(written.sources.items()):
        by_part.setdefault(dataset.part_of(dataset.order_key(stats["uri"])[0], parts), {})[source] = stats
    # As JSON lines: the shard writers hold them and write them into files by state part.
    return (dataset.part_of(dataset.slot_of(rel), parts), row), [
        (p, json.dumps([rel, s], sort_keys=True).encode("utf-8")) for p, s in sorted(by_part.items())]


def contributions_of(produced: Iterable[bytes]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``(shard url, source hash, stats)`` from :func:`publish_shard`'s per-part outputs."""
    out = []
    for blob in produced:
        rel, sources = json.loads(blob)
        out.extend((rel, source, stats) for source, stats in sources.items())
    return out


def failure_record(f: Failure | Mapping[str, Any]) -> dict[str, Any]:
    """A dead letter as the JSON object its file holds."""
    return dict(f) if isinstance(f, Mapping) else json.loads(f.to_json())


def _record_order(r: Mapping[str, Any]) -> tuple:
    start = r.get("start_s")
    return (r["uri"], r.get("stage", ""), start if start is not None else -1.0, r["reason"], r.get("message", ""))


@dataclasses.dataclass(frozen=True)
class PartWritten:
    """A state part as published: its file (None: empty), summary, dead-letter file's row, and
    the samples the part's inputs no longer have live (``(shard url, sources, samples)``)."""

    part: int
    state: str | None
    summary: Mapping[str, Any]
    failure_row: Mapping[str, Any] | None = None
    stale: tuple[tuple[str, tuple[str, ...], int], ...] = ()


def write_state_part(output: str, version: int, draft: incremental.Draft, draft_lines: Iterable[dict] | None,
                     contributions: Iterable[tuple[str, str, Mapping[str, Any]]],
                     failures: Iterable[Failure | Mapping[str, Any]]) -> PartWritten:
    """Writes one part of the next state and this run's dead letters of the part.

    Args:
        draft: the part's join; when it is unchanged, its previous file is reused as it is.
        draft_lines: the draft's lines (None: read them from ``draft.url``).
        contributions: ``(shard url, source hash, stats)`` of this run's shards for inputs of the part.
        failures: this run's dead-letter records to publish whose URI falls in the part (the
            match stage's only where they changed: ``incremental.apply_unlisted``).
    """
    records = sorted((failure_record(f) for f in failures), key=_record_order)
    by_uri: dict[str, list[dict]] = {}
    for r in records:
        by_uri.setdefault(r["uri"], []).append(r)
    contributions = list(contributions)
    stale: list = []
    if draft.reuse is not None and not contributions:
        attached = {r["uri"]: r for r in records if r.get("stage") != "match"}  # the match stage's are in the draft
        _, extra, _ = incremental.finish_part((), {}, {u: by_uri[u] for u in attached}, version)
        state_rel, summary = draft.reuse or None, incremental.merge_summaries([draft.summary, extra])
    else:
        if draft_lines is None:
            draft_lines = (json.loads(line) for line in _read_lines(draft.url))
        unlisted = {r["uri"] for r in records if r.get("stage") == "match"}
        lines, summary, stale = incremental.finish_part(
            draft_lines, incremental.produced_by_uri(contributions),
            {u: rs for u, rs in by_uri.items() if u not in unlisted}, version)
        state_rel = None
        if lines:
            state_rel = dataset.state_part_path(version, draft.part)
            storage.write_atomic(storage.join(output, state_rel), "".join(l + "\n" for l in lines).encode("utf-8"))
    row = None
    if records:
        rel = dataset.failures_part_path(version, draft.part)
        storage.write_atomic(storage.join(output, rel), "".join(
            json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8"))
        by_reason: dict[str, int] = {}
        for r in records:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        row = {"url": rel, "records": len(records), "reasons": dict(sorted(by_reason.items()))}
    return PartWritten(draft.part, state_rel, summary, row, tuple(stale))


def _read_lines(url: str) -> Iterator[str]:
    with storage.open_input(url) as f:
        for raw in f:
            line = raw.decode("utf-8").rstrip("\n")
            if line:
                yield line


@dataclasses.dataclass(frozen=True)
class RowsWritten:
    """A rows part as published: its file (None: empty), what its live shards hold, and the
    shards it stopped naming (all their samples superseded)."""

    part: int
    rows: str | None
    shards: int
    bytes: int
    live_samples: int
    retired: tuple[str, ...] = ()


def write_rows_part(output: str, version: int, part: int, parts: int, previous: incremental.Previous | None,
                    stale: Iterable[tuple[str, Sequence[str], int]], new_shards: Iterable[Mapping[str, Any]],
                    new_failures: Iterable[Mapping[str, Any]]) -> RowsWritten:
    """Writes one rows part: the previous rows of the part with this run's exclusions applied
    (rows left with no live sample dropped), plus this run's shards and dead-letter files."""
    stale = [{"shards": {url: n}, "sources": list(sources)} for url, sources, n in stale]
    new_shards, new_failures = list(new_shards), list(new_failures)
    before = previous.rows_of(output, part, parts) if previous is not None else {"shards": [], "failures": []}
    rows = incremental.live_shards(before["shards"], new_shards, stale)
    kept = {r["url"] for r in rows}
    retired = tuple(sorted(u for r in before["shards"] if r["url"] not in kept
                           for u in (r["url"], r.get("vectors_url")) if u))
    fails = sorted({r["url"]: dict(r) for r in [*before["failures"], *new_failures]}.values(), key=lambda r: r["url"])
    reuse = previous.reusable(part, parts) if previous is not None else None
    rel: str | None
    if reuse is not None and not stale and not new_shards and not new_failures:
        rel = previous.rows[part] or None
    elif rows or fails:
        rel = dataset.rows_part_path(version, part)
        storage.write_atomic(storage.join(output, rel), json.dumps(
            {"shards": rows, "failures": fails}, indent=1, sort_keys=True).encode("utf-8"))
    else:
        rel = None
    return RowsWritten(part, rel, len(rows), sum(int(r["bytes"]) + int(r.get("vectors_bytes", 0)) for r in rows),
                       sum(int(r["live_samples"]) for r in rows), retired)


def write_index(output: str, plan: RunPlan, run_info: Mapping[str, Any], parts: int,
                states: Iterable[PartWritten], rows: Iterable[RowsWritten], retired: Iterable[str] = ()) -> dict:
    """Publishes the version: the list of the files it retires (those the rows parts dropped,
    the previous parts not kept, and ``retired``), then ``index.json``, one small object naming
    the part files, written last, only over the index the run planned from."""
    state_urls: list[str | None] = [None] * parts
    rows_urls: list[str | None] = [None] * parts
    states, rows = list(states), list(rows)
    for s in states:
        state_urls[s.part] = s.state
    for r in rows:
        rows_urls[r.part] = r.rows
    summary = incremental.merge_summaries(s.summary for s in sorted(states, key=lambda s: s.part))
    by_reason = dict(sorted(summary["failures_by_reason"].items()))
    totals = {
        "shards": sum(r.shards for r in rows),
        "samples": summary["samples"],
        "bytes": sum(r.bytes for r in rows),
        "audio_s": round(summary["audio_s"], 3),
        "tokens": dict(sorted(summary["tokens"].items())),
        "inputs": summary["inputs"],
        "deleted_inputs": summary["deleted"],
        "failures": sum(by_reason.values()),
        "failures_by_reason": by_reason,
    }
    index = {
        "format": dataset.INDEX_FORMAT,
        "version": dataset.INDEX_VERSION,
        "dataset_version": plan.version,
        **run_info,
        "totals": totals,
        "layout": {"slots": dataset.SLOTS, "parts": parts, "state": state_urls, "rows": rows_urls},
    }
    retired = set(retired) | {rel for r in rows for rel in r.retired}
    previous = plan.previous
    if previous is not None:
        live = set(state_urls) | set(rows_urls)
        retired |= {rel for rel in (*previous.state, *previous.rows) if rel and rel not in live}
    elif plan.index_generation is not None:  # --overwrite: everything the replaced index named
        retired |= dataset.referenced_files(output, dataset.read_index(output))
    record_retired(output, plan.version, retired)
    publish_index(output, index, plan)
    return index


def record_retired(output: str, version: int, retired: Iterable[str]) -> None:
    """Writes ``state/retired-vNNNNNN.json``: the files the previous index named and version
    ``version`` no longer does. Readers holding the previous index still read them; ``audiotok
    gc`` deletes them once version ``version`` is older than its grace period."""
    retired = sorted(retired)
    if retired:
        storage.write_atomic(storage.join(output, dataset.retired_path(version)),
                             json.dumps({"version": version, "retired": retired}, indent=1).encode("utf-8"))


def remove_temp(output: str, temp_dir: str) -> None:
    try:
        storage.remove(temp_dir)
        tmp_root = storage.join(output, dataset.TMP_DIR)
        fs, path = storage.filesystem(tmp_root)
        if fs.exists(path) and not fs.ls(path):
            fs.rm(path, recursive=True)
    except OSError:
        pass  # an orphan temp folder is harmless: nothing reads _tmp/


def finalize(output: str, temp_dir: str, written: Iterable[WrittenFile], run_info: Mapping[str, Any],
             plan: RunPlan = RunPlan(), listed: Iterable[AudioRef] = (), selected: Iterable[str] = (),
             failures: Iterable[Failure] = ()) -> dict:
    """Publishes a run in this process, with the same steps :class:`WriteDataset` runs on workers:
    the listing joined with the previous state part by part, the shards renamed to their final
    names (in order of their first key), the state and rows parts, then the index, last.

    For small datasets and tools (tests, ``compact``): it holds the listing in memory. When the
    run changes nothing, nothing is written. Nothing is put in place unless the run still holds
    the lease and the index is the one it planned from; the index is replaced only if it still
    is (compare-and-swap on its generation).

    Args:
        written: temp shards (``ShardWriter``'s output).
        listed: every input of the run; ``selected``: the URIs processed this run.
        failures: this run's dead-letter records.

    Returns:
        The live index.
    """
    try:
        return _finalize(output, temp_dir, written, run_info, plan, listed, selected, failures)
    finally:
        if plan.release_lease and plan.lease_owner:
            lease.release_if_owner(output, plan.lease_owner)


def _finalize(output: str, temp_dir: str, written: Iterable[WrittenFile], run_info: Mapping[str, Any],
              plan: RunPlan, listed: Iterable[AudioRef], selected: Iterable[str], failures: Iterable[Failure]) -> dict:
    listed, chosen = list(listed), set(selected)
    match_failures = [f for f in failures if f.stage == "match"]
    other_failures = [f for f in failures if f.stage != "match"]
    previous = plan.previous
    parts = incremental.choose_parts(len(listed), previous.parts if previous else 0)
    check_publishable(output, plan)

    def part(uri: str) -> int:
        return dataset.part_of(dataset.order_key(uri)[0], parts)

    by_part: dict[int, list[tuple[tuple[int, str], str]]] = {}
    for i, ref in enumerate(listed):
        by_part.setdefault(part(ref.uri), []).append((dataset.order_key(ref.uri), incremental.ref_line(ref, (i,))))
    migrated: dict[int, list[tuple[tuple[int, str], str]]] = {}
    if previous is not None and previous.index_version == 1 and previous.state:
        state = json.loads(storage.read_bytes(storage.join(output, previous.state[0])))
        old_failures = incremental.read_v1_failures(output, dataset.read_index(output))
        for uri, line in incremental.migrate_state(state, old_failures):
            migrated.setdefault(part(uri), []).append((dataset.order_key(uri), line))
    match_by_part: dict[int, list[dict]] = {}
    for f in match_failures:
        match_by_part.setdefault(part(f.uri), []).append(failure_record(f))

    def select(ref: AudioRef, entry: Mapping[str, Any] | None) -> str | None:
        return (incremental.needs_processing(ref, entry, plan.fingerprint) or "rerun") if ref.uri in chosen else None

    joins = {}
    for p in range(parts):
        if previous is not None and previous.index_version >= 2:
            prev_lines: Iterable[str] = previous.state_lines(output, p, parts)
        else:
            prev_lines = [line for _, line in sorted(migrated.get(p, []))]
        joins[p] = incremental.join_part([line for _, line in sorted(by_part.get(p, []))], prev_lines, select,
                                         plan.version, plan.fingerprint, p, parts, previous, match_by_part.get(p, []))
    shards = sorted((w for w in written if w.kind == "shard"), key=lambda w: (w.first_key, w.temp_url))
    if previous is not None and not shards and not other_failures and not any(j.changed for j in joins.values()):
        remove_temp(output, temp_dir)
        return dataset.read_index(output)  # a refresh that changes nothing writes nothing
    new_rows: dict[int, list[dict]] = {}
    contributions: dict[int, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for seq, w in enumerate(shards):
        (q, row), produced = publish_shard(output, plan.version, 0, seq, w, parts)
        new_rows.setdefault(q, []).append(row)
        for p, blob in produced:
            contributions.setdefault(p, []).extend(contributions_of([blob]))
    fails_by_part: dict[int, list] = {}
    for f in other_failures:
        fails_by_part.setdefault(part(f.uri), []).append(f)
    states = []
    for p, joined in joins.items():
        draft = incremental.Draft(p, None, joined.reuse, joined.summary, joined.changed)
        states.append(write_state_part(output, plan.version, draft, joined.draft, contributions.get(p, []),
                                       [*fails_by_part.get(p, []), *joined.publish]))
    stale_by_part: dict[int, list] = {}
    failure_rows: dict[int, list[dict]] = {}
    for s in states:
        for shard, sources, n in s.stale:
            stale_by_part.setdefault(dataset.part_of(dataset.slot_of(shard), parts), []).append((shard, sources, n))
        if s.failure_row:
            failure_rows.setdefault(dataset.part_of(dataset.slot_of(s.failure_row["url"]), parts), []).append(
                s.failure_row)
    rows = [write_rows_part(output, plan.version, q, parts, previous, stale_by_part.get(q, []),
                            new_rows.get(q, []), failure_rows.get(q, [])) for q in range(parts)]
    index = write_index(output, plan, run_info, parts, states, rows)
    remove_temp(output, temp_dir)
    return index


# ---------------------------------------------------------------------------- Beam


def num_buckets(n_inputs: int, files_per_bucket: int) -> int:
    """How many shard groups a run with ``n_inputs`` inputs writes."""
    return max(1, -(-n_inputs // files_per_bucket))


def bucket_of(key: str, buckets: int) -> int:
    """The shard group of a sample: by its source, so a file's segments stay together."""
    source = dataset.source_of_key(key) or hashlib.sha1(key.encode()).hexdigest()[:10]
    try:
        return int(source, 16) % buckets
    except ValueError:
        return int(hashlib.sha1(source.encode()).hexdigest()[:10], 16) % buckets


SPILL_SAMPLES_PER_FILE = 20_000
# Elements of the shard-writing step at most: shard groups are dealt out to this many writers
# (a group's samples always to the same one), so that a spill file has at most this many
# sections and the runner carries at most (spill files x writers) of them, not one per group.
SHARD_WRITERS = 1024
# Lines of what the shards hold (per state part) a shard writer keeps before writing them out.
PRODUCED_LINES_PER_FILE = 20_000


class _Sections:
    """Lines held by key, to be written into a file as one section per key, so that what the
    runner carries is ``(key, (url, offset, length))`` per key and file, never the lines."""

    def __init__(self) -> None:
        self.lines: dict[int, list[bytes]] = {}
        self.held = 0

    def add(self, key: int, line: bytes) -> None:
        self.lines.setdefault(key, []).append(line)
        self.held += 1

    def write(self, f, url: str, offset: int) -> list[tuple[int, tuple[str, int, int]]]:
        """Writes the sections (keys in order) at ``offset`` of ``f``; returns their elements."""
        out = []
        for key, lines in sorted(self.lines.items()):
            data = b"\n".join(lines) + b"\n"
            f.write(data)
            out.append((key, (url, offset, len(data))))
            offset += len(data)
        self.lines, self.held = {}, 0
        return out


def section_lines(sections: Iterable[tuple[str, int, int]]) -> Iterator[bytes]:
    """The lines of ``(url, offset, length)`` sections (:class:`_Sections`), in the order given."""
    for data in storage.read_ranges((url, offset, offset + length) for url, offset, length in sections):
        yield from data.splitlines()


class _SpillFn(beam.DoFn):
    """Sample -> its tar members appended to a spill file; once the file holds
    :data:`SPILL_SAMPLES_PER_FILE` samples, and at the end of the bundle, one element per writer
    (:func:`writer_of`): ``(writer, (spill url, offset, length))`` of the writer's section, the
    JSON lines ``[bucket, key, offset, [[member, bytes], ...], duration_s, uri, tokens]`` of its
    samples.

    A retried bundle writes new files; only the committed attempt's sections reach the writers.
    """

    def __init__(self, temp_dir: str, stream_specs: Mapping[str, Mapping[str, Any]], files_per_bucket: int):
        self._temp_dir = temp_dir
        self._specs = dict(stream_specs)
        self._per_bucket = files_per_bucket

    def start_bundle(self) -> None:
        self._url, self._file, self._offset, self._sections = None, None, 0, _Sections()

    def process(self, sample: Sample, n_selected: int):
        if self._file is None:
            self._url = storage.join(self._temp_dir, "spill", f"{uuid.uuid4().hex}.bin")
            self._file = storage.open_output(self._url)
        members = dataset.encode_sample(sample)
        ref = [sample.key, self._offset, [[name, len(data)] for name, data in members],
               float(sample.meta.get("duration_s", 0.0)), (sample.meta.get("source") or {}).get("uri", ""),
               dataset.count_tokens(sample.streams, self._specs)]
        for _, data in members:
            self._file.write(data)
            self._offset += len(data)
        bucket = bucket_of(sample.key, num_buckets(n_selected, self._per_bucket))
        self._sections.add(writer_of(bucket), json.dumps([bucket, *ref]).encode("utf-8"))
        if self._sections.held >= SPILL_SAMPLES_PER_FILE:
            yield from self._close()

    def finish_bundle(self):
        for element in self._close():
            yield GlobalWindows.windowed_value(element)

    def _close(self):
        if self._file is None:
            return
        out = self._sections.write(self._file, self._url, self._offset)
        self._file.close()  # on object stores the file appears here: before anything names it
        self._url, self._file, self._offset = None, None, 0
        yield from out


def writer_of(bucket: int) -> int:
    """The writer (of :data:`SHARD_WRITERS`) that writes a shard group's shards."""
    return bucket % SHARD_WRITERS


def key_collisions(refs: Sequence[tuple[str, list]]) -> dict[str, tuple[str, str]]:
    """The inputs of one bucket whose samples would get another input's keys (same stem, same
    40-bit source hash; forced in tests): URI -> (the input kept, the keys' prefix). Of those
    that share a prefix, the first by URI is kept."""
    uris_by_prefix: dict[str, set[str]] = {}
    for _, (key, _, _, _, uri, _) in refs:
        uris_by_prefix.setdefault(key.rsplit("-", 1)[0], set()).add(uri)
    out = {}
    for prefix, uris in uris_by_prefix.items():
        if len(uris) > 1:
            first, *others = sorted(uris)
            out.update({uri: (first, prefix) for uri in others})
    return out


class _WriteBucketFn(beam.DoFn):
    """(writer, spill sections) -> the shards of the writer's buckets (shard groups), bucket by
    bucket, published under their final names.

    The bucket's samples are sorted by key before writing, so the shards' bytes do not depend on
    how the runner bundled the work: a rerun over the same inputs writes byte-identical shards.
    All samples of a source hash fall in one bucket: inputs whose keys would collide are told
    apart here (the first by URI is written, the others are ``key_collision`` dead letters).
    Outputs: ``rows`` ((rows part, row)), ``produced`` ((state part, (url, offset, length)): a
    section of a file of JSON lines, what the bundle's shards hold of the part's sources, written
    every :data:`PRODUCED_LINES_PER_FILE` lines and at the end of the bundle) and ``failures``.
    """

    def __init__(self, output: str, temp_dir: str, plan: RunPlan, config: ShardConfig,
                 stream_specs: Mapping[str, Mapping[str, Any]]):
        self._output, self._temp_dir, self._plan = output, temp_dir, plan
        self._config = config
        self._stream_specs = dict(stream_specs)

    def start_bundle(self) -> None:
        self._produced = _Sections()

    def process(self, element, parts: int):
        _, sections = element
        sections = sorted(sections)
        by_bucket: dict[int, list[tuple[str, list]]] = {}
        for (url, _, _), data in zip(sections, storage.read_ranges(
                (url, offset, offset + length) for url, offset, length in sections)):
            for line in data.splitlines():
                bucket, *ref = json.loads(line)
                by_bucket.setdefault(bucket, []).append((url, ref))
        for bucket, refs in sorted(by_bucket.items()):
            yield from self._write_bucket(bucket, refs, parts)
            if self._produced.held >= PRODUCED_LINES_PER_FILE:
                for element in self._write_produced():
                    yield beam.pvalue.TaggedOutput("produced", element)

    def _write_bucket(self, bucket: int, refs: list[tuple[str, list]], parts: int):
        refs.sort(key=lambda r: r[1][0])
        collided = key_collisions(refs)
        for uri, (first, prefix) in sorted(collided.items()):
            metrics.failure(failures_module.KEY_COLLISION, "match")
            yield beam.pvalue.TaggedOutput("failures", Failure(
                uri, failures_module.KEY_COLLISION, f"its samples would get the keys of {first} ({prefix}-...): "
                "rename the file or give it a manifest id", stage="write"))
        check_publishable(self._output, self._plan)
        seq = 0
        writer = ShardWriter(storage.join(self._temp_dir, "shards"), self._config, self._stream_specs)
        kept = [(url, ref) for url, ref in refs if ref[4] not in collided]
        spilled = storage.read_ranges((url, ref[1], ref[1] + sum(n for _, n in ref[2])) for url, ref in kept)
        with writer, contextlib.closing(spilled):
            for (url, (key, offset, sizes, duration_s, uri, tokens)), data in zip(kept, spilled):
                members, at = [], 0
                for name, n in sizes:
                    members.append((name, data[at:at + n]))
                    at += n
                for written in writer.add_encoded(key, members, duration_s, uri, tokens):
                    yield from self._publish(bucket, seq, written, parts)
                    seq += 1
            closed = writer.close()
        for written in closed:
            yield from self._publish(bucket, seq, written, parts)
            seq += 1

    def finish_bundle(self):
        for element in self._write_produced():
            yield beam.pvalue.TaggedOutput("produced", GlobalWindows.windowed_value(element))

    def _publish(self, bucket: int, seq: int, written: WrittenFile, parts: int):
        metrics.counter("shards").inc()
        row, produced = publish_shard(self._output, self._plan.version, bucket, seq, written, parts)
        yield beam.pvalue.TaggedOutput("rows", row)
        for part, line in produced:
            self._produced.add(part, line)

    def _write_produced(self):
        """What this bundle's shards hold, per state part, into a file of its own (a retried
        bundle writes another; only the committed attempt's sections reach the state writers)."""
        if not self._produced.held:
            return []
        url = storage.join(self._temp_dir, "produced", f"{uuid.uuid4().hex}.jsonl")
        with storage.open_output(url) as f:
            return self._produced.write(f, url, 0)


class _WriteStateFn(beam.DoFn):
    """(part, {"draft", "produced": file sections, "failures"}) -> the part's state file and dead letters."""

    def __init__(self, output: str, plan: RunPlan):
        self._output, self._plan = output, plan

    def process(self, element, changed: bool):
        if not changed:
            return
        _, groups = element
        [draft] = groups["draft"]
        check_publishable(self._output, self._plan)
        yield write_state_part(self._output, self._plan.version, draft, None,
                               contributions_of(section_lines(sorted(groups["produced"]))), groups["failures"])


class _WriteRowsFn(beam.DoFn):
    """(part, {"all", "stale", "shards", "failures"}) -> the part's rows file."""

    def __init__(self, output: str, plan: RunPlan):
        self._output, self._plan = output, plan

    def process(self, element, changed: bool, parts: int):
        if not changed:
            return
        part, groups = element
        check_publishable(self._output, self._plan)
        yield write_rows_part(self._output, self._plan.version, part, parts, self._plan.previous, groups["stale"],
                              groups["shards"], groups["failures"])


def _publish_index(changed: bool, output: str, temp_dir: str, plan: RunPlan, run_info: Mapping[str, Any],
                   parts: int, states: Sequence[PartWritten], rows: Sequence[RowsWritten]) -> dict:
    try:
        if not changed:
            remove_temp(output, temp_dir)
            return dataset.read_index(output)  # a refresh that changes nothing writes nothing
        index = write_index(output, plan, run_info, parts, states, rows)
        remove_temp(output, temp_dir)
        return index
    finally:
        if plan.release_lease and plan.lease_owner:
            lease.release_if_owner(output, plan.lease_owner)


class WriteDataset(beam.PTransform):
    """Samples, failures and the join of the listing with the previous state -> shards, state
    and rows parts, dead letters and, last, the index under ``output``.

    Applied to a dict with ``samples`` (a tuple of PCollection[Sample]: one per path the samples
    come by; flattening them first would make the in-process runner hold them all), ``failures``
    (PCollection[Failure]: those of the stages after the match) and what
    :class:`incremental.SelectInputs` returned (``parts``, ``drafts``, ``match_failures``,
    ``n_selected``, ``changed``); returns a PCollection holding the live index that was
    published.
    """

    def __init__(self, output: str, config: ShardConfig, stream_specs: Mapping[str, Mapping[str, Any]],
                 run_info: Mapping[str, Any], plan: RunPlan = RunPlan(), temp_dir: str | None = None):
        super().__init__()
        self.output = storage.check_url(output)
        self.config = config
        self.stream_specs = dict(stream_specs)
        self.run_info = dict(run_info)
        self.plan = plan
        self.temp_dir = temp_dir or storage.join(output, dataset.TMP_DIR, uuid.uuid4().hex)

    def expand(self, inputs):
        plan, output = self.plan, self.output
        parts = beam.pvalue.AsSingleton(inputs["parts"])
        spill = _SpillFn(self.temp_dir, self.stream_specs, self.config.files_per_bucket)
        spilled = [samples | (f"SpillSamples{i}" if i else "SpillSamples") >> beam.ParDo(
            spill, beam.pvalue.AsSingleton(inputs["n_selected"])) for i, samples in enumerate(inputs["samples"])]
        written = (spilled
                   | "AllSpilled" >> beam.Flatten()
                   | "GroupByWriter" >> beam.GroupByKey()
                   | "WriteShards" >> beam.ParDo(
                       _WriteBucketFn(output, self.temp_dir, plan, self.config, self.stream_specs),
                       parts).with_outputs("rows", "produced", "failures"))
        failures = ((inputs["failures"], written.failures)
                    | "LaterFailures" >> beam.Flatten()
                    | "KeyFailures" >> beam.Map(lambda f, n: (dataset.part_of(dataset.order_key(f.uri)[0], n), f),
                                                parts))
        all_failures = (failures, inputs["match_failures"]) | "FailuresToPublish" >> beam.Flatten()
        changed = ((inputs["changed"], failures | "AnyFailure" >> beam.Map(lambda _: True))
                   | "ChangeFlags" >> beam.Flatten()
                   | "Changed" >> beam.CombineGlobally(any))
        changed_si = beam.pvalue.AsSingleton(changed)
        states = ({"draft": inputs["drafts"], "produced": written.produced, "failures": all_failures}
                  | "GroupStateParts" >> beam.CoGroupByKey()
                  | "WriteState" >> beam.ParDo(_WriteStateFn(output, plan), changed_si))
        stale = states | "Superseded" >> beam.FlatMap(
            lambda s, n: [(dataset.part_of(dataset.slot_of(shard), n), (shard, sources, k))
                          for shard, sources, k in s.stale], parts)
        failure_rows = states | "FailureRows" >> beam.FlatMap(
            lambda s, n: [(dataset.part_of(dataset.slot_of(s.failure_row["url"]), n), s.failure_row)]
            if s.failure_row else [], parts)
        all_parts = inputs["parts"] | "AllRowsParts" >> beam.FlatMap(lambda n: [(q, None) for q in range(n)])
        rows = ({"all": all_parts, "stale": stale, "shards": written.rows, "failures": failure_rows}
                | "GroupRowsParts" >> beam.CoGroupByKey()
                | "WriteRows" >> beam.ParDo(_WriteRowsFn(output, plan), changed_si, parts))
        return changed | "Publish" >> beam.Map(
            _publish_index, output, self.temp_dir, plan, self.run_info, parts,
            beam.pvalue.AsList(states), beam.pvalue.AsList(rows))
