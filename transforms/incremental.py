"""The dataset's state across runs: what was processed, what changed, what is live.

Every run publishes a new dataset version: its shards under ``shards/vNNNNNN/``, the state as
part files ``state/vNNNNNN/state-PPPPP.jsonl`` (one line per input: size, the store's version
marker, the settings fingerprint, and where its samples went), then ``index.json`` last, in
one small write. Shards are never rewritten: samples of inputs that changed or disappeared are
excluded from the live index by their source hash (``excluded_sources`` of a shard row; the
hash is the middle part of every key ``STEM-SOURCEHASH-MS``). ``compact`` rewrites a dataset
into fresh full shards.

A state line is keyed by a URI and holds facets: the input's entry (with a ``fingerprint``),
``deleted`` (the version that found it gone), ``pending`` (the run that could not read it,
transiently: the next refresh tries again) and ``unlisted`` (dead letters of something that is
no input: a pattern matching nothing, a bad manifest line, a refused file; carried while they
repeat). ``dataset.failure_is_live`` reads a URI's line to tell which dead letters count.

Nothing here holds the whole corpus in one place. Inputs are spread over ``parts`` by a hash
of their identity (``dataset.order_key``): the listing is written as sorted runs
(:func:`write_run`), each part of the previous state is joined with the same part of every
run, streamed (:func:`merge_inputs`, :func:`join_part`: both sides are sorted the same way),
into a draft of the part's next state written under the run's temp folder (unchanged lines as
they were, selected inputs pending their samples); the part's next state is finished by one
worker once the shards are written (:func:`finish_part`). The inputs to process go to a file
per part too; the runner carries ranges of files (a batch of inputs, a spill file's section
for a shard writer, a file's section of what the shards hold for a state part), never an
element per input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import json
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam

from audiotok.transforms import dataset, metrics, storage
from audiotok.transforms.records import AudioRef

STATE_FORMAT = "audiotok-state"
STATE_VERSION = 2

# Inputs per state part a run aims at (a part is joined, and written, by one worker).
TARGET_INPUTS_PER_PART = 50_000
# Selected inputs per element spread over the workers: few enough that one element's audio is
# a fair share of work, many enough that the runner carries few elements.
SELECT_BATCH_INPUTS = 32
SELECT_BATCH_BYTES = 256 << 20

def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """16 hex characters over the decode, segmentation and tokenizer settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def meta_hash(ref: AudioRef) -> str:
    return hashlib.sha256(json.dumps(dict(ref.meta), sort_keys=True).encode()).hexdigest()[:12] if ref.meta else ""


def needs_processing(ref: AudioRef, entry: Mapping[str, Any] | None, fingerprint: str) -> str | None:
    """Why ``ref`` must be (re)processed (``new``, ``changed``, ``settings``), or None when it is up to date."""
    if entry is None:
        return "new"
    if entry.get("fingerprint") != fingerprint:
        return "settings"
    if (entry.get("size"), entry.get("version"), entry.get("meta", "")) != (ref.size_bytes, ref.version, meta_hash(ref)):
        return "changed"
    return None


def choose_parts(n_inputs: int, previous_parts: int = 0) -> int:
    """How many state parts a run with ``n_inputs`` listed inputs uses: a power of two near
    ``n_inputs / TARGET_INPUTS_PER_PART``. The previous layout is kept unless it is far off (a
    refresh that changes nothing must not rewrite the state just to re-partition it)."""
    if previous_parts and (n_inputs <= 4 * TARGET_INPUTS_PER_PART * previous_parts) and (
            previous_parts == 1 or n_inputs * 8 >= TARGET_INPUTS_PER_PART * previous_parts):
        return previous_parts
    want = max(1, math.ceil(n_inputs / TARGET_INPUTS_PER_PART))
    return min(dataset.SLOTS, 1 << (want - 1).bit_length())


# ---------------------------------------------------------------------------- lines


def ref_line(ref: AudioRef, order: Sequence[int] | None = None) -> str:
    """An input as one JSON line (listing runs, selected batches); ``order``: where the listing
    found it (``o``: which of the URIs naming one input is read, :func:`merge_inputs`)."""
    record: dict[str, Any] = {"uri": ref.uri, "size": ref.size_bytes, "version": ref.version}
    if ref.meta:
        record["meta"] = dict(ref.meta)
    if order is not None:
        record["o"] = list(order)
    return json.dumps(record, sort_keys=True)


def ref_from_line(line: str) -> AudioRef:
    record = json.loads(line)
    return AudioRef(uri=record["uri"], size_bytes=record.get("size"), version=record.get("version"),
                    meta=record.get("meta") or {})


def entry_line(uri: str, entry: Mapping[str, Any]) -> str:
    """A state line: the input's URI and its entry."""
    return json.dumps({"uri": uri, **entry}, sort_keys=True)


def uri_of_line(line: str) -> str:
    return json.loads(line)["uri"]


# ---------------------------------------------------------------------------- listing runs


@dataclasses.dataclass(frozen=True)
class Run:
    """A file of JSON lines sorted by ``dataset.order_key`` of their URI: one lister's inputs
    (``kind="listed"``), or a previous state carried over from index version 1 (``"previous"``).

    Attributes:
        url: where it is.
        kind: ``listed`` or ``previous``.
        count: lines.
        size: bytes.
        slots: ``(slot, byte offset of the slot's first line)`` for each slot present, ascending.
    """

    url: str
    kind: str
    count: int
    size: int
    slots: tuple[tuple[int, int], ...]

    def ranges(self, parts: int) -> Iterator[tuple[int, int, int]]:
        """``(part, start, end)``: the bytes of the run that belong to each part present."""
        bounds = [*self.slots, (dataset.SLOTS, self.size)]
        current, start = None, 0
        for (slot, offset), _ in zip(bounds, bounds[1:]):
            part = dataset.part_of(slot, parts)
            if part != current:
                if current is not None:
                    yield current, start, offset
                current, start = part, offset
        if current is not None:
            yield current, start, self.size


def write_run(url: str, kind: str, lines: Iterable[tuple[str, str]]) -> Run:
    """Writes ``(uri, line)`` pairs as a run (sorted by the URI's order key, then the line)."""
    ordered = sorted(((dataset.order_key(uri), line) for uri, line in lines))
    offsets: list[tuple[int, int]] = []
    chunks, size = [], 0
    for (slot, _), line in ordered:
        if not offsets or offsets[-1][0] != slot:
            offsets.append((slot, size))
        data = (line + "\n").encode("utf-8")
        chunks.append(data)
        size += len(data)
    storage.write_bytes(url, b"".join(chunks))
    return Run(url=url, kind=kind, count=len(ordered), size=size, slots=tuple(offsets))


def read_lines(url: str, start: int, end: int) -> list[str]:
    """The lines in bytes ``[start, end)`` of a file of JSON lines (a run, a batch of selected inputs)."""
    return [line for line in storage.read_range(url, start, end).decode("utf-8").split("\n") if line]


# ---------------------------------------------------------------------------- the join


DRAFT = "_draft"  # the part of a draft line the next state's writer resolves (never published)


def is_input(entry: Mapping[str, Any] | None) -> bool:
    """Whether a state line holds an input's entry (besides, or instead of, other facets)."""
    return entry is not None and "fingerprint" in entry


def input_facet(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A state line's input entry, without the URI and the other facets."""
    return {k: v for k, v in entry.items() if k not in ("uri", "deleted", "pending", "unlisted", DRAFT)}


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a run does with one URI of a part.

    ``kind``: ``carry`` (an unchanged input: its previous line goes on), ``select`` (processed
    this run, for ``reason``), ``delete`` (an input listed no more), ``keep`` (no input: a
    previous line of other facets, e.g. deleted earlier or a dead letter that names no input),
    ``skip`` (listed, not selected, never processed: not recorded).
    ``previous``: the URI's previous state line, when it had one.
    """

    kind: str
    uri: str
    ref: AudioRef | None = None
    previous: Mapping[str, Any] | None = None
    reason: str | None = None
    duplicates: int = 0


def _keyed(lines: Iterable[str]) -> Iterator[tuple[tuple[int, str], dict]]:
    """``(order key, record)`` of JSON lines that name a ``uri``: each line parsed once."""
    for line in lines:
        record = json.loads(line)
        yield dataset.order_key(record["uri"]), record


def merge_keyed(*streams: Iterable[str]) -> Iterator[tuple[tuple[int, str], dict]]:
    """Sorted streams of JSON lines merged into one, by their URI's order key (ties in stream order)."""
    if len(streams) == 1:
        return _keyed(streams[0])
    return heapq.merge(*(_keyed(s) for s in streams), key=lambda kr: kr[0])


def _as_keyed(lines) -> Iterator[tuple[tuple[int, str], dict]]:
    """Lines, or already keyed ``(key, record)`` tuples, as keyed tuples."""
    it = iter(lines)
    first = next(it, None)
    if first is None:
        return iter(())
    if isinstance(first, tuple):
        return itertools.chain([first], it)
    return _keyed(itertools.chain([first], it))


def merge_inputs(listed, previous, select: Callable[[AudioRef, Mapping[str, Any] | None], str | None]
                 ) -> Iterator[Decision]:
    """Joins one part of the listing with the same part of the previous state.

    Args:
        listed: ref lines (:func:`ref_line`) sorted by ``dataset.order_key`` of their URI (or
            :func:`merge_keyed` of several such streams). URIs naming one input (by
            ``dataset.input_identity``: listed twice by overlapping patterns, a pattern and a
            manifest, a manifest twice) count once: the first occurrence (``o``: manifests in
            the order given, line by line, then patterns), the others as duplicates.
        previous: state lines of the part, sorted the same way (or :func:`merge_keyed` of them).
        select: why an input must be processed given its previous entry (None: it need not).

    Yields:
        One :class:`Decision` per input identity, in order.
    """
    keyed_previous = _as_keyed(previous)
    prev = next(keyed_previous, None)
    for key, group in itertools.groupby(_as_keyed(listed), key=lambda kr: kr[0]):
        records = [record for _, record in group]
        while prev is not None and prev[0] < key:
            yield _absent(prev[1])
            prev = next(keyed_previous, None)
        record = min(records, key=lambda r: r.get("o", ()))
        ref = AudioRef(uri=record["uri"], size_bytes=record.get("size"), version=record.get("version"),
                       meta=record.get("meta") or {})
        line = None
        if prev is not None and prev[0] == key:
            line = prev[1]
            prev = next(keyed_previous, None)
        entry = line if is_input(line) else None
        reason = select(ref, entry)
        kind = "select" if reason else "carry" if entry is not None else "keep" if line is not None else "skip"
        yield Decision(kind, ref.uri, ref=ref, previous=line, reason=reason, duplicates=len(records) - 1)
    while prev is not None:
        yield _absent(prev[1])
        prev = next(keyed_previous, None)


def _absent(line: Mapping[str, Any]) -> Decision:
    return Decision("delete" if is_input(line) else "keep", line["uri"], previous=line)


def draft_line(decision: Decision, version: int, fingerprint: str) -> dict[str, Any] | None:
    """The line a decision leaves in the part's draft (None: the URI is not recorded).

    A selected input's line is resolved by :func:`finish_part` (what it produced, its dead
    letters, whether they were transient); a deleted input's line still names its samples, for
    them to be excluded there.
    """
    prev = decision.previous
    if decision.kind == "carry":
        return {k: v for k, v in prev.items() if k != "pending"}  # unchanged: nothing to retry
    if decision.kind == "select":
        ref = decision.ref
        entry = {"size": ref.size_bytes, "version": ref.version, "meta": meta_hash(ref), "fingerprint": fingerprint,
                 "run": version}
        return {"uri": ref.uri, DRAFT: {"entry": entry, "previous": prev}}
    if decision.kind == "delete":
        line = {"uri": decision.uri, "deleted": version, DRAFT: {"stale": input_facet(prev)}}
        if "unlisted" in prev:
            line["unlisted"] = prev["unlisted"]
        return line
    if decision.kind == "keep":
        # Listed again without being processed (only where the caller chooses what to
        # process), or absent: its other facets go on; a pending retry of an input gone does not.
        line = {k: v for k, v in prev.items() if k != "pending"}
        return line if len(line) > 1 else None
    return None


def stale_exclusions(entry: Mapping[str, Any]) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """``(shard url, source hashes, samples)`` of a superseded entry: what its shards' rows lose."""
    sources = tuple(entry.get("sources", []))
    for shard, n in sorted(entry.get("shards", {}).items()):
        yield shard, sources, int(n)


def unlisted_summary(records: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """What an ``unlisted`` facet keeps of a URI's dead letters: ``[[reason, message], ...]``, sorted."""
    return sorted([r["reason"], r.get("message", "")] for r in records)


def apply_unlisted(draft: Iterable[dict], records: Iterable[Mapping[str, Any]], version: int
                   ) -> tuple[list[dict], list[Mapping[str, Any]], bool]:
    """Dead letters that name no input (a pattern matching nothing, a bad manifest line, a file
    refused when listed) come back every run: those the same as last run's are carried in the
    ``unlisted`` facet of their URI's line, not published again.

    Args:
        draft: a part's draft lines (dicts), in order.
        records: this run's match-stage records of the part (``uri``, ``reason``, ``message``).
        version: this run's dataset version.

    Returns:
        (the draft with its ``unlisted`` facets updated, the records to publish: those of URIs
        whose records changed, whether any facet changed).
    """
    by_uri: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    uris: dict[tuple[int, str], str] = {}
    for record in records:
        key = dataset.order_key(record["uri"])
        by_uri.setdefault(key, []).append(record)
        uris.setdefault(key, record["uri"])
    failed = sorted(by_uri)
    out, publish, changed, i = [], [], False, 0

    def facet(key, line):
        nonlocal changed
        found = by_uri[key]
        summary = unlisted_summary(found)
        before = line.get("unlisted")
        if before is not None and before.get("records") == summary:
            line["unlisted"] = before
        else:
            line["unlisted"] = {"run": version, "records": summary}
            publish.extend(found)
            changed = True
        return line

    for line in draft:
        key = dataset.order_key(line["uri"])
        while i < len(failed) and failed[i] < key:
            out.append(facet(failed[i], {"uri": uris[failed[i]]}))
            i += 1
        if i < len(failed) and failed[i] == key:
            out.append(facet(key, line))
            i += 1
            continue
        if "unlisted" in line:  # its dead letters are gone
            changed = True
            line = {k: v for k, v in line.items() if k != "unlisted"}
            if len(line) == 1:
                continue
        out.append(line)
    for key in failed[i:]:
        out.append(facet(key, {"uri": uris[key]}))
    return out, publish, changed


@dataclasses.dataclass
class JoinedPart:
    """One part's join (:func:`join_part`).

    Attributes:
        draft: the lines of the part's next state (dicts), selected inputs pending.
        summary: the summary of the lines that are final already (all but the pending ones).
        selected: the inputs to process.
        publish: this run's match-stage dead letters of the part that are new (the rest are carried).
        changed: whether the part's state must be written (otherwise ``reuse`` is it).
        reuse: the previous part file that is this part's state ("" for none), when unchanged.
        counters: ``inputs_<why>`` -> inputs.
    """

    draft: list[dict]
    summary: dict[str, Any]
    selected: list[AudioRef]
    publish: list[Mapping[str, Any]]
    changed: bool
    reuse: str | None
    counters: dict[str, int]


def join_part(listed, previous, select: Callable[[AudioRef, Mapping[str, Any] | None], str | None],
              version: int, fingerprint: str, part: int, parts: int, prev: "Previous | None",
              match_records: Iterable[Mapping[str, Any]] = ()) -> JoinedPart:
    """Joins one part of the listing with the previous state (:func:`merge_inputs`) into the
    part's draft and its inputs to process, and carries the part's unchanged match-stage dead
    letters (:func:`apply_unlisted`)."""
    # A first run always publishes; a refresh rewrites a part that changed, and every part when
    # the layout changes (another number of parts, or the one state file of index version 1).
    reuse = prev.reusable(part, parts) if prev is not None else None
    joined = JoinedPart([], empty_summary(), [], [], reuse is None, None, {})
    draft = []
    for d in merge_inputs(listed, previous, select):
        counter = {"carry": "inputs_unchanged", "delete": "inputs_deleted", "select": f"inputs_{d.reason}"}.get(d.kind)
        for name, n in ((counter, 1), ("inputs_duplicate", d.duplicates)):
            if name and n:
                joined.counters[name] = joined.counters.get(name, 0) + n
        line = draft_line(d, version, fingerprint)
        if d.kind in ("select", "delete") or (d.previous is not None and line != d.previous):
            joined.changed = True
        if d.kind == "select":
            joined.selected.append(d.ref)
        if line is not None:
            draft.append(line)
    joined.draft, joined.publish, unlisted_changed = apply_unlisted(draft, match_records, version)
    joined.changed = joined.changed or unlisted_changed
    for line in joined.draft:
        if DRAFT not in line:
            add_to_summary(joined.summary, line)
        elif "deleted" in line:
            joined.summary["deleted"] += 1
    if not joined.changed:
        joined.reuse = reuse
    return joined


# ---------------------------------------------------------------------------- the next state


def empty_summary() -> dict[str, Any]:
    return {"inputs": 0, "deleted": 0, "samples": 0, "audio_s": 0.0, "tokens": {}, "failures_by_reason": {}}


def live_reasons(entry: Mapping[str, Any]) -> dict[str, int]:
    """The reasons of the dead letters of a state line that still count
    (``dataset.failure_is_live``): a pending retry's, else the unlisted records', else the input's."""
    if "pending" in entry:
        return dict(entry["pending"].get("reasons", {}))
    if "unlisted" in entry:
        reasons: dict[str, int] = {}
        for reason, _ in entry["unlisted"].get("records", []):
            reasons[reason] = reasons.get(reason, 0) + 1
        return reasons
    return dict(entry.get("reasons", {})) if is_input(entry) else {}


def add_to_summary(summary: dict[str, Any], entry: Mapping[str, Any]) -> None:
    """Counts one state line into a part's summary."""
    if "deleted" in entry:
        summary["deleted"] += 1
    if is_input(entry):
        summary["inputs"] += 1
        summary["samples"] += int(entry.get("samples", 0))
        summary["audio_s"] = round(summary["audio_s"] + float(entry.get("audio_s", 0.0)), 6)
        for name, n in entry.get("tokens", {}).items():
            summary["tokens"][name] = summary["tokens"].get(name, 0) + n
    for reason, n in live_reasons(entry).items():
        summary["failures_by_reason"][reason] = summary["failures_by_reason"].get(reason, 0) + n


def merge_summaries(summaries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    total = empty_summary()
    for s in summaries:
        total["inputs"] += s["inputs"]
        total["deleted"] += s["deleted"]
        total["samples"] += s["samples"]
        total["audio_s"] = round(total["audio_s"] + s["audio_s"], 6)
        for field in ("tokens", "failures_by_reason"):
            for name, n in s[field].items():
                total[field][name] = total[field].get(name, 0) + n
    return total


def produced_by_uri(contributions: Iterable[tuple[str, str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """What each input's samples became, from ``(shard url, source hash, stats)`` of the shards
    written this run (stats: ``uri``, ``samples``, ``audio_s``, ``tokens``); summed in a fixed
    order, whatever order the shards were written in."""
    out: dict[str, dict[str, Any]] = {}
    for shard, source, stats in sorted(contributions, key=lambda c: (c[0], c[1])):
        entry = out.setdefault(stats["uri"], {"sources": [], "shards": {}, "samples": 0, "audio_s": 0.0,
                                              "tokens": {}})
        if source not in entry["sources"]:
            entry["sources"].append(source)
        entry["shards"][shard] = entry["shards"].get(shard, 0) + stats["samples"]
        entry["samples"] += stats["samples"]
        entry["audio_s"] = round(entry["audio_s"] + stats["audio_s"], 6)
        for name, n in stats["tokens"].items():
            entry["tokens"][name] = entry["tokens"].get(name, 0) + n
    return out


def finish_part(draft: Iterable[Mapping[str, Any]], produced: Mapping[str, Mapping[str, Any]],
                records: Mapping[str, Sequence[Mapping[str, Any]]], version: int
                ) -> tuple[list[str], dict[str, Any], list[tuple[str, tuple[str, ...], int]]]:
    """A part's next state from its draft: a selected input gets what it produced and its dead
    letters; a deleted input's samples are excluded; every other line goes on as it was.

    A selected input with a transient dead letter (the storage was unavailable) was not
    processed: it keeps its previous entry (or gets none), is marked ``pending`` (the next
    refresh tries it again), and whatever samples it gave this run are excluded.

    Args:
        draft: the part's draft lines (dicts; :func:`draft_line`), in order.
        produced: URI -> ``sources``, ``shards``, ``samples``, ``audio_s``, ``tokens`` (:func:`produced_by_uri`).
        records: URI -> this run's dead-letter records (``reason``, ``transient``...) for inputs of the part.
        version: this run's dataset version.

    Returns:
        (the part's lines, its summary: inputs, deleted, samples, audio_s, tokens, live failures
        by reason; and the samples no longer live: ``(shard url, source hashes, samples)``).
    """
    lines, summary, stale = [], empty_summary(), []
    attached: set[str] = set()
    for line in draft:
        line = dict(line)
        todo = line.pop(DRAFT, None)
        if todo is not None and "entry" in todo:
            uri = line["uri"]
            attached.add(uri)
            found = records.get(uri, ())
            reasons: dict[str, int] = {}
            for r in found:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
            reasons = dict(sorted(reasons.items()))
            made = produced.get(uri, {"sources": [], "shards": {}, "samples": 0, "audio_s": 0.0, "tokens": {}})
            previous = todo.get("previous") or {}
            if any(r.get("transient") for r in found):
                stale.extend(stale_exclusions(made))
                line.update({k: v for k, v in previous.items() if k not in ("uri", "pending")})
                line["pending"] = {"run": version, "reasons": reasons}
            else:
                if is_input(previous):
                    stale.extend(stale_exclusions(previous))
                line.update({**todo["entry"], **made, "failures": sum(reasons.values())})
                if reasons:
                    line["reasons"] = reasons
                if "unlisted" in previous:
                    line["unlisted"] = previous["unlisted"]
        elif todo is not None:
            stale.extend(stale_exclusions(todo.get("stale", {})))
        add_to_summary(summary, line)
        lines.append(json.dumps(line, sort_keys=True))
    for uri, found in records.items():
        if uri not in attached:  # names nothing this run processed: counts for this version alone
            for r in found:
                summary["failures_by_reason"][r["reason"]] = summary["failures_by_reason"].get(r["reason"], 0) + 1
    return lines, summary, stale


def migrate_state(state: Mapping[str, Any], failure_records: Iterable[tuple[int, Mapping[str, Any]]],
                  ) -> Iterator[tuple[str, str]]:
    """The single-file state of index version 1 as ``(uri, state line)`` pairs.

    Its entries counted dead letters without their reasons; ``failure_records`` (``(version,
    record)`` of the old failure files) give them back, by the rule of what counts
    (``dataset.failure_is_live``): a pending input's are those of the run that could not read
    it, an input's those of the run that processed it.
    """
    entries = dict(dataset.v1_state_entries(state))
    reasons: dict[tuple[str, str], dict[str, int]] = {}
    for run, record in failure_records:
        entry = entries.get(record.get("uri"))
        if entry is None or "unlisted" in entry:
            continue
        field = "pending" if "pending" in entry else "input" if is_input(entry) else None
        if field and (entry[field] if field == "pending" else entry).get("run") == run:
            by_reason = reasons.setdefault((record["uri"], field), {})
            by_reason[record["reason"]] = by_reason.get(record["reason"], 0) + 1
    for uri, entry in entries.items():
        entry = {k: v for k, v in entry.items() if k != "reasons"}
        if reasons.get((uri, "input")):
            entry["reasons"] = dict(sorted(reasons[(uri, "input")].items()))
        if "pending" in entry:
            entry["pending"] = {**entry["pending"], "reasons": dict(sorted(reasons.get((uri, "pending"), {}).items()))}
        yield uri, entry_line(uri, entry)


# ---------------------------------------------------------------------------- shard rows


def live_shards(previous_rows: Iterable[Mapping[str, Any]], new_rows: Iterable[Mapping[str, Any]],
                stale: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The live index's shard rows: old and new, stale sources excluded, empty shards dropped.

    ``stale``: superseded state entries (or ``{"shards": {url: n}, "sources": [...]}``).
    """
    rows = {row["url"]: json.loads(json.dumps(row)) for row in [*previous_rows, *new_rows]}
    for entry in stale:
        for shard, n in entry.get("shards", {}).items():
            row = rows.get(shard)
            if row is None:
                continue
            excluded = set(row.get("excluded_sources", [])) | set(entry.get("sources", []))
            row["excluded_sources"] = sorted(excluded)
            row["live_samples"] = row.get("live_samples", row["samples"]) - n
    out = []
    for url in sorted(rows):
        row = rows[url]
        row.setdefault("live_samples", row["samples"])
        if row["live_samples"] > 0:
            out.append(row)
    return out


# ---------------------------------------------------------------------------- the previous dataset


@dataclasses.dataclass(frozen=True)
class Previous:
    """What a refresh builds on: the published index's layout (never its rows).

    Attributes:
        dataset_version: its version.
        index_version: 1 (one state file, rows inline in ``index.json``) or 2 (part files).
        inputs: inputs its state records.
        parts: its number of parts (index version 2).
        state: its state part files (version 2; None for an empty part), or its one state file (version 1).
        rows: its rows part files (version 2).
    """

    dataset_version: int
    index_version: int
    inputs: int = 0
    parts: int = 0
    state: tuple[str | None, ...] = ()
    rows: tuple[str | None, ...] = ()

    @classmethod
    def of_index(cls, index: Mapping[str, Any]) -> "Previous":
        parts = dataset.layout(index)
        inputs = int(index.get("totals", {}).get("inputs", 0))
        if parts is None:
            return cls(dataset_version=int(index.get("dataset_version", 0)), index_version=1, inputs=inputs,
                       state=(index["state"],) if index.get("state") else ())
        return cls(dataset_version=int(index["dataset_version"]), index_version=int(index["version"]), inputs=inputs,
                   parts=int(parts["parts"]), state=tuple(parts["state"]), rows=tuple(parts["rows"]))

    def overlapping(self, part: int, parts: int) -> list[int]:
        """The previous parts holding slots of ``part`` (of ``parts``), ascending."""
        return sorted({dataset.part_of(s, self.parts) for s in dataset.part_slots(part, parts)})

    def state_lines(self, output: str, part: int, parts: int) -> Iterator[str]:
        """The previous state lines of ``part`` (index version 2), in order."""
        slots = dataset.part_slots(part, parts)
        whole = self.parts >= parts  # the previous parts lie inside this one
        for q in self.overlapping(part, parts):
            rel = self.state[q]
            if not rel:
                continue
            for line in dataset.read_jsonl(output, rel):
                if whole or dataset.order_key(uri_of_line(line))[0] in slots:
                    yield line

    def rows_of(self, output: str, part: int, parts: int) -> dict[str, list[dict]]:
        """The previous shard and failure rows whose url falls in ``part``."""
        out: dict[str, list[dict]] = {"shards": [], "failures": []}
        if self.index_version == 1:
            index = dataset.read_index(output)
            found = {"shards": index.get("shards", []), "failures": index.get("failures", [])}
        else:
            found = {"shards": [], "failures": []}
            for q in self.overlapping(part, parts):
                if self.rows[q]:
                    for kind, rows in dataset.read_rows_part(output, self.rows[q]).items():
                        found[kind].extend(rows)
        for kind, rows in found.items():
            out[kind] = [r for r in rows if dataset.part_of(dataset.slot_of(r["url"]), parts) == part]
        return out

    def reusable(self, part: int, parts: int) -> str | None:
        """The previous part file that is this part's state as it stands (same layout), if any."""
        if self.index_version >= 2 and self.parts == parts:
            return self.state[part] or ""
        return None


def read_v1_failures(output: str, index: Mapping[str, Any]) -> Iterator[tuple[int, dict]]:
    """``(version, record)`` of the dead-letter files an index of version 1 names."""
    for row in index.get("failures", []):
        run = int(row["url"].split("/")[1].lstrip("v"))
        for line in dataset.read_jsonl(output, row["url"]):
            yield run, json.loads(line)


# ---------------------------------------------------------------------------- Beam


@dataclasses.dataclass(frozen=True)
class Draft:
    """A part's join, for the step that writes its next state.

    Attributes:
        part: which.
        url: the draft's temp file; or, when ``reuse`` is set, nothing changed in the part.
        reuse: the previous part file that already is this part's state ("" for an empty part).
        summary: the summary of the part's unchanged entries (the whole part when ``reuse``).
        changed: whether anything in the part changed.
    """

    part: int
    url: str | None
    reuse: str | None
    summary: Mapping[str, Any]
    changed: bool


def parts_singleton(n_listed: int, previous: Previous | None) -> int:
    return choose_parts(n_listed, previous.parts if previous else 0)


class _WriteRunFn(beam.DoFn):
    """(identity, [(order, AudioRef)]) from one lister -> a listing run under the temp folder.

    The run's name is a hash of the lister's identity, so a retried lister rewrites the same file."""

    def __init__(self, temp_dir: str):
        self._temp_dir = temp_dir

    def process(self, batch):
        identity, found = batch
        name = hashlib.sha1(identity.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        yield write_run(storage.join(self._temp_dir, "runs", f"{name}.jsonl"), "listed",
                        ((ref.uri, ref_line(ref, order)) for order, ref in found))


class WriteRuns(beam.PTransform):
    """Listing batches ``(identity, [(order, AudioRef)])`` -> :class:`Run` s under ``temp_dir/runs/``.

    Applied to a tuple of PCollections of batches (``match.ListInputs``): each batch is written
    where it is made, and only the runs are flattened.
    """

    def __init__(self, temp_dir: str):
        super().__init__()
        self.temp_dir = temp_dir

    def expand(self, batches):
        return ([pc | (f"WriteRun{i}" if i else "WriteRun") >> beam.ParDo(_WriteRunFn(self.temp_dir))
                 for i, pc in enumerate(batches)]
                | "AllRuns" >> beam.Flatten())


class _MigrateFn(beam.DoFn):
    """The one state file of an index-version-1 dataset -> a run of state lines (once, on one worker)."""

    def __init__(self, output: str, temp_dir: str):
        self._output, self._temp_dir = output, temp_dir

    def process(self, state_rel: str):
        index = dataset.read_index(self._output)
        state = json.loads(storage.read_bytes(storage.join(self._output, state_rel)))
        lines = migrate_state(state, read_v1_failures(self._output, index))
        metrics.counter("state_migrated").inc(len(state.get("inputs", {})))
        yield write_run(storage.join(self._temp_dir, "runs", "previous-state.jsonl"), "previous", lines)


class _MergeFn(beam.DoFn):
    """(part, {"listed": ranges, "previous": ranges, "failures": match-stage records, "all":
    markers}) -> the part's join.

    Main output: batches of selected inputs (``(url, start, end)``: a range of the part's file of
    them, JSON lines). Tagged: ``drafts`` ((part,
    :class:`Draft`)), ``publish`` ((part, record): match-stage dead letters that changed),
    ``selected`` (count).
    """

    def __init__(self, output: str, temp_dir: str, version: int, fingerprint: str, previous: Previous | None):
        self._output, self._temp_dir = output, temp_dir
        self._version, self._fingerprint, self._previous = version, fingerprint, previous

    def process(self, element, parts: int):
        part, groups = element
        listed = merge_keyed(*(read_lines(url, start, end) for url, start, end in sorted(groups["listed"])))
        if self._previous is not None and self._previous.index_version == 1:
            previous = merge_keyed(*(read_lines(url, start, end) for url, start, end in sorted(groups["previous"])))
        elif self._previous is not None:
            previous = self._previous.state_lines(self._output, part, parts)
        else:
            previous = ()
        fingerprint = self._fingerprint
        records = [json.loads(f.to_json()) for f in groups["failures"]]
        joined = join_part(listed, previous, lambda ref, entry: needs_processing(ref, entry, fingerprint),
                           self._version, fingerprint, part, parts, self._previous, records)
        for name, n in joined.counters.items():
            metrics.counter(name).inc(n)
        for record in joined.publish:
            yield beam.pvalue.TaggedOutput("publish", (part, record))
        if joined.selected:
            # The inputs go to a file: what the runner carries to spread them is a range per batch.
            url = storage.join(self._temp_dir, "selected", f"selected-{part:05d}.jsonl")
            data, batches = batch_lines(joined.selected)
            storage.write_bytes(url, data)
            for start, end in batches:
                yield url, start, end
        yield beam.pvalue.TaggedOutput("selected", len(joined.selected))
        url = None
        if joined.changed:
            url = storage.join(self._temp_dir, "drafts", f"state-{part:05d}.jsonl")
            storage.write_bytes(url, "".join(json.dumps(line, sort_keys=True) + "\n"
                                             for line in joined.draft).encode("utf-8"))
        yield beam.pvalue.TaggedOutput("drafts", (part, Draft(part, url, joined.reuse, joined.summary, joined.changed)))


def batch_lines(refs: Sequence[AudioRef]) -> tuple[bytes, list[tuple[int, int]]]:
    """Selected inputs as JSON lines, and the byte ranges of their batches: each of
    :data:`SELECT_BATCH_INPUTS` inputs or :data:`SELECT_BATCH_BYTES` of audio, whichever comes first."""
    chunks: list[bytes] = []
    batches: list[tuple[int, int]] = []
    start = offset = count = size = 0
    for ref in refs:
        line = (ref_line(ref) + "\n").encode("utf-8")
        chunks.append(line)
        offset += len(line)
        count += 1
        size += ref.size_bytes or 0
        if count >= SELECT_BATCH_INPUTS or size >= SELECT_BATCH_BYTES:
            batches.append((start, offset))
            start, count, size = offset, 0, 0
    if count:
        batches.append((start, offset))
    return b"".join(chunks), batches


def read_batch(batch: tuple[str, int, int]) -> list[AudioRef]:
    """The inputs of one batch (``(url, start, end)`` of :func:`batch_lines`' file)."""
    return [ref_from_line(line) for line in read_lines(*batch)]


class SelectInputs(beam.PTransform):
    """Listing runs and the listing's dead letters -> the inputs to process, and the join's
    drafts for the next state.

    Applied to ``{"runs": PCollection[Run], "failures": PCollection[Failure]}`` (the match
    stage's). Returns a dict: ``refs`` (PCollection[AudioRef], spread over the workers),
    ``parts`` (a singleton: the run's number of parts), ``drafts`` ((part, Draft)),
    ``match_failures`` ((part, record): the match stage's dead letters to publish, those that
    changed since the last run), ``n_selected`` (a singleton), ``changed`` (singleton: whether
    anything changed).
    """

    def __init__(self, output: str, temp_dir: str, version: int, fingerprint: str, previous: Previous | None):
        super().__init__()
        self.output, self.temp_dir = output, temp_dir
        self.version, self.fingerprint, self.previous = version, fingerprint, previous

    def expand(self, inputs):
        runs, previous = inputs["runs"], self.previous
        n_listed = (runs
                    | "RunSizes" >> beam.Map(lambda run: run.count)
                    | "CountListed" >> beam.CombineGlobally(sum))
        parts = n_listed | "ChooseParts" >> beam.Map(parts_singleton, previous)
        parts_si = beam.pvalue.AsSingleton(parts)
        routed = {"listed": runs}
        if previous is not None and previous.index_version == 1 and previous.state:
            routed["previous"] = (runs.pipeline
                                  | "OldState" >> beam.Create(list(previous.state))
                                  | "MigrateState" >> beam.ParDo(_MigrateFn(self.output, self.temp_dir)))
        keyed = {kind: (pc | f"Route{kind.title()}" >> beam.FlatMap(
            lambda run, n: [(p, (run.url, start, end)) for p, start, end in run.ranges(n)], parts_si))
                 for kind, pc in routed.items()}
        keyed.setdefault("previous", runs.pipeline | "NoOldState" >> beam.Create([]))
        keyed["all"] = parts | "AllParts" >> beam.FlatMap(lambda n: [(p, None) for p in range(n)])
        keyed["failures"] = inputs["failures"] | "KeyMatchFailures" >> beam.Map(
            lambda f, n: (dataset.part_of(dataset.order_key(f.uri)[0], n), f), parts_si)
        merged = (keyed
                  | "GroupParts" >> beam.CoGroupByKey()
                  | "JoinState" >> beam.ParDo(
                      _MergeFn(self.output, self.temp_dir, self.version, self.fingerprint, previous),
                      parts_si).with_outputs("drafts", "publish", "selected", main="batches"))
        refs = (merged.batches
                | "SpreadInputs" >> beam.Reshuffle()
                | "ReadBatches" >> beam.FlatMap(read_batch))
        n_selected = merged.selected | "CountSelected" >> beam.CombineGlobally(sum)
        changed = (merged.drafts
                   | "PartChanged" >> beam.Map(lambda kd: kd[1].changed)
                   | "AnyChanged" >> beam.CombineGlobally(any))
        return {"refs": refs, "parts": parts, "drafts": merged.drafts, "match_failures": merged.publish,
                "n_selected": n_selected, "changed": changed}
