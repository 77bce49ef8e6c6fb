"""Patterns and manifests -> ``AudioRef``s.

A pattern is any fsspec URL with glob characters (``**`` recurses); a manifest is a JSON
lines file with ``uri`` and optional ``id``, ``text``, ``speaker``, ``language`` per line,
and optionally a timed transcript (``words``: [{start, end, word}] or ``segments``:
[{start, end, text}], seconds in the file) that segmentation cuts along with the audio (relative URIs are relative to the manifest's folder). Each pattern is listed once, by one
worker, and the references are then spread over the workers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import posixpath
from typing import Iterator, Sequence

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
        patterns: glob patterns or directories (any fsspec URL).
        manifests: JSON lines manifests.
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


def expand_pattern(pattern: str, exclude: Sequence[str] = ()) -> Iterator[AudioRef]:
    """Lists the files of one pattern (sorted), as references with size and version."""
    for url, info in storage.list_files(pattern):
        if exclude and is_excluded(url, exclude):
            continue
        size = info.get("size")
        yield AudioRef(uri=url, size_bytes=int(size) if size is not None else None,
                       version=storage.version_marker(info))


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
    def __init__(self, exclude: Sequence[str]):
        self._exclude = tuple(exclude)

    def process(self, pattern: str):
        n = 0
        for ref in expand_pattern(pattern, self._exclude):
            n += 1
            try:
                check_listed_name(ref.uri)
            except AudiotokError as e:
                metrics.failure(e.reason, "match")
                yield beam.pvalue.TaggedOutput("failures", Failure.from_error(ref.uri, e, "match"))
                continue
            yield ref
        metrics.counter("files_matched").inc(n)
        if n == 0:
            metrics.failure(failures.READ_ERROR, "match")
            yield beam.pvalue.TaggedOutput(
                "failures", Failure(pattern, failures.READ_ERROR, "the pattern matches no file", stage="match"))


class _ReadManifest(beam.DoFn):
    def process(self, manifest_url: str):
        try:
            with storage.open_input(manifest_url) as f:
                for line_no, raw in enumerate(f, start=1):
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line:
                        continue
                    try:
                        yield parse_manifest_line(line, manifest_url, line_no)
                        metrics.counter("files_matched").inc()
                    except AudiotokError as e:
                        metrics.failure(e.reason, "match")
                        yield beam.pvalue.TaggedOutput("failures", Failure.from_error(e.uri, e, "match"))
        except (OSError, ValueError) as e:
            metrics.failure(failures.READ_ERROR, "match")
            yield beam.pvalue.TaggedOutput(
                "failures", Failure(manifest_url, failures.READ_ERROR, f"{type(e).__name__}: {e}", stage="match"))


class MatchAudio(beam.PTransform):
    """Patterns and manifests -> PCollection[AudioRef] (main) and Failure (``failures``)."""

    def __init__(self, config: MatchConfig):
        super().__init__()
        self.config = config

    def expand(self, pbegin):
        refs, fails = [], []
        if self.config.patterns:
            out = (pbegin
                   | "Patterns" >> beam.Create(list(self.config.patterns))
                   | "ExpandPatterns" >> beam.ParDo(_ExpandPattern(self.config.exclude)).with_outputs(
                       "failures", main="refs"))
            refs.append(out.refs)
            fails.append(out.failures)
        if self.config.manifests:
            out = (pbegin
                   | "Manifests" >> beam.Create(list(self.config.manifests))
                   | "ReadManifests" >> beam.ParDo(_ReadManifest()).with_outputs("failures", main="refs"))
            refs.append(out.refs)
            fails.append(out.failures)
        all_refs = refs | "AllRefs" >> beam.Flatten()
        all_fails = fails | "MatchFailures" >> beam.Flatten()
        # One worker listed each pattern; spread the files over all of them.
        spread = all_refs | "SpreadFiles" >> beam.Reshuffle()
        return {"refs": spread, "failures": all_fails}
