"""Patterns and manifests -> ``AudioRef``s.

A pattern is any fsspec URL with glob characters (``**`` recurses); a manifest is a JSON
lines file with ``uri`` and optional ``id``, ``text``, ``speaker``, ``language`` per line,
and optionally a timed transcript (``words``: [{start, end, word}] or ``segments``:
[{start, end, text}], seconds in the file) that segmentation cuts along with the audio (relative URIs are relative to the manifest's folder). Each pattern is listed once, by one
worker, and the references are then spread over the workers.

Every input is read once: references are de-duplicated by URI before anything is decoded
(the first occurrence wins: manifests in the order given, each line by line, then patterns;
a manifest entry carries more than a listing does. The others are counted as
``inputs_duplicate``.) Entries that are not regular files
(FIFOs, devices, sockets: a read could block forever) are refused when they are listed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import posixpath
import stat
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam

from audiotok.transforms import failures, metrics, storage
from audiotok.transforms.failures import AudiotokError, Failure
from audiotok.transforms.records import MANIFEST_FIELDS, TRANSCRIPT_FIELDS, AudioRef

# Files that sit beside audio in corpora and are never audio. Matching skips them (and
# counts them) rather than dead-lettering every README.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "*.json", "*.jsonl", "*.txt", "*.md", "*.csv", "*.tsv", "*.yaml", "*.yml", "*.lab", "*.TextGrid",
    ".*", "*/.*",
)


@dataclasses.dataclass(frozen=True)
class MatchConfig:
    """What to read.

    Attributes:
        patterns: glob patterns or directories (any fsspec URL: local, ``file://``, ``gs://``,
            ``s3://``, ...); ``**`` recurses.
        manifests: JSON lines manifests: ``uri`` plus optional ``id``, ``text``, ``speaker``,
            ``language`` and a timed transcript.
        exclude: basename glob patterns skipped when matching patterns (not manifests).
    """

    patterns: tuple[str, ...] = ()
    manifests: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def __post_init__(self) -> None:
        if not self.patterns and not self.manifests:
            raise ValueError("give at least one input pattern or manifest")
        for url in (*self.patterns, *self.manifests):
            storage.check_url(url)


def is_excluded(url: str, exclude: Sequence[str]) -> bool:
    name = posixpath.basename(url.rstrip("/"))
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(url, p) for p in exclude)


def ref_from_listing(url: str, info: Mapping[str, Any]) -> AudioRef:
    """A listed file as a reference with its size and version."""
    size = info.get("size")
    return AudioRef(uri=url, size_bytes=int(size) if size is not None else None, version=storage.version_marker(info))


def expand_pattern(pattern: str, exclude: Sequence[str] = ()) -> Iterator[AudioRef]:
    """Lists the files of one pattern (sorted), as references with size and version."""
    for url, info in storage.list_files(pattern):
        if not (exclude and is_excluded(url, exclude)):
            yield ref_from_listing(url, info)


def check_listed_name(url: str) -> None:
    """Refuses a listed file whose name the rest of the pipeline cannot carry safely.

    Raises:
        AudiotokError: ``bad_name`` for a name that is not valid UTF-8 (sample metadata is
            UTF-8 JSON and must name its source exactly), or that holds ``::`` (fsspec reads
            it as a URL chain and would open another file).
    """
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise AudiotokError(failures.BAD_NAME, "the file name is not valid UTF-8 (shown with \\x escapes); "
                            "metadata cannot name it exactly: rename the file", url) from None
    path = url.split("://", 1)[1] if "://" in url else url
    if "::" in path:
        raise AudiotokError(failures.BAD_NAME, "the file name holds '::', which fsspec reads as a URL chain: "
                            "rename the file", url)


def _kind_of_mode(mode: int | None) -> str:
    if mode is None:
        return "not a regular file"
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def check_regular_file(url: str, info: Mapping[str, Any] | None = None) -> None:
    """Refuses an input that is not a regular file, from its listing ``info`` or, for a local
    path given without one (a manifest entry), from ``stat``. Object store entries always pass.

    Raises:
        AudiotokError: ``not_a_file`` for a FIFO, a device, a socket or a folder: opening or
            reading one can block forever, before any time limit applies.
    """
    local = storage.protocol_of(url) in ("", "file", "local")
    if info is not None and info.get("type", "file") == "file":
        return
    if not local:
        if info is None:
            return
        mode = None
    else:
        path = url.split("://", 1)[1] if "://" in url else url
        try:
            mode = os.stat(path).st_mode  # through symlinks: what reading it would open
        except OSError:
            if info is None:
                return  # missing or unreadable: decoding says so (read_error)
            mode = None  # a dangling link
        if mode is not None and stat.S_ISREG(mode):
            return
    raise AudiotokError(failures.NOT_A_FILE, f"{_kind_of_mode(mode)}, not a regular file: reading it could block "
                        "forever", url)


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


def resolve_uri(uri: str, manifest_url: str) -> str:
    """Makes a manifest entry's URI absolute (relative to the manifest's folder; a local one
    independent of the working directory, so a file has one URI wherever the job starts)."""
    if "://" in uri or uri.startswith("/"):
        return uri
    base = manifest_url.rsplit("/", 1)[0] if "/" in manifest_url else "."
    joined = storage.join(base, uri)
    return storage.absolute(joined) if storage.protocol_of(joined) == "" else joined


def parse_manifest_line(line: str, manifest_url: str, line_no: int) -> AudioRef:
    """One manifest line -> AudioRef; raises AudiotokError(bad_manifest) on a bad line."""
    where = f"{manifest_url}:{line_no}"
    try:
        record = json.loads(line)
    except ValueError as e:
        raise AudiotokError(failures.BAD_MANIFEST, f"line {line_no} is not JSON: {e}", where) from None
    if not isinstance(record, dict) or not isinstance(record.get("uri"), str) or not record["uri"]:
        raise AudiotokError(failures.BAD_MANIFEST, f"line {line_no} has no string 'uri'", where)
    try:
        # The entry itself first: resolving would turn 'pipe:cmd' into a harmless-looking path.
        uri = storage.check_url(resolve_uri(storage.check_url(record["uri"]), manifest_url))
    except ValueError as e:
        raise AudiotokError(failures.BAD_MANIFEST, str(e), where) from None
    meta = {k: record[k] for k in MANIFEST_FIELDS if record.get(k) not in (None, "")}
    for k, v in meta.items():
        if not isinstance(v, (str, int, float)):
            raise AudiotokError(failures.BAD_MANIFEST, f"line {line_no}: field {k!r} must be a string", where)
        meta[k] = str(v)
    timed = {k: record[k] for k in TRANSCRIPT_FIELDS if record.get(k) is not None}
    if len(timed) > 1:
        raise AudiotokError(failures.BAD_MANIFEST, f"line {line_no}: give 'words' or 'segments', not both", where)
    if timed:
        from audiotok.transforms.segment import timed_transcript  # segment imports the decoders; keep match light
        try:
            field, entries = timed_transcript(timed)
        except AudiotokError as e:
            raise AudiotokError(failures.BAD_MANIFEST, f"line {line_no}: {e.message}", where) from None
        meta[field] = entries
    return AudioRef(uri=uri, meta=meta)


class _ExpandPattern(beam.DoFn):
    """(pattern index, pattern) -> ((1, pattern index, position), AudioRef) for each file listed."""

    def __init__(self, exclude: Sequence[str]):
        self._exclude = tuple(exclude)

    def process(self, numbered: tuple[int, str]):
        index, pattern = numbered
        n = 0
        for url, info in storage.list_files(pattern):
            if self._exclude and is_excluded(url, self._exclude):
                continue
            n += 1
            try:
                check_listed_name(url)
                check_regular_file(url, info)
            except AudiotokError as e:
                metrics.failure(e.reason, "match")
                yield beam.pvalue.TaggedOutput("failures", Failure.from_error(url, e, "match"))
                continue
            yield (1, index, n), ref_from_listing(url, info)
        metrics.counter("files_matched").inc(n)
        if n == 0:
            metrics.failure(failures.READ_ERROR, "match")
            yield beam.pvalue.TaggedOutput(
                "failures", Failure(pattern, failures.READ_ERROR, "the pattern matches no file", stage="match"))


class _ReadManifest(beam.DoFn):
    """(manifest index, URL) -> ((0, manifest index, line number), AudioRef) for each good line."""

    def process(self, numbered: tuple[int, str]):
        index, manifest_url = numbered
        try:
            with storage.open_input(manifest_url) as f:
                for line_no, raw in enumerate(f, start=1):
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line:
                        continue
                    try:
                        ref = parse_manifest_line(line, manifest_url, line_no)
                        metrics.counter("files_matched").inc()
                        check_regular_file(ref.uri)
                        yield (0, index, line_no), ref
                    except AudiotokError as e:
                        metrics.failure(e.reason, "match")
                        yield beam.pvalue.TaggedOutput("failures", Failure.from_error(e.uri, e, "match"))
        except (OSError, ValueError) as e:
            metrics.failure(failures.READ_ERROR, "match")
            yield beam.pvalue.TaggedOutput(
                "failures", Failure(manifest_url, failures.READ_ERROR, f"{type(e).__name__}: {e}", stage="match"))


def first_occurrence(group: tuple[str, Iterable[tuple[tuple, AudioRef]]]) -> tuple[tuple, AudioRef]:
    """The first (by order key) of the references to one input; the others are counted."""
    _, ordered = group
    ordered = sorted(ordered, key=lambda o: o[0])
    if len(ordered) > 1:
        metrics.counter("inputs_duplicate").inc(len(ordered) - 1)
    return ordered[0]


def key_prefix(ref: AudioRef) -> str:
    """``STEM-SOURCEHASH``: what every sample key of ``ref`` starts with."""
    from audiotok.transforms.segment import key_stem, source_hash  # segment imports the decoders: keep match light

    return f"{key_stem(ref)}-{source_hash(ref)}"


def _one_per_key_prefix(group: tuple[str, Iterable[tuple[tuple, AudioRef]]]):
    """The first input of those whose sample keys would be the same; the others are dead letters
    (their URIs differ, their stems and 40-bit source hashes do not)."""
    prefix, ordered = group
    ordered = sorted(ordered, key=lambda o: o[0])
    yield ordered[0][1]
    for _, ref in ordered[1:]:
        metrics.failure(failures.KEY_COLLISION, "match")
        yield beam.pvalue.TaggedOutput("failures", Failure(
            ref.uri, failures.KEY_COLLISION, f"its samples would get the keys of {ordered[0][1].uri} ({prefix}-...): "
            "rename the file or give it a manifest id", stage="match"))


class UniqueInputs(beam.PTransform):
    """PCollection[(order key, AudioRef)] -> ``{"refs": each input once, "failures": key collisions}``.

    References to one input (by :func:`input_identity`) are grouped and the first occurrence
    kept; then inputs whose sample keys would be equal are told apart (:func:`key_prefix`), so
    no key is ever written twice. The groupings also spread the inputs over the workers.
    """

    def expand(self, ordered):
        firsts = (ordered
                  | "KeyByInput" >> beam.Map(lambda o: (input_identity(o[1].uri), o))
                  | "GroupByInput" >> beam.GroupByKey()
                  | "FirstOccurrence" >> beam.Map(first_occurrence))
        out = (firsts
               | "KeyByKeyPrefix" >> beam.Map(lambda o: (key_prefix(o[1]), o))
               | "GroupByKeyPrefix" >> beam.GroupByKey()
               | "OnePerKeyPrefix" >> beam.FlatMap(_one_per_key_prefix).with_outputs("failures", main="refs"))
        return {"refs": out.refs, "failures": out.failures}


class MatchAudio(beam.PTransform):
    """Patterns and manifests -> PCollection[AudioRef] (main) and Failure (``failures``)."""

    def __init__(self, config: MatchConfig):
        super().__init__()
        self.config = config

    def expand(self, pbegin):
        refs, fails = [], []
        if self.config.patterns:
            out = (pbegin
                   | "Patterns" >> beam.Create(list(enumerate(self.config.patterns)))
                   | "ExpandPatterns" >> beam.ParDo(_ExpandPattern(self.config.exclude)).with_outputs(
                       "failures", main="refs"))
            refs.append(out.refs)
            fails.append(out.failures)
        if self.config.manifests:
            out = (pbegin
                   | "Manifests" >> beam.Create(list(enumerate(self.config.manifests)))
                   | "ReadManifests" >> beam.ParDo(_ReadManifest()).with_outputs("failures", main="refs"))
            refs.append(out.refs)
            fails.append(out.failures)
        all_refs = refs | "AllRefs" >> beam.Flatten()
        # One worker listed each pattern; grouping by input spreads the files over all of them.
        unique = all_refs | "UniqueInputs" >> UniqueInputs()
        all_fails = (*fails, unique["failures"]) | "MatchFailures" >> beam.Flatten()
        return {"refs": unique["refs"], "failures": all_fails}
