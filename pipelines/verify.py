"""``audiotok verify OUT``: checks a dataset end to end; exits 1 with a list of problems.

What is checked:

* ``index.json``: readable, format and version; the part files it names read; no shard listed
  twice; totals (shards, bytes of both shard sets, live samples) equal the sum of the shard rows;
  the state names as many inputs as the totals say.
* every shard: the file exists and has the size the index says; the tar reads to its end
  (header checksums, and no data after an early end-of-archive, where ``tarfile`` would
  stop quietly); every member is a regular file that passes ``tarfile``'s ``data``
  extraction filter and is named ``KEY.json``, ``KEY.<stream>.npy`` or ``KEY.txt`` with a safe key; a
  sample's members are adjacent; its samples, seconds of audio and tokens per stream equal
  the index row, and so do its live samples (those not in ``excluded_sources``).
* every vector shard (``vectors_url``, ``--separate-vectors``): the same file and tar checks;
  it holds only vector-stream members, of the shard's samples, in the shard's order, and the
  shard holds none; each sample is checked with the members of both.
* every sample: ``KEY.json`` parses and names the key; start_s, end_s and duration_s agree;
  it has exactly the streams its metadata declares, and those are in the index; each
  ``.npy`` loads without pickle, has the shape and dtype ``KEY.json`` declares, and fits the
  index's stream spec (kind, dtype, K, D, frame rate, tokenizer); codes and units lie in
  ``[0, codebook_size)``; run lengths are positive; vectors are finite; the frame count fits
  the duration and frame rate; a ``KEY.txt`` (the segment's share of a timed transcript) is
  UTF-8 and equals the ``text`` of ``KEY.json``.
* keys are unique across the live samples of the whole dataset.
* the dataset totals (samples, seconds, tokens per stream) equal what the live samples hold.
* ``failures/*.jsonl``: exist, hold the records and reasons their index rows say; the
  failure totals equal the live records.
* ``vocab.json`` (when present): matches the vocabulary the index's streams give.

A live sample's tokenizer fingerprint must be the index's. Warnings (listed, but failing
only with ``--strict``): shard files under ``shards/`` that the index does not list (an
incremental refresh leaves shards whose samples were all superseded).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import math
import os
import posixpath
import re
import sys
import tarfile
from typing import Any, Iterator, Mapping

import numpy as np

from audiotok.transforms import dataset, lm, storage

# Problem codes.
INDEX_UNREADABLE = "index_unreadable"
INDEX_MISMATCH = "index_mismatch"  # the index disagrees with the shards or with itself
MISSING_FILE = "missing_file"
UNLISTED_SHARD = "unlisted_shard"  # a warning
SIZE_MISMATCH = "size_mismatch"
TAR_CORRUPT = "tar_corrupt"
UNSAFE_MEMBER = "unsafe_member"  # rejected by tarfile's data filter, or not a regular file
BAD_MEMBER_NAME = "bad_member_name"
DUPLICATE_KEY = "duplicate_key"
SPLIT_SAMPLE = "split_sample"  # a sample's members are not adjacent
MISSING_MEMBER = "missing_member"
EXTRA_MEMBER = "extra_member"
BAD_METADATA = "bad_metadata"
UNKNOWN_STREAM = "unknown_stream"
BAD_ARRAY = "bad_array"
SHAPE_MISMATCH = "shape_mismatch"
DTYPE_MISMATCH = "dtype_mismatch"
SPEC_MISMATCH = "spec_mismatch"
CODE_OUT_OF_RANGE = "code_out_of_range"
NON_FINITE = "non_finite"
FRAME_COUNT = "frame_count_mismatch"
FAILURES_MISMATCH = "failures_mismatch"
VOCAB_MISMATCH = "vocab_mismatch"
FINGERPRINT_MISMATCH = "fingerprint_mismatch"  # a live sample's tokenizer is not the index's

# Not failures unless --strict: shard files no live sample is left in (an incremental refresh
# keeps them).
WARNING_CODES = frozenset({UNLISTED_SHARD})

_MEMBER = re.compile(r"^(?P<key>[^./]+)\.(?P<suffix>json|txt|(?P<stream>[^./]+)\.npy)$")
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        code: what kind of problem (see the module's constants).
        message: what exactly, with the values found.
        where: the file (relative to the dataset) it was found in.
        key: the sample, when one is concerned.
    """

    code: str
    message: str
    where: str = ""
    key: str = ""

    @property
    def is_warning(self) -> bool:
        return self.code in WARNING_CODES

    def __str__(self) -> str:
        place = " ".join(p for p in (self.where, f"key={self.key}" if self.key else "") if p)
        return f"{self.code}: {place + ': ' if place else ''}{self.message}"


@dataclasses.dataclass
class ShardReport:
    """What one shard holds, and what is wrong with it."""

    url: str
    keys: list[str] = dataclasses.field(default_factory=list)
    audio_s: float = 0.0
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    live_keys: list[str] = dataclasses.field(default_factory=list)
    live_audio_s: float = 0.0
    live_tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    problems: list[Problem] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Report:
    """The outcome of ``verify_dataset``."""

    output: str
    shards: int = 0
    samples: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)

    def errors(self, strict: bool = False) -> list[Problem]:
        return [p for p in self.problems if strict or not p.is_warning]

    def ok(self, strict: bool = False) -> bool:
        return not self.errors(strict)


# ---------------------------------------------------------------------------- one sample


def _frames(shape: list[int], kind: str) -> int:
    return int(shape[-1] if kind == "codes" else shape[0]) if shape else 0


def check_sample(key: str, members: Mapping[str, bytes], specs: Mapping[str, Mapping[str, Any]],
                 where: str = "") -> tuple[dict[str, Any] | None, dict[str, np.ndarray], list[Problem]]:
    """Checks one sample's members (suffix -> bytes: ``json``, ``<stream>.npy``).

    Returns:
        (its metadata or None, stream -> array for those that loaded, problems).
    """
    problems: list[Problem] = []

    def problem(code: str, message: str) -> None:
        problems.append(Problem(code, message, where, key))

    if "json" not in members:
        problem(MISSING_MEMBER, "no KEY.json")
        return None, {}, problems
    try:
        meta = json.loads(members["json"])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        problem(BAD_METADATA, f"KEY.json does not parse: {e}")
        return None, {}, problems
    if meta.get("key") != key:
        problem(BAD_METADATA, f"KEY.json names key {meta.get('key')!r}")
    declared = meta.get("streams")
    if not isinstance(declared, dict):
        problem(BAD_METADATA, "KEY.json has no 'streams' object")
        declared = {}
    try:
        duration_s = float(meta["duration_s"])
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError(duration_s)
        if abs(float(meta["end_s"]) - float(meta["start_s"]) - duration_s) > 1e-3:
            problem(BAD_METADATA,
                    f"end_s - start_s = {meta['end_s']} - {meta['start_s']} but duration_s = {duration_s}")
    except (KeyError, TypeError, ValueError) as e:
        problem(BAD_METADATA, f"bad or missing start_s/end_s/duration_s ({e})")
        duration_s = None
    if "txt" in members:
        try:
            text = members["txt"].decode("utf-8")
        except UnicodeDecodeError as e:
            problem(BAD_METADATA, f"KEY.txt is not UTF-8: {e}")
        else:
            if text != meta.get("text"):
                problem(BAD_METADATA, f"KEY.txt {text[:80]!r} differs from KEY.json's text {str(meta.get('text'))[:80]!r}")
    present = {s[:-len(".npy")] for s in members if s.endswith(".npy")}
    for name in sorted(set(declared) - present):
        problem(MISSING_MEMBER, f"KEY.json declares stream {name!r}; no KEY.{name}.npy")
    for name in sorted(present - set(declared)):
        problem(EXTRA_MEMBER, f"KEY.{name}.npy is not declared in KEY.json")
    arrays: dict[str, np.ndarray] = {}
    for name in sorted(set(declared) & present):
        d = declared[name] if isinstance(declared[name], dict) else {}
        spec = specs.get(name)
        if spec is None:
            problem(UNKNOWN_STREAM, f"stream {name!r} is not in the index's streams ({', '.join(sorted(specs))})")
            spec = {}
        try:
            array = np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            problem(BAD_ARRAY, f"{name}.npy does not load without pickle: {e}")
            continue
        arrays[name] = array
        if list(array.shape) != list(d.get("shape", [])):
            problem(SHAPE_MISMATCH, f"{name}: array shape {list(array.shape)}, KEY.json declares {d.get('shape')}")
        if str(array.dtype) != d.get("dtype"):
            problem(DTYPE_MISMATCH, f"{name}: array dtype {array.dtype}, KEY.json declares {d.get('dtype')}")
        for field in ("kind", "dtype", "num_codebooks", "codebook_size", "dim", "frame_rate_hz", "tokenizer"):
            if field in spec and d.get(field) != spec[field]:
                problem(SPEC_MISMATCH, f"{name}: KEY.json says {field}={d.get(field)!r}, the index {spec[field]!r}")
        if "fingerprint" in spec and d.get("fingerprint") != spec["fingerprint"]:
            problem(FINGERPRINT_MISMATCH, f"{name}: KEY.json fingerprint {d.get('fingerprint')}, "
                                          f"the index {spec['fingerprint']}")
        problems += [dataclasses.replace(p, where=where, key=key)
                     for p in check_array(name, array, spec or d, declared, duration_s)]
    return meta, arrays, problems


def check_array(name: str, array: np.ndarray, spec: Mapping[str, Any], declared: Mapping[str, Any],
                duration_s: float | None) -> list[Problem]:
    """Checks an array against its stream spec: layout for its kind, dtype, value range, frames."""
    out: list[Problem] = []
    kind = spec.get("kind")
    if spec.get("dtype") and str(array.dtype) != spec["dtype"]:
        out.append(Problem(SPEC_MISMATCH, f"{name}: dtype {array.dtype}, the stream spec says {spec['dtype']}"))
    if kind == "codes":
        k = spec.get("num_codebooks")
        if array.ndim != 2 or (k is not None and array.shape[0] != k):
            out.append(Problem(SPEC_MISMATCH, f"{name}: codes must be [K={k}, T]. Found shape {list(array.shape)}"))
    elif kind in ("units", "durations"):
        if array.ndim != 1:
            out.append(Problem(SPEC_MISMATCH, f"{name}: {kind} must be [T]. Found shape {list(array.shape)}"))
    elif kind == "vectors":
        dim = spec.get("dim")
        if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
            out.append(Problem(SPEC_MISMATCH, f"{name}: vectors must be [T, D={dim}]. Found shape {list(array.shape)}"))
    if array.size and kind in ("codes", "units") and np.issubdtype(array.dtype, np.integer):
        size = spec.get("codebook_size")
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or (size is not None and hi >= size):
            bad = int(((array < 0) | (array >= (size if size is not None else np.iinfo(array.dtype).max))).sum())
            out.append(Problem(CODE_OUT_OF_RANGE, f"{name}: {bad} code(s) outside [0, {size}) (min {lo}, max {hi})"))
    if array.size and kind == "durations" and int(array.min()) < 1:
        out.append(Problem(CODE_OUT_OF_RANGE, f"{name}: run lengths must be >= 1 (min {int(array.min())})"))
    if array.size and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        out.append(Problem(NON_FINITE, f"{name}: {int((~np.isfinite(array)).sum())} non-finite value(s)"))
    rate = spec.get("frame_rate_hz")
    deduped = kind == "durations" or (kind == "units" and f"{name}-durations" in declared)
    if duration_s is not None and rate and not deduped and array.ndim >= 1 and kind in ("codes", "units", "vectors"):
        expected = duration_s * float(rate)
        frames = _frames(list(array.shape), kind)
        if abs(frames - expected) > max(2.0, 0.01 * expected):
            out.append(Problem(FRAME_COUNT, f"{name}: {frames} frames for {duration_s} s at {rate} Hz "
                                            f"(expected about {expected:.1f})"))
    return out


# ---------------------------------------------------------------------------- one shard


def _resolve(output: str, rel: str) -> str:
    return rel if "://" in rel or rel.startswith("/") else storage.join(output, rel)


def _file_size_ok(url: str, expected: Any, problem) -> bool:
    """Whether the file exists (a problem otherwise); its size against the index's."""
    try:
        fs, path = storage.filesystem(url)
        size = int(fs.size(path))
    except (FileNotFoundError, OSError):
        problem(MISSING_FILE, "listed in the index; no such file")
        return False
    if size != expected:
        problem(SIZE_MISMATCH, f"{size} bytes; the index says {expected}")
    return True


def _tar_members(url: str, problem) -> Iterator[tuple[str, str, bytes]]:
    """(key, suffix, data) of each well-formed member of a tar, in order; what is wrong with
    the tar or a member goes to ``problem(code, message, key="")``."""
    try:
        with storage.open_input(url) as f:
            tar = tarfile.open(fileobj=f, mode="r:")
            for member in tar:
                try:
                    filtered = tarfile.data_filter(member, "/nonexistent-extraction-root")
                except tarfile.FilterError as e:
                    problem(UNSAFE_MEMBER, f"{member.name!r}: refused by tarfile's data filter ({e})")
                    continue
                if filtered.name != member.name:  # e.g. an absolute name the filter would strip
                    problem(UNSAFE_MEMBER, f"{member.name!r}: tarfile's data filter would extract it as "
                                           f"{filtered.name!r}")
                    continue
                if not member.isreg():
                    problem(UNSAFE_MEMBER, f"{member.name!r}: not a regular file (type {member.type!r})")
                    continue
                m = _MEMBER.match(member.name)
                if not m:
                    problem(BAD_MEMBER_NAME, f"{member.name!r}: expected KEY.json or KEY.<stream>.npy")
                    continue
                key, suffix = m.group("key"), m.group("suffix")
                try:
                    dataset.check_key(key)
                except ValueError as e:
                    problem(BAD_MEMBER_NAME, str(e))
                    continue
                yield key, suffix, tar.extractfile(member).read()
            end = tar.offset
            # tarfile stops quietly at a header it cannot parse after the first one: whatever
            # follows the end of the archive must be zero blocks.
            f.seek(end)
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                if chunk.count(0) != len(chunk):
                    problem(TAR_CORRUPT, f"unreadable data after byte {end}: a corrupt header ends the archive early")
                    break
    except (tarfile.TarError, EOFError, OSError) as e:
        problem(TAR_CORRUPT, f"tar does not read to its end: {type(e).__name__}: {e}")


def check_shard(output: str, row: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]]) -> ShardReport:
    """Reads one shard end to end, and its vector shard when it has one (see the module doc for
    what is checked).

    Samples of the row's ``excluded_sources`` (superseded by a later run) are checked like the
    others but do not count as live.
    """
    excluded = set(row.get("excluded_sources", []))
    rel = row.get("url", "")
    vrel = row.get("vectors_url", "")
    vectors = dataset.vector_streams(specs)
    report = ShardReport(url=rel)

    def problem(code: str, message: str, key: str = "") -> None:
        report.problems.append(Problem(code, message, rel, key))

    def vector_problem(code: str, message: str, key: str = "") -> None:
        report.problems.append(Problem(code, message, vrel, key))

    if not _file_size_ok(_resolve(output, rel), row.get("bytes"), problem):
        return report
    vector_members: Iterator[tuple[str, str, bytes]] = iter(())
    if vrel and _file_size_ok(_resolve(output, vrel), row.get("vectors_bytes"), vector_problem):
        vector_members = _tar_members(_resolve(output, vrel), vector_problem)
    pending = next(vector_members, None)

    seen: dict[str, set[str]] = {}  # key -> member suffixes read so far
    current_key: str | None = None
    current: dict[str, bytes] = {}

    def finish_sample() -> None:
        nonlocal pending
        if current_key is None:
            return
        if current_key in seen:
            if seen[current_key] & set(current):
                problem(DUPLICATE_KEY, "the key occurs twice in this shard", current_key)
            else:
                problem(SPLIT_SAMPLE, "the sample's members are not adjacent in the tar", current_key)
        seen.setdefault(current_key, set()).update(current)
        if vrel:
            for suffix in current:
                if dataset.member_stream(f"{current_key}.{suffix}") in vectors:
                    problem(EXTRA_MEMBER, f"vector stream member {current_key}.{suffix} in the shard; this "
                                          f"shard's vector streams belong in {vrel}", current_key)
        while pending is not None and pending[0] == current_key:
            _, suffix, data = pending
            if dataset.member_stream(f"{current_key}.{suffix}") not in vectors:
                vector_problem(EXTRA_MEMBER, f"{current_key}.{suffix} in the vector shard, which holds only the "
                                             f"vector streams ({', '.join(sorted(vectors)) or 'none'})", current_key)
            elif suffix in current:
                vector_problem(DUPLICATE_KEY, f"member {current_key}.{suffix} occurs twice", current_key)
            else:
                current[suffix] = data
            pending = next(vector_members, None)
        meta, arrays, problems = check_sample(current_key, current, specs, rel)
        live = dataset.source_of_key(current_key) not in excluded
        # Superseded samples may come from the tokenizers of an earlier run.
        report.problems.extend(p for p in problems if live or p.code != FINGERPRINT_MISMATCH)
        report.keys.append(current_key)
        if live:
            report.live_keys.append(current_key)
        try:
            duration_s = float(meta.get("duration_s", 0.0)) if meta is not None else 0.0
        except (TypeError, ValueError):
            duration_s = 0.0
        report.audio_s += duration_s
        report.live_audio_s += duration_s if live else 0.0
        for name, n in dataset.count_tokens(arrays, specs).items():
            report.tokens[name] = report.tokens.get(name, 0) + n
            if live:
                report.live_tokens[name] = report.live_tokens.get(name, 0) + n

    for key, suffix, data in _tar_members(_resolve(output, rel), problem):
        if key != current_key:
            finish_sample()
            current_key, current = key, {}
        if suffix in current:
            problem(DUPLICATE_KEY, f"member {key + '.' + suffix!r} occurs twice in this sample", key)
            continue
        current[suffix] = data
    finish_sample()
    if pending is not None:
        vector_problem(SPLIT_SAMPLE, "the vector shard holds a sample its shard does not hold, or not in the same "
                                     "order", pending[0])
        for _ in vector_members:
            pass  # the rest of the tar is still checked for corruption

    if len(report.keys) != row.get("samples"):
        problem(INDEX_MISMATCH, f"holds {len(report.keys)} samples; the index says {row.get('samples')}")
    if abs(report.audio_s - float(row.get("audio_s", 0.0))) > 1e-3 + 1e-6 * len(report.keys):
        problem(INDEX_MISMATCH, f"holds {report.audio_s:.6f} s of audio; the index says {row.get('audio_s')}")
    listed = dict(row.get("tokens", {}))
    for name in sorted(set(listed) | set(report.tokens)):
        if listed.get(name, 0) != report.tokens.get(name, 0):
            problem(INDEX_MISMATCH, f"holds {report.tokens.get(name, 0)} {name} tokens; the index says "
                                    f"{listed.get(name, 0)}")
    live_samples = row.get("live_samples", row.get("samples"))
    if len(report.live_keys) != live_samples:
        problem(INDEX_MISMATCH, f"holds {len(report.live_keys)} live samples; the index says {live_samples}")
    return report


# ---------------------------------------------------------------------------- the dataset


def check_index(output: str, index: Mapping[str, Any]) -> list[Problem]:
    """The index against itself, its state file, and the files under ``shards/``.

    Shard rows count every sample a shard holds (``samples``, ``audio_s``, ``tokens``) and
    the live ones (``live_samples``); totals count live samples (``verify_dataset`` compares
    them with what the shards hold).
    """
    problems: list[Problem] = []

    def problem(code: str, message: str, where: str = dataset.INDEX_NAME) -> None:
        problems.append(Problem(code, message, where))

    if index.get("format") != dataset.INDEX_FORMAT:
        problem(INDEX_UNREADABLE, f"format {index.get('format')!r}; expected {dataset.INDEX_FORMAT!r}")
    if index.get("version") not in dataset.READABLE_INDEX_VERSIONS:
        problem(INDEX_UNREADABLE, f"version {index.get('version')!r}; this audiotok reads "
                                  f"{', '.join(map(str, dataset.READABLE_INDEX_VERSIONS))}")
        return problems
    try:
        rows = list(dataset.shard_rows(output, index))
    except (FileNotFoundError, OSError, ValueError, KeyError) as e:
        problem(MISSING_FILE, f"a rows part file does not read: {type(e).__name__}: {e}")
        rows = []
    totals = index.get("totals", {})
    urls = [r.get("url") for r in rows]
    for url in sorted({u for u in urls if urls.count(u) > 1}):
        problem(INDEX_MISMATCH, f"shard {url} is listed {urls.count(url)} times")
    for r in rows:
        live, n = r.get("live_samples", r.get("samples")), r.get("samples")
        if not isinstance(live, int) or not isinstance(n, int) or not 0 <= live <= n \
                or (live != n and not r.get("excluded_sources")):
            problem(INDEX_MISMATCH, f"{live} live of {n} samples, excluded sources {r.get('excluded_sources')}",
                    r.get("url", dataset.INDEX_NAME))
    sums = {
        "shards": len(rows),
        "bytes": sum(int(r.get("bytes", 0)) + int(r.get("vectors_bytes", 0)) for r in rows),
        "samples": sum(int(r.get("live_samples", r.get("samples", 0))) for r in rows),
    }
    for field, value in sums.items():
        if totals.get(field) != value:
            problem(INDEX_MISMATCH, f"totals.{field} is {totals.get(field)}; the shard rows add up to {value}")
    for name in sorted(set(totals.get("tokens", {})) - set(index.get("streams", {}))):
        problem(UNKNOWN_STREAM, f"totals count tokens of stream {name!r}, which the index's streams lack")
    if index.get("state") or dataset.layout(index):
        try:
            inputs = sum(1 for _, entry in dataset.state_entries(output, index) if "fingerprint" in entry)
            if "inputs" in totals and totals["inputs"] != inputs:
                problem(INDEX_MISMATCH, f"totals.inputs is {totals['inputs']}; the state lists {inputs}")
        except (FileNotFoundError, OSError, ValueError, KeyError) as e:
            problem(MISSING_FILE, f"the state does not read: {type(e).__name__}: {e}")
    shard_dir = storage.join(output, dataset.SHARDS_DIR)
    if storage.exists(shard_dir):
        listed = {u.rstrip("/") for u in urls if u} | {r["vectors_url"] for r in rows if r.get("vectors_url")}
        for found, _ in storage.list_files(storage.join(shard_dir, "**")):
            if not found.endswith(".tar"):
                continue
            rel = posixpath.join(dataset.SHARDS_DIR, posixpath.relpath(found.replace(os.sep, "/"),
                                                                      shard_dir.replace(os.sep, "/")))
            if rel not in listed:
                problem(UNLISTED_SHARD, "a shard file the index does not list (all its samples superseded, "
                                        "or left over)", rel)
    return problems


def _run_of(url: str) -> int | None:
    """The dataset version of a ``failures/vNNNNNN/...`` file."""
    m = re.match(r"^[^/]+/v(\d+)/", url)
    return int(m.group(1)) if m else None


def check_failures(output: str, index: Mapping[str, Any]) -> list[Problem]:
    """Dead-letter files against their index rows, and the live failure totals.

    A record is live by :func:`audiotok.transforms.dataset.failure_is_live` (the rule the
    totals are published by).
    """
    problems: list[Problem] = []
    records: list[tuple[int | None, str, str]] = []  # (run, uri, reason)
    try:
        rows = list(dataset.failure_rows(output, index))
    except (FileNotFoundError, OSError, ValueError, KeyError):
        rows = []  # reported by check_index
    for row in rows:
        rel = row.get("url", "")
        try:
            lines = [l for l in storage.read_bytes(storage.join(output, rel)).decode("utf-8").splitlines() if l.strip()]
        except (FileNotFoundError, OSError):
            problems.append(Problem(MISSING_FILE, "listed in the index; no such file", rel))
            continue
        if len(lines) != row.get("records"):
            problems.append(Problem(FAILURES_MISMATCH,
                                    f"holds {len(lines)} records; the index says {row.get('records')}", rel))
        reasons: dict[str, int] = {}
        run = _run_of(rel)
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
                if not rec.get("uri") or not rec.get("reason"):
                    raise KeyError("uri and reason")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                problems.append(Problem(FAILURES_MISMATCH, f"line {i + 1} is not a failure record ({e})", rel))
                continue
            reasons[rec["reason"]] = reasons.get(rec["reason"], 0) + 1
            records.append((run, rec["uri"], rec["reason"]))
        if "reasons" in row and dict(row["reasons"]) != dict(sorted(reasons.items())):
            problems.append(Problem(FAILURES_MISMATCH, f"holds reasons {dict(sorted(reasons.items()))}; the index "
                                                       f"says {row['reasons']}", rel))
    # Only the state lines of what the records name are held, whatever the size of the state.
    named = {dataset.input_identity(uri) for _, uri, _ in records}
    entries: dict[str, Any] | None = {}
    try:
        for uri, entry in dataset.state_entries(output, index):
            identity = dataset.input_identity(uri)
            if identity in named:
                entries[identity] = entry
    except (FileNotFoundError, OSError, ValueError, KeyError):
        entries = None  # reported by check_index
    live: dict[str, int] = {}
    for run, uri, reason in records:
        if entries is None or dataset.failure_is_live(run, entries.get(dataset.input_identity(uri)),
                                                      index.get("dataset_version")):
            live[reason] = live.get(reason, 0) + 1
    totals = index.get("totals", {})
    live = dict(sorted(live.items()))
    if totals.get("failures", 0) != sum(live.values()):
        problems.append(Problem(FAILURES_MISMATCH, f"totals.failures is {totals.get('failures')}; the failure files "
                                                   f"hold {sum(live.values())} live records", dataset.INDEX_NAME))
    if dict(totals.get("failures_by_reason", {})) != live:
        problems.append(Problem(FAILURES_MISMATCH, f"totals.failures_by_reason is {totals.get('failures_by_reason')}; "
                                                   f"the failure files hold {live}", dataset.INDEX_NAME))
    return problems


def check_vocab(output: str, index: Mapping[str, Any]) -> list[Problem]:
    """``vocab.json``, when present, against the vocabulary of the index's streams."""
    url = storage.join(output, lm.VOCAB_NAME)
    if not storage.exists(url):
        return []
    try:
        found = json.loads(storage.read_bytes(url))
        lm.VocabSpec.from_dict(found)
    except (ValueError, KeyError, TypeError) as e:
        return [Problem(VOCAB_MISMATCH, f"does not parse: {e}", lm.VOCAB_NAME)]
    expected = lm.build_vocab(index.get("streams", {})).to_dict()
    if found != json.loads(json.dumps(expected)):
        return [Problem(VOCAB_MISMATCH, "differs from the vocabulary of the index's streams "
                                        f"(size {found.get('size')} vs {expected['size']})", lm.VOCAB_NAME)]
    return []


def verify_dataset(output: str, workers: int = 4) -> Report:
    """Checks a whole dataset; see the module doc.

    Args:
        output: the dataset folder (any fsspec URL).
        workers: shards checked at once (threads).
    """
    report = Report(output=output)
    try:
        index = dataset.read_index(output)
    except (FileNotFoundError, OSError, ValueError) as e:
        report.problems.append(Problem(INDEX_UNREADABLE, f"{type(e).__name__}: {e}", dataset.INDEX_NAME))
        return report
    report.problems += check_index(output, index)
    specs = index.get("streams", {})
    try:
        rows = list(dataset.shard_rows(output, index))
    except (FileNotFoundError, OSError, ValueError, KeyError):
        rows = []  # reported by check_index
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        shard_reports = list(pool.map(lambda r: check_shard(output, r, specs), rows))
    first_seen: dict[str, str] = {}
    live_audio_s = 0.0
    live_tokens: dict[str, int] = {}
    for sr in shard_reports:
        report.problems += sr.problems
        report.samples += len(sr.live_keys)
        live_audio_s += sr.live_audio_s
        for name, n in sr.live_tokens.items():
            live_tokens[name] = live_tokens.get(name, 0) + n
        for key in dict.fromkeys(sr.live_keys):  # duplicates within a shard are reported by check_shard
            if key in first_seen:
                report.problems.append(Problem(DUPLICATE_KEY, f"also in {first_seen[key]}", sr.url, key))
            else:
                first_seen[key] = sr.url
    report.shards = len(shard_reports)
    totals = index.get("totals", {})
    if totals.get("samples") != report.samples:
        report.problems.append(Problem(INDEX_MISMATCH, f"totals.samples is {totals.get('samples')}; the shards hold "
                                                       f"{report.samples} live samples", dataset.INDEX_NAME))
    if abs(float(totals.get("audio_s", 0.0)) - live_audio_s) > 1e-3 + 1e-6 * report.samples:
        report.problems.append(Problem(INDEX_MISMATCH, f"totals.audio_s is {totals.get('audio_s')}; the shards hold "
                                                       f"{live_audio_s:.3f} s of live audio", dataset.INDEX_NAME))
    if dict(totals.get("tokens", {})) != dict(sorted(live_tokens.items())):
        report.problems.append(Problem(INDEX_MISMATCH, f"totals.tokens is {totals.get('tokens')}; the shards hold "
                                                       f"{dict(sorted(live_tokens.items()))}", dataset.INDEX_NAME))
    report.problems += check_failures(output, index)
    report.problems += check_vocab(output, index)
    return report


def format_report(report: Report, strict: bool = False, max_per_code: int = 20) -> str:
    """The report as text: a summary line, then the problems, at most ``max_per_code`` of each code."""
    errors = report.errors(strict)
    warnings = [p for p in report.problems if not strict and p.is_warning]
    head = (f"audiotok verify: {report.output}: {report.shards} shard(s), {report.samples} sample(s) checked: "
            + (f"{len(errors)} problem(s)" if errors else "OK")
            + (f", {len(warnings)} warning(s)" if warnings else ""))
    lines = [head]
    for prefix, problems in (("", errors), ("warning ", warnings)):
        shown: dict[str, int] = {}
        for p in problems:
            shown[p.code] = shown.get(p.code, 0) + 1
            if shown[p.code] <= max_per_code:
                lines.append(f"  {prefix}{p}")
        lines += [f"  ... and {n - max_per_code} more {prefix}{code}" for code, n in shown.items() if n > max_per_code]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiotok verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the dataset folder (holding index.json); any fsspec URL")
    parser.add_argument("--workers", type=int, default=4, help="shards checked at once (default 4)")
    parser.add_argument("--strict", action="store_true", help="warnings fail the check too")
    parser.add_argument("--json", action="store_true", help="print every problem as a JSON line")
    parser.add_argument("--max-per-code", dest="max_per_code", type=int, default=20,
                        help="problems listed per code at most (default 20); --json lists all")
    args = parser.parse_args(argv)
    report = verify_dataset(args.output, workers=args.workers)
    if args.json:
        for p in report.problems:
            print(json.dumps({**dataclasses.asdict(p), "warning": p.is_warning}, sort_keys=True))
    else:
        print(format_report(report, args.strict, args.max_per_code))
    return 0 if report.ok(args.strict) else 1


if __name__ == "__main__":
    sys.exit(main())
