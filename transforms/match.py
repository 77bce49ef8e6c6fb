"""Patterns and manifests -> ``AudioRef``s.

A pattern is any fsspec URL with glob characters (``**`` recurses); a manifest is a JSON
lines file with ``uri`` and optional ``id``, ``text``, ``speaker``, ``language`` per line,
and optionally a timed transcript (``words``: [{start, end, word}] or ``segments``:
[{start, end, text}], seconds in the file) that segmentation cuts along with the audio (relative
URIs are relative to the manifest's folder).

Listing fans out: a pattern's top folders are listed first (:func:`split_pattern`, a few
requests), then up to :data:`MAX_LISTERS` groups of sub-folders are listed by as many workers at
once (:func:`list_prefixes`); a manifest is read in ranges of :data:`MANIFEST_SPLIT_BYTES` by as
many workers (:func:`read_manifest_range`). Either way the listing comes out as batches, one per
lister, which the job writes as sorted runs (``incremental.write_run``) and
:class:`MatchAudio` spreads over the workers as references. The files found are exactly those
``fsspec``'s ``glob`` finds for the pattern.

Every input is read once: references naming one input (``dataset.input_identity``) are
de-duplicated before anything is decoded, in the join with the previous state
(``incremental.merge_inputs``; :class:`MatchAudio` does it by grouping): the first occurrence
wins (manifests in the order given, each line by line, then patterns: a manifest entry carries
more than a listing does), the others are counted as ``inputs_duplicate``. Entries that are not
regular files (FIFOs, devices, sockets: a read could block forever) are refused when they are
listed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
import posixpath
import re
import stat
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from fsspec.utils import glob_translate

from audiotok.transforms import dataset, failures, metrics, storage
from audiotok.transforms.failures import AudiotokError, Failure
from audiotok.transforms.records import MANIFEST_FIELDS, TRANSCRIPT_FIELDS, AudioRef

# Files that sit beside audio in corpora and are never audio. Matching skips them (and
# counts them) rather than dead-lettering every README.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "*.json", "*.jsonl", "*.txt", "*.md", "*.csv", "*.tsv", "*.yaml", "*.yml", "*.lab", "*.TextGrid",
    ".*", "*/.*",
)

# Listing fan-out: a pattern's folders are expanded (one listing request each) level by level,
# at most SPLIT_LEVELS levels, while there are fewer than MIN_LISTERS of them; they are then
# listed in at most MAX_LISTERS groups, each by one worker.
MIN_LISTERS = 8
MAX_LISTERS = 64
SPLIT_LEVELS = 3
# A manifest is read in ranges of this many bytes, each by one worker.
MANIFEST_SPLIT_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class MatchConfig:
    """What to read.

    Relative local paths are made absolute (``..`` resolved) where the config is built: a file
    has one URI, and so one sample key, whatever directory the job starts from, and workers in
    other directories read the same files.

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
        for field in ("patterns", "manifests"):
            urls = tuple(storage.absolute(u) if storage.protocol_of(u) == "" else u for u in getattr(self, field))
            object.__setattr__(self, field, urls)


def is_excluded(url: str, exclude: Sequence[str]) -> bool:
    """Whether a file's name (or whole URL) matches one of the ``exclude`` patterns."""
    if not exclude:
        return False
    regex = _exclusions(tuple(exclude))
    return bool(regex.match(posixpath.basename(url.rstrip("/"))) or regex.match(url))


@functools.lru_cache(maxsize=16)
def _exclusions(exclude: tuple[str, ...]) -> "re.Pattern[str]":
    # One regular expression for all the patterns: listing tests every file of the corpus.
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in exclude))


def ref_from_listing(url: str, info: Mapping[str, Any]) -> AudioRef:
    """A listed file as a reference with its size and version."""
    size = info.get("size")
    return AudioRef(uri=url, size_bytes=int(size) if size is not None else None, version=storage.version_marker(info))


def expand_pattern(pattern: str, exclude: Sequence[str] = ()) -> Iterator[AudioRef]:
    """Lists the files of one pattern (sorted), as references with size and version, in this
    process (the job fans the listing out: :class:`ListInputs`)."""
    found, work = split_pattern(pattern)
    for w in work:
        found += list_prefixes(w)
    for url, info in sorted(found, key=lambda f: f[0]):
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


input_identity = dataset.input_identity


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


# ---------------------------------------------------------------------------- listing, fanned out


@dataclasses.dataclass(frozen=True)
class ListWork:
    """Folders one worker lists for a pattern.

    Attributes:
        pattern: the pattern (its URL, as given).
        prefixes: ``(folder path within the filesystem, depth)``: list the folder's files down to
            ``depth`` levels (None: all levels).
    """

    pattern: str
    prefixes: tuple[tuple[str, int | None], ...]

    @property
    def identity(self) -> str:
        return "\0".join([self.pattern, *(p for p, _ in self.prefixes)])


@dataclasses.dataclass(frozen=True)
class _Glob:
    """A pattern as ``fsspec``'s ``glob`` reads it: the folder it starts from, how deep it may
    match (None: any depth) and the regular expression a path must match."""

    root: str
    depth: int | None
    regex: Any

    @classmethod
    def of(cls, path: str) -> "_Glob":
        # fsspec's AbstractFileSystem.glob: find(root, maxdepth=depth) filtered by glob_translate.
        first = min([i for i in (path.find("*"), path.find("?"), path.find("[")) if i >= 0] or [len(path)])
        cut = path[:first].rfind("/")
        root = path[:cut + 1] if cut >= 0 else ""
        depth = None if "**" in path else path[cut + 1:].count("/") + 1
        return cls(root, depth, re.compile(glob_translate(path)))


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def split_pattern(pattern: str, max_listers: int = MAX_LISTERS, levels: int = SPLIT_LEVELS,
                  min_listers: int = MIN_LISTERS) -> tuple[list[tuple[str, dict]], list[ListWork]]:
    """Expands a pattern's top folders: the files found on the way, and the folders left to list,
    grouped into at most ``max_listers`` pieces of work. A level is expanded only while there are
    fewer than ``min_listers`` folders (each expansion lists those folders here, on one worker).

    Returns:
        ([(url, info)] of the files found while expanding that the pattern matches, [ListWork]).
    """
    url, (fs, path) = _listing(pattern)
    if not _has_magic(path):
        try:
            if not storage.retrying(lambda: fs.isdir(path), f"looking up {url}"):
                return [(storage.unstrip(fs, url, path), storage.retrying(lambda: fs.info(path),
                                                                           f"looking up {url}"))], []
        except FileNotFoundError:
            return [], []
        path = posixpath.join(path.rstrip("/"), "**")
    glob = _Glob.of(path)
    found: list[tuple[str, dict]] = []
    frontier: list[tuple[str, int | None]] = [(glob.root, glob.depth)]
    for _ in range(levels):
        if len(frontier) >= min_listers:
            break
        deeper: list[tuple[str, int | None]] = []
        for folder, depth in frontier:
            try:
                entries = storage.retrying(lambda: fs.ls(folder or "", detail=True), f"listing {url}")
            except FileNotFoundError:
                continue
            for info in entries:
                name = info["name"].rstrip("/")
                if info.get("type") == "directory":
                    if depth is None or depth > 1:
                        deeper.append((name, None if depth is None else depth - 1))
                elif glob.regex.match(name):
                    found.append((storage.unstrip(fs, url, name), info))
        frontier = sorted(deeper)
        if not frontier:
            break
    size = -(-len(frontier) // max_listers) if frontier else 1
    work = [ListWork(pattern, tuple(frontier[i:i + size])) for i in range(0, len(frontier), size)]
    return sorted(found, key=lambda f: f[0]), work


def list_prefixes(work: ListWork) -> list[tuple[str, dict]]:
    """The files under ``work``'s folders that its pattern matches: ``[(url, info)]``, sorted."""
    url, (fs, path) = _listing(work.pattern)
    if not _has_magic(path):
        path = posixpath.join(path.rstrip("/"), "**")
    glob = _Glob.of(path)
    out = []
    for folder, depth in work.prefixes:
        try:
            found = storage.retrying(lambda: fs.find(folder, maxdepth=depth, withdirs=False, detail=True),
                                     f"listing {url}")
        except FileNotFoundError:
            continue
        for name, info in found.items():
            if info.get("type") != "directory" and glob.regex.match(name):
                out.append((storage.unstrip(fs, url, name), info))
    return sorted(out, key=lambda f: f[0])


def _listing(pattern: str):
    """(the pattern to list, (filesystem, path)): a relative local pattern made absolute first
    (``..`` resolved), so a file has one URL whatever directory it was listed from."""
    url = storage.absolute(pattern) if storage.protocol_of(pattern) == "" else pattern
    return url, storage.filesystem(url)


def _refs_of(found: Iterable[tuple[str, dict]], exclude: Sequence[str]):
    """(url, info) -> AudioRef, or a Failure (a name that cannot be carried, not a regular file);
    excluded files are skipped."""
    for url, info in found:
        if exclude and is_excluded(url, exclude):
            continue
        try:
            check_listed_name(url)
            check_regular_file(url, info)
        except AudiotokError as e:
            metrics.failure(e.reason, "match")
            yield Failure.from_error(url, e, "match")
            continue
        yield ref_from_listing(url, info)


def _emit(identity: str, index: int, pattern: str, found: Iterable[tuple[str, dict]], exclude: Sequence[str]):
    """One lister's output: a batch ``(identity, [(order, AudioRef)])``, failures, and its count
    of files for the pattern (``counts``)."""
    refs, n = [], 0
    for out in _refs_of(found, exclude):
        n += 1
        if isinstance(out, Failure):
            yield beam.pvalue.TaggedOutput("failures", out)
        else:
            refs.append(((1, index, 0, 0), out))  # patterns come after manifests, in the order given
    metrics.counter("files_matched").inc(n)
    yield beam.pvalue.TaggedOutput("counts", (pattern, n))
    if refs:
        yield identity, refs


class _SplitPatternFn(beam.DoFn):
    def __init__(self, exclude: Sequence[str]):
        self._exclude = tuple(exclude)

    def process(self, numbered: tuple[int, str]):
        index, pattern = numbered
        found, work = split_pattern(pattern)
        metrics.counter("listing_work").inc(len(work))
        for w in work:
            yield beam.pvalue.TaggedOutput("work", (index, w))
        yield from _emit(pattern, index, pattern, found, self._exclude)


class _ListPrefixesFn(beam.DoFn):
    def __init__(self, exclude: Sequence[str]):
        self._exclude = tuple(exclude)

    def process(self, numbered: tuple[int, ListWork]):
        index, work = numbered
        yield from _emit(work.identity, index, work.pattern, list_prefixes(work), self._exclude)


def _unmatched(pattern_count):
    pattern, n = pattern_count
    if n == 0:
        metrics.failure(failures.READ_ERROR, "match")
        yield Failure(pattern, failures.READ_ERROR, "the pattern matches no file", stage="match")


# ---------------------------------------------------------------------------- manifests, in ranges


def manifest_ranges(manifest_url: str, size: int, split_bytes: int = MANIFEST_SPLIT_BYTES) -> list[tuple[int, int]]:
    """``[start, end)`` byte ranges covering a manifest of ``size`` bytes (one, for an empty one)."""
    return [(start, min(size, start + split_bytes)) for start in range(0, max(size, 1), split_bytes)]


def read_manifest_range(f, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """``(line number within the range, raw line)`` of every line that starts in ``[start, end)``
    of an open manifest (the line that straddles ``start`` belongs to the range before)."""
    if start > 0:
        f.seek(start - 1)
        f.readline()  # the rest of the line holding byte start - 1 (just its newline when one ends there)
    else:
        f.seek(0)
    n = 0
    while f.tell() < end:
        raw = f.readline()
        if not raw:
            break
        n += 1
        yield n, raw


class _SplitManifestFn(beam.DoFn):
    def process(self, numbered: tuple[int, str]):
        manifest_index, manifest_url = numbered
        try:
            fs, path = storage.filesystem(manifest_url)
            size = int(fs.size(path))
        except (OSError, ValueError) as e:
            metrics.failure(failures.READ_ERROR, "match")
            yield beam.pvalue.TaggedOutput(
                "failures", Failure(manifest_url, failures.READ_ERROR, f"{type(e).__name__}: {e}", stage="match"))
            return
        for i, (start, end) in enumerate(manifest_ranges(manifest_url, size)):
            yield manifest_index, manifest_url, i, start, end


class _ReadManifestRangeFn(beam.DoFn):
    """(manifest index, manifest, range index, start, end) -> a batch of refs, each with its
    order (manifest, range, line); bad lines, numbered within the range (``bad``), and the
    range's line count (``lines``), for :func:`_number_bad_line`."""

    def process(self, item):
        manifest_index, manifest_url, index, start, end = item
        refs, n, parsed = [], 0, 0
        try:
            with storage.open_input(manifest_url) as f:
                for n, raw in read_manifest_range(f, start, end):
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line:
                        continue
                    try:
                        ref = parse_manifest_line(line, manifest_url, n)
                    except AudiotokError:
                        yield beam.pvalue.TaggedOutput("bad", (manifest_url, index, n, line))
                        continue
                    parsed += 1
                    try:
                        check_regular_file(ref.uri)
                    except AudiotokError as e:
                        metrics.failure(e.reason, "match")
                        yield beam.pvalue.TaggedOutput("failures", Failure.from_error(e.uri, e, "match"))
                        continue
                    refs.append(((0, manifest_index, index, n), ref))
        except (OSError, ValueError) as e:
            metrics.failure(failures.READ_ERROR, "match")
            yield beam.pvalue.TaggedOutput(
                "failures", Failure(manifest_url, failures.READ_ERROR, f"{type(e).__name__}: {e}", stage="match"))
        metrics.counter("files_matched").inc(parsed)
        yield beam.pvalue.TaggedOutput("lines", ((manifest_url, index), n))
        if refs:
            yield f"{manifest_url}\0{start}", refs


def _number_bad_line(bad, line_counts: dict) -> Failure:
    """A bad manifest line's dead letter, with its line number in the whole manifest."""
    manifest_url, index, n, line = bad
    line_no = n + sum(line_counts.get((manifest_url, i), 0) for i in range(index))
    try:
        parse_manifest_line(line, manifest_url, line_no)
        raise AssertionError("a bad manifest line parsed on the second reading")  # pure: cannot happen
    except AudiotokError as e:
        metrics.failure(e.reason, "match")
        return Failure.from_error(e.uri, e, "match")


class ListInputs(beam.PTransform):
    """Patterns and manifests -> ``{"batches": (PCollection[(identity, [(order, AudioRef)])], ...),
    "failures": PCollection[Failure]}``: one batch per lister (a group of folders, a manifest
    range), its identity a stable name for it; ``order`` says where the listing found each
    input (manifest index, range and line; or pattern index), which of the URIs naming one input
    is read.

    ``batches`` is a tuple of PCollections (the files found while splitting patterns, those of
    the listers, those of manifest ranges): the in-process runner holds every element of a
    Flatten in memory, so their consumers take each one apart (the job writes each batch to a
    file where it is made).
    """

    def __init__(self, config: MatchConfig):
        super().__init__()
        self.config = config

    def expand(self, pbegin):
        batches, fails = [], []
        if self.config.patterns:
            split = (pbegin
                     | "Patterns" >> beam.Create(list(enumerate(self.config.patterns)))
                     | "SplitPatterns" >> beam.ParDo(_SplitPatternFn(self.config.exclude)).with_outputs(
                         "work", "failures", "counts", main="batches"))
            listed = (split.work
                      | "SpreadListing" >> beam.Reshuffle()
                      | "ListFolders" >> beam.ParDo(_ListPrefixesFn(self.config.exclude)).with_outputs(
                          "failures", "counts", main="batches"))
            unmatched = ((split.counts, listed.counts)
                         | "AllCounts" >> beam.Flatten()
                         | "FilesPerPattern" >> beam.CombinePerKey(sum)
                         | "Unmatched" >> beam.FlatMap(_unmatched))
            batches += [split.batches, listed.batches]
            fails += [split.failures, listed.failures, unmatched]
        if self.config.manifests:
            ranges = (pbegin
                      | "Manifests" >> beam.Create(list(enumerate(self.config.manifests)))
                      | "SplitManifests" >> beam.ParDo(_SplitManifestFn()).with_outputs("failures", main="ranges"))
            read = (ranges.ranges
                    | "SpreadManifests" >> beam.Reshuffle()
                    | "ReadManifests" >> beam.ParDo(_ReadManifestRangeFn()).with_outputs(
                        "bad", "lines", "failures", main="batches"))
            numbered = read.bad | "NumberBadLines" >> beam.Map(_number_bad_line, beam.pvalue.AsDict(read.lines))
            batches.append(read.batches)
            fails += [ranges.failures, read.failures, numbered]
        return {"batches": tuple(batches), "failures": fails | "MatchFailures" >> beam.Flatten()}


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
        listed = pbegin | "ListInputs" >> ListInputs(self.config)
        ordered = ([batches | f"Unbatch{i}" >> beam.FlatMap(lambda batch: batch[1])
                    for i, batches in enumerate(listed["batches"])]
                   | "AllRefs" >> beam.Flatten())
        # Each batch came from one lister; grouping by input spreads the files over all the workers.
        unique = ordered | "UniqueInputs" >> UniqueInputs()
        fails = (listed["failures"], unique["failures"]) | "AllMatchFailures" >> beam.Flatten()
        return {"refs": unique["refs"], "failures": fails}
