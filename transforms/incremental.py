"""The dataset's state across runs: what was processed, what changed, what is live.

Every run publishes a new dataset version: its shards under ``shards/vNNNNNN/``, a state
file ``state/state-vNNNNNN.json`` (per input: size, the store's version marker, the
settings fingerprint, and where its samples went), then ``index.json`` last, in one
write. Shards are never rewritten: samples of inputs that changed or disappeared are
excluded from the live index by their source hash (``excluded_sources`` of a shard row;
the hash is the middle part of every key ``STEM-SOURCEHASH-MS``). ``compact`` rewrites
a dataset into fresh full shards.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Iterable, Mapping

import apache_beam as beam

from audiotok.transforms import metrics, storage
from audiotok.transforms.records import AudioRef

STATE_FORMAT = "audiotok-state"
STATE_VERSION = 1


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


def empty_state() -> dict[str, Any]:
    return {"format": STATE_FORMAT, "format_version": STATE_VERSION, "dataset_version": 0, "inputs": {},
            "deleted": {}}


def next_state(previous: Mapping[str, Any], version: int, fingerprint: str, listed: Iterable[AudioRef],
               selected: Iterable[str], shard_sources: Mapping[str, Mapping[str, Mapping[str, Any]]],
               failure_counts: Mapping[str, int], transient: Iterable[str] = ()
               ) -> tuple[dict[str, Any], list[Mapping[str, Any]]]:
    """The state after a run, and the previous entries whose samples are no longer live.

    Args:
        previous: the last published state.
        version: this run's dataset version.
        fingerprint: this run's settings fingerprint.
        listed: every input matched this run.
        selected: URIs that were (re)processed this run.
        shard_sources: final shard URL -> source hash -> {"uri", "samples", "audio_s", "tokens"}.
        failure_counts: URI -> dead-letter records this run.
        transient: selected URIs with a transient failure (the storage was unavailable): not
            processed. They keep their previous entry (or get none), whatever samples they
            gave this run are not live, and they are listed in ``pending`` so the next
            refresh tries them again.
    """
    state = {**empty_state(), "dataset_version": version, "settings_fingerprint": fingerprint,
             "deleted": copy.deepcopy(dict(previous.get("deleted", {})))}
    prev_inputs = previous.get("inputs", {})
    transient = set(transient)
    selected = set(selected) - transient
    pending: dict[str, Any] = {}
    per_uri: dict[str, dict[str, Any]] = {}
    for shard, sources in sorted(shard_sources.items()):
        for source, stats in sorted(sources.items()):
            entry = per_uri.setdefault(stats["uri"], {"sources": [], "shards": {}, "samples": 0, "audio_s": 0.0,
                                                      "tokens": {}})
            if source not in entry["sources"]:
                entry["sources"].append(source)
            entry["shards"][shard] = entry["shards"].get(shard, 0) + stats["samples"]
            entry["samples"] += stats["samples"]
            entry["audio_s"] = round(entry["audio_s"] + stats["audio_s"], 6)
            for name, n in stats["tokens"].items():
                entry["tokens"][name] = entry["tokens"].get(name, 0) + n
    stale: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    # A URI listed twice (by a pattern and a manifest line) keeps one entry: the same one
    # whatever order the runner delivered the references in.
    for ref in sorted(listed, key=_ref_order):
        if ref.uri in seen:
            continue
        seen.add(ref.uri)
        if ref.uri in selected:
            produced = per_uri.get(ref.uri, {"sources": [], "shards": {}, "samples": 0, "audio_s": 0.0, "tokens": {}})
            state["inputs"][ref.uri] = {
                "size": ref.size_bytes, "version": ref.version, "meta": meta_hash(ref), "fingerprint": fingerprint,
                "run": version, "failures": int(failure_counts.get(ref.uri, 0)), **produced}
            state["deleted"].pop(ref.uri, None)
            if ref.uri in prev_inputs:
                stale.append(prev_inputs[ref.uri])
        elif ref.uri in prev_inputs:
            state["inputs"][ref.uri] = copy.deepcopy(prev_inputs[ref.uri])
        if ref.uri in transient:
            pending[ref.uri] = {"run": version}
            if ref.uri in per_uri:
                stale.append(per_uri[ref.uri])
    for uri, entry in prev_inputs.items():
        if uri not in seen:
            state["deleted"][uri] = {"run": version}
            stale.append(entry)
    state["inputs"] = dict(sorted(state["inputs"].items()))
    state["deleted"] = dict(sorted(state["deleted"].items()))
    if pending:
        state["pending"] = dict(sorted(pending.items()))
    return state, stale


def carry_unlisted(previous: Mapping[str, Any], records: Iterable[Mapping[str, Any]], version: int
                   ) -> tuple[dict[str, Any], list[Mapping[str, Any]]]:
    """Dead letters that name no input (a pattern matching nothing, a bad manifest line, a
    file refused when listed) come back every run; those that are the same as last run's
    are carried, not repeated.

    Args:
        previous: the last published state's ``unlisted``: URI -> {"run", "records": [[reason, message], ...]}.
        records: this run's match-stage records (dicts with ``uri``, ``reason``, ``message``).
        version: this run's dataset version.

    Returns:
        (this run's ``unlisted``, the records to publish: those of URIs whose records changed).
    """
    by_uri: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_uri.setdefault(record["uri"], []).append(record)
    unlisted: dict[str, Any] = {}
    new: list[Mapping[str, Any]] = []
    for uri, found in sorted(by_uri.items()):
        summary = sorted([r["reason"], r.get("message", "")] for r in found)
        before = previous.get(uri)
        if before is not None and before.get("records") == summary:
            unlisted[uri] = copy.deepcopy(dict(before))
        else:
            unlisted[uri] = {"run": version, "records": summary}
            new.extend(found)
    return unlisted, new


def _ref_order(ref: AudioRef) -> tuple:
    return (ref.uri, meta_hash(ref), ref.size_bytes is not None, ref.size_bytes or 0, ref.version or "")


def live_shards(previous_rows: Iterable[Mapping[str, Any]], new_rows: Iterable[Mapping[str, Any]],
                stale: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The live index's shard rows: old and new, stale sources excluded, empty shards dropped."""
    rows = {row["url"]: copy.deepcopy(dict(row)) for row in [*previous_rows, *new_rows]}
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


def live_totals(state: Mapping[str, Any], shard_rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over the live samples (from the state, so excluded samples do not count)."""
    inputs = state.get("inputs", {}).values()
    tokens: dict[str, int] = {}
    for entry in inputs:
        for name, n in entry.get("tokens", {}).items():
            tokens[name] = tokens.get(name, 0) + n
    rows = list(shard_rows)
    return {
        "shards": len(rows),
        "samples": sum(e.get("samples", 0) for e in inputs),
        "bytes": sum(r["bytes"] + r.get("vectors_bytes", 0) for r in rows),
        "audio_s": round(sum(e.get("audio_s", 0.0) for e in inputs), 3),
        "tokens": dict(sorted(tokens.items())),
        "inputs": len(state.get("inputs", {})),
        "deleted_inputs": len(state.get("deleted", {})),
    }


class _SelectFn(beam.DoFn):
    def __init__(self, state_url: str | None, fingerprint: str):
        self._state_url = state_url
        self._fingerprint = fingerprint

    def setup(self) -> None:
        # Read once per worker process: the state holds one small entry per input.
        self._inputs = (json.loads(storage.read_bytes(self._state_url)).get("inputs", {})
                        if self._state_url else {})

    def process(self, ref: AudioRef):
        why = needs_processing(ref, self._inputs.get(ref.uri), self._fingerprint)
        metrics.counter(f"inputs_{why or 'unchanged'}").inc()
        if why:
            yield ref


class SelectChanged(beam.PTransform):
    """PCollection[AudioRef] -> the inputs that are new, changed, or processed with other settings."""

    def __init__(self, state_url: str | None, fingerprint: str):
        super().__init__()
        self.state_url = state_url
        self.fingerprint = fingerprint

    def expand(self, refs):
        return refs | "NewOrChanged" >> beam.ParDo(_SelectFn(self.state_url, self.fingerprint))
