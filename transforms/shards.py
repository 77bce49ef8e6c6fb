"""WebDataset shards: sample encoding, rolling tar writers, temp -> final, and the index.

A sample ``KEY`` becomes ``KEY.json`` (metadata) and one ``KEY.<stream>.npy`` per stream.
Shards are written under a temporary name and only renamed to
``shards/vNNNNNN/shard-NNNNNN.tar`` by the publish step, after every writer has finished;
the state and then the index (``index.json``) are written last, each as one object.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import uuid
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam

from audiotok.transforms import dataset, incremental, lease, metrics, storage
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
            written by one worker, so shards are the same whatever the runner; a group's
            tokens are held in that worker's memory while it writes.
        separate_vectors: write the vector streams (kind ``vectors``: log-mel, embeddings)
            into a shard set of their own (``vectors-NNNNNN.tar`` beside each
            ``shard-NNNNNN.tar``), so that readers of the discrete streams never fetch them.
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
        sources: for shards, source hash -> {"uri", "samples", "audio_s", "tokens"};
            for failures files, URI -> records.
        stage: ``match`` for a failures file of match-stage records only (they name no
            processed input; finalize carries those that repeat last run's).
        transient: URIs with a transient failure record (failures files only).
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
    reasons: Mapping[str, int] = dataclasses.field(default_factory=dict)
    sources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stage: str = ""
    transient: tuple[str, ...] = ()
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


class _TempTar:
    """One tar being written under a temporary name in ``temp_dir``."""

    def __init__(self, temp_dir: str):
        self.url = storage.join(temp_dir, f"{uuid.uuid4().hex}.tar")
        self._file = storage.open_output(self.url)
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT)
        self.member_bytes = 0

    def add(self, members: Sequence[tuple[str, bytes]]) -> None:
        for name, data in members:
            self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            self.member_bytes += dataset.member_tar_bytes(len(data))

    def close(self) -> int:
        """Closes the tar; returns its size."""
        self._tar.close()
        self._file.close()
        return _padded_archive_size(self.member_bytes + 2 * dataset.TAR_BLOCK)  # + the end-of-archive blocks

    def abort(self) -> None:
        try:
            self._tar.close()
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
        members, vector_members = dataset.split_members(dataset.encode_sample(sample), self._vector_streams)
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
        duration_s = float(sample.meta.get("duration_s", 0.0))
        self._audio_s += duration_s
        uri = (sample.meta.get("source") or {}).get("uri", "")
        source = self._sources.setdefault(dataset.source_of_key(sample.key),
                                          {"uri": uri, "samples": 0, "audio_s": 0.0, "tokens": {}})
        source["samples"] += 1
        source["audio_s"] = round(source["audio_s"] + duration_s, 6)
        for name, n in dataset.count_tokens(sample.streams, self.stream_specs).items():
            self._tokens[name] = self._tokens.get(name, 0) + n
            source["tokens"][name] = source["tokens"].get(name, 0) + n
        self._first_key = sample.key if self._first_key is None else min(self._first_key, sample.key)
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


def publish_shard(output: str, written: WrittenFile, rel: str) -> dict[str, Any]:
    """Renames a written shard (and its vector set tar) to its final name ``rel``; returns its
    index row (without ``live_samples``)."""
    storage.rename(written.temp_url, storage.join(output, rel))
    row: dict[str, Any] = {"url": rel, "samples": written.samples, "bytes": written.bytes, "audio_s": written.audio_s,
                           "tokens": dict(sorted(written.tokens.items()))}
    if written.vectors_temp_url:
        row["vectors_url"] = dataset.vectors_url(rel)
        row["vectors_bytes"] = written.vectors_bytes
        storage.rename(written.vectors_temp_url, storage.join(output, row["vectors_url"]))
    return row


def _padded_archive_size(n: int) -> int:
    # tarfile pads the archive to a multiple of its record size (20 blocks).
    record = tarfile.RECORDSIZE
    return -(-n // record) * record


def write_failures_file(temp_dir: str, failures: Sequence[Failure], stage: str = "") -> WrittenFile:
    """Writes dead-letter records, one JSON line each, to a temp file."""
    url = storage.join(temp_dir, f"{uuid.uuid4().hex}.jsonl")
    data = "".join(f.to_json() + "\n" for f in failures).encode("utf-8")
    storage.write_bytes(url, data)
    return _failures_file(url, [json.loads(f.to_json()) for f in failures], len(data), stage)


def _failures_file(url: str, records: Sequence[Mapping[str, Any]], size: int, stage: str = "") -> WrittenFile:
    reasons: dict[str, int] = {}
    uris: dict[str, int] = {}
    for r in records:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        uris[r["uri"]] = uris.get(r["uri"], 0) + 1
    return WrittenFile(kind="failures", temp_url=url, first_key=min((r["uri"] for r in records), default=""),
                       samples=len(records), bytes=size, reasons=reasons, sources=uris, stage=stage,
                       transient=tuple(sorted({r["uri"] for r in records if r.get("transient")})))


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run publishes and what it builds on.

    Attributes:
        version: this run's dataset version (shards go under ``shards/vNNNNNN/``).
        fingerprint: the settings fingerprint inputs are compared with.
        previous_state: URL of the last published state file, or None for a fresh dataset
            (or one replaced by ``--overwrite``).
        index_generation: the generation of the index the run planned from (None: there was
            none); the run publishes only if it is still the live one.
        lease_owner: the run that holds the dataset's lease; publishing checks it still does.
        release_lease: whether publishing releases the lease (a job launched without waiting).
    """

    version: int = 1
    fingerprint: str = ""
    previous_state: str | None = None
    index_generation: str | None = None
    lease_owner: str | None = None
    release_lease: bool = False


def _load_json(url: str | None, default: dict) -> dict:
    return json.loads(storage.read_bytes(url)) if url else default


class IndexChanged(storage.PreconditionFailed):
    """The live index is no longer the one the run planned from: another writer published."""


def check_publishable(output: str, plan: RunPlan) -> bytes | None:
    """Checks, before anything is renamed into place, that the run still holds the dataset's
    lease and that the live index is still the one it planned from; returns that index's bytes.

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


def finalize(output: str, temp_dir: str, written: Iterable[WrittenFile], run_info: Mapping[str, Any],
             plan: RunPlan = RunPlan(), listed: Iterable[AudioRef] = (), selected: Iterable[str] = ()) -> dict:
    """Publishes a run: temp files renamed to final names, the state, then the index, last.

    Final names follow the order of each file's first key, so they do not depend on which
    worker finished first. When the run changes nothing, nothing is written. Nothing is
    renamed unless the run still holds the lease and the index is the one it planned from;
    the index is replaced only if it still is (compare-and-swap on its generation).

    Returns:
        The live index.
    """
    try:
        return _finalize(output, temp_dir, written, run_info, plan, listed, selected)
    finally:
        if plan.release_lease and plan.lease_owner:
            lease.release_if_owner(output, plan.lease_owner)


def _finalize(output: str, temp_dir: str, written: Iterable[WrittenFile], run_info: Mapping[str, Any],
              plan: RunPlan, listed: Iterable[AudioRef], selected: Iterable[str]) -> dict:
    files = sorted(written, key=lambda w: (w.kind, w.first_key, w.temp_url))
    shards = [w for w in files if w.kind == "shard"]
    fails = [w for w in files if w.kind == "failures" and w.stage != "match"]
    previous_state = _load_json(plan.previous_state, incremental.empty_state())
    planned = check_publishable(output, plan)
    previous_index = json.loads(planned) if plan.previous_state and planned is not None else {}
    unlisted, repeated = _carry_match_failures(
        [w for w in files if w.kind == "failures" and w.stage == "match"], previous_state, plan.version)
    fails += repeated
    vname = dataset.version_name(plan.version)
    new_rows, shard_sources = [], {}
    for i, w in enumerate(shards):
        rel = f"{dataset.SHARDS_DIR}/{vname}/shard-{i:06d}.tar"
        new_rows.append(publish_shard(output, w, rel))
        shard_sources[rel] = w.sources
    failure_rows = list(previous_index.get("failures", []))
    failure_counts: dict[str, int] = {}
    transient: set[str] = set()
    for i, w in enumerate(fails):
        rel = f"{dataset.FAILURES_DIR}/{vname}/failures-{i:06d}.jsonl"
        storage.rename(w.temp_url, storage.join(output, rel))
        failure_rows.append({"url": rel, "records": w.samples, "reasons": dict(sorted(w.reasons.items()))})
        for uri, n in w.sources.items():
            failure_counts[uri] = failure_counts.get(uri, 0) + n
        transient.update(w.transient)
    state, stale = incremental.next_state(previous_state, plan.version, plan.fingerprint, listed, selected,
                                          shard_sources, failure_counts, transient)
    if unlisted:
        state["unlisted"] = unlisted
    _remove_temp(output, temp_dir)
    unchanged = not shards and not fails and not stale and all(
        state.get(field, {}) == previous_state.get(field, {}) for field in ("inputs", "pending", "unlisted"))
    if unchanged and previous_index:
        return previous_index  # a refresh that changes nothing writes nothing
    rows = incremental.live_shards(previous_index.get("shards", []), new_rows, stale)
    totals = incremental.live_totals(state, rows)
    totals["failures"], totals["failures_by_reason"] = _live_failures(output, failure_rows, state, plan.version)
    storage.write_atomic(storage.join(output, dataset.state_path(plan.version)),
                         json.dumps(state, indent=1, sort_keys=True).encode("utf-8"))
    index = {
        "format": dataset.INDEX_FORMAT,
        "version": dataset.INDEX_VERSION,
        "dataset_version": plan.version,
        "state": dataset.state_path(plan.version),
        **run_info,
        "totals": totals,
        "shards": rows,
        "failures": failure_rows,
    }
    record_retired(output, json.loads(planned) if planned is not None else {}, index, plan.version)
    publish_index(output, index, plan)
    return index


def record_retired(output: str, before: Mapping[str, Any], after: Mapping[str, Any], version: int) -> None:
    """Writes ``state/retired-vNNNNNN.json``: the files the live index ``before`` named and
    version ``version`` (index ``after``) no longer does. Readers holding ``before`` still read
    them; ``audiotok gc`` deletes them once version ``version`` is older than its grace period."""
    retired = sorted(dataset.referenced_files(before) - dataset.referenced_files(after))
    if retired:
        storage.write_atomic(storage.join(output, dataset.retired_path(version)),
                             json.dumps({"version": version, "retired": retired}, indent=1).encode("utf-8"))


def _live_failures(output: str, failure_rows: Sequence[Mapping[str, Any]], state: Mapping[str, Any],
                   version: int) -> tuple[int, dict[str, int]]:
    """Dead letters that still count (:func:`audiotok.transforms.dataset.failure_is_live`)."""
    reasons: dict[str, int] = {}
    for row in failure_rows:
        run = int(row["url"].split("/")[1].lstrip("v"))
        for line in storage.read_bytes(storage.join(output, row["url"])).decode("utf-8").splitlines():
            record = json.loads(line)
            if dataset.failure_is_live(record.get("uri"), run, state, version):
                reasons[record["reason"]] = reasons.get(record["reason"], 0) + 1
    return sum(reasons.values()), dict(sorted(reasons.items()))


def _carry_match_failures(files: Sequence[WrittenFile], previous_state: Mapping[str, Any], version: int
                          ) -> tuple[dict[str, Any], list[WrittenFile]]:
    """This run's match-stage dead letters against last run's: the state's ``unlisted``, and
    failures files (temp) holding only the records that changed (the rest are carried)."""
    records = []
    for w in files:
        records += [json.loads(line) for line in storage.read_bytes(w.temp_url).decode("utf-8").splitlines()
                    if line.strip()]
    unlisted, new = incremental.carry_unlisted(previous_state.get("unlisted", {}), records, version)
    out = []
    if new and files:
        url = files[0].temp_url.rsplit(".", 1)[0] + "-changed.jsonl"
        for i in range(0, len(new), FAILURES_PER_FILE):
            chunk = new[i:i + FAILURES_PER_FILE]
            data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in chunk).encode("utf-8")
            part = url.replace("-changed.jsonl", f"-changed-{i // FAILURES_PER_FILE}.jsonl")
            storage.write_bytes(part, data)
            out.append(_failures_file(part, chunk, len(data)))
    for w in files:
        storage.remove(w.temp_url)
    return unlisted, out


def _remove_temp(output: str, temp_dir: str) -> None:
    try:
        storage.remove(temp_dir)
        tmp_root = storage.join(output, dataset.TMP_DIR)
        fs, path = storage.filesystem(tmp_root)
        if fs.exists(path) and not fs.ls(path):
            fs.rm(path, recursive=True)
    except OSError:
        pass  # an orphan temp folder is harmless: nothing reads _tmp/


# ---------------------------------------------------------------------------- Beam


FAILURES_PER_FILE = 100_000


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


class _WriteBucketFn(beam.DoFn):
    """Writes one group's samples, sorted by key, into temp shards.

    Sorting makes the shards' bytes independent of how the runner bundled the work, so a
    rerun over the same inputs writes byte-identical shards.
    """

    def __init__(self, temp_dir: str, config: ShardConfig, stream_specs: Mapping[str, Mapping[str, Any]]):
        self._temp_dir = temp_dir
        self._config = config
        self._stream_specs = dict(stream_specs)

    def process(self, bucket_samples):
        _, samples = bucket_samples
        writer = ShardWriter(self._temp_dir, self._config, self._stream_specs)
        with writer:
            for sample in sorted(samples, key=lambda s: s.key):
                for written in writer.add(sample):
                    metrics.counter("shards").inc()
                    yield written
            closed = writer.close()
        for written in closed:
            metrics.counter("shards").inc()
            yield written


def _failure_order(f: Failure) -> tuple:
    return (f.uri, f.stage, f.start_s if f.start_s is not None else -1.0, f.reason, f.message)


def _write_failure_files(group, temp_dir: str):
    stage, records = group
    ordered = sorted(records, key=_failure_order)
    for i in range(0, len(ordered), FAILURES_PER_FILE):
        yield write_failures_file(temp_dir, ordered[i:i + FAILURES_PER_FILE], stage)


class WriteDataset(beam.PTransform):
    """Samples and failures -> shards, failure files, state and the index under ``output``.

    Applied to a dict with ``samples`` (PCollection[Sample]), ``failures`` (Failure),
    ``listed`` (every matched AudioRef) and ``selected`` (the AudioRefs processed this run);
    returns a PCollection with the live index that was published.
    """

    def __init__(self, output: str, config: ShardConfig, stream_specs: Mapping[str, Mapping[str, Any]],
                 run_info: Mapping[str, Any], plan: RunPlan = RunPlan(), run_id: str | None = None):
        super().__init__()
        self.output = storage.check_url(output)
        self.config = config
        self.stream_specs = dict(stream_specs)
        self.run_info = dict(run_info)
        self.plan = plan
        self.temp_dir = storage.join(output, dataset.TMP_DIR, run_id or uuid.uuid4().hex)

    def expand(self, inputs):
        n_selected = inputs["selected"] | "CountSelected" >> beam.combiners.Count.Globally()
        per_bucket = self.config.files_per_bucket
        shards = (inputs["samples"]
                  | "KeyByBucket" >> beam.Map(lambda s, n: (bucket_of(s.key, num_buckets(n, per_bucket)), s),
                                              beam.pvalue.AsSingleton(n_selected))
                  | "GroupByBucket" >> beam.GroupByKey()
                  | "WriteTempShards" >> beam.ParDo(_WriteBucketFn(self.temp_dir, self.config, self.stream_specs)))
        fails = (inputs["failures"]
                 | "KeyFailures" >> beam.Map(lambda f: ("match" if f.stage == "match" else "", f))
                 | "GroupFailures" >> beam.GroupByKey()
                 | "WriteTempFailures" >> beam.FlatMap(_write_failure_files, self.temp_dir))
        listed = inputs["listed"] | "AllListed" >> beam.combiners.ToList()
        selected = (inputs["selected"]
                    | "SelectedUris" >> beam.Map(lambda ref: ref.uri)
                    | "AllSelected" >> beam.combiners.ToList())
        return ((shards, fails)
                | "AllWritten" >> beam.Flatten()
                | "CollectWritten" >> beam.combiners.ToList()
                | "Publish" >> beam.Map(
                    lambda written, listed, selected, output, temp_dir, info, plan: finalize(
                        output, temp_dir, written, info, plan, listed, selected),
                    beam.pvalue.AsSingleton(listed), beam.pvalue.AsSingleton(selected),
                    self.output, self.temp_dir, self.run_info, self.plan))
