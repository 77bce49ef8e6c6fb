"""Rewrite a dataset's live samples into fresh, full shards: ``audiotok compact OUT``.

Refreshes leave shards partly excluded (changed and deleted inputs) and small shards
(small refreshes). Compaction reads the live samples in index order, writes them into new
shards under the next version, and publishes a new state and index naming only those.
Old shards stay on disk (readers of an older index keep working); ``audiotok gc`` deletes
them once the new version is older than its grace period.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator

from audiotok.pipelines import gc
from audiotok.transforms import dataset, incremental, lease, reader, shards, storage
from audiotok.transforms.records import Sample


def live_samples(output: str, index: dict) -> Iterator[Sample]:
    """The live samples of a dataset, shard by shard, in tar order (both shard sets joined)."""
    for s in reader.read_samples(output, index=index):
        yield Sample(key=s.key, meta=dict(s.meta), streams=dict(s.streams))


def separate_vectors(output: str, index: dict) -> bool:
    """Whether a dataset keeps its vector streams in a shard set of their own."""
    return any(row.get("vectors_url") for row in dataset.shard_rows(output, index))


def compact(output: str, config: shards.ShardConfig | None = None, wait_for_lock_s: float = 0.0) -> dict:
    """Rewrites the live dataset into fresh shards; returns the new index. Without ``config``,
    shards of 1000 samples in the dataset's layout (``separate_vectors``).

    Holds the dataset's lease, and publishes only over the index it read (like a run). The state
    keeps its parts (a dataset of index version 1 gets them here); each entry's ``shards`` now
    names the new shards. Dead-letter files stay as they are.

    Raises:
        lease.LeaseHeld: another run is writing the dataset.
    """
    with lease.Lease(output, command="compact").acquire(wait_for_lock_s).start_heartbeat() as held:
        data, generation = storage.read_versioned(dataset.join_index(output))
        index = json.loads(data)
        if config is None:
            config = shards.ShardConfig(separate_vectors=separate_vectors(output, index))
        previous = incremental.Previous.of_index(index)
        version = int(index["dataset_version"]) + 1
        plan = shards.RunPlan(version=version, previous=previous, index_generation=generation,
                              lease_owner=held.owner)
        gc.clean_unpublished(output, version)
        parts = previous.parts or incremental.choose_parts(previous.inputs)
        temp_dir = storage.join(output, dataset.TMP_DIR, held.owner)
        written = []
        with shards.ShardWriter(temp_dir, config, index.get("streams", {})) as writer:
            for sample in sorted(live_samples(output, index), key=lambda s: s.key):
                written += writer.add(sample)
            written += writer.close()
        shards.check_publishable(output, plan)
        new_rows: dict[int, list[dict]] = {}
        by_source: dict[str, dict[str, int]] = {}
        for seq, w in enumerate(sorted(written, key=lambda w: w.first_key)):
            (q, row), _ = shards.publish_shard(output, version, 0, seq, w, parts)
            new_rows.setdefault(q, []).append({**row, "live_samples": row["samples"]})
            for source, stats in w.sources.items():
                by_source.setdefault(source, {})[row["url"]] = stats["samples"]
        states = [_compact_state_part(output, version, previous, p, parts, by_source) for p in range(parts)]
        # The new rows parts name only the compacted shards (and the dead-letter files, as they were).
        rows = [shards.write_rows_part(output, version, q, parts, None, (), new_rows.get(q, []),
                                       previous.rows_of(output, q, parts)["failures"]) for q in range(parts)]
        run_info = {k: index[k] for k in ("tokenizers", "streams", "settings") if k in index}
        new_index = shards.write_index(output, plan, run_info, parts, states, rows,
                                       retired=[u for r in dataset.shard_rows(output, index)
                                                for u in (r["url"], r.get("vectors_url")) if u])
        storage.remove(temp_dir)
    return new_index


def _compact_state_part(output: str, version: int, previous: incremental.Previous, part: int, parts: int,
                        by_source: dict[str, dict[str, int]]) -> shards.PartWritten:
    """One state part with every entry's ``shards`` pointing at the compacted shards."""
    if previous.index_version == 1:
        state = json.loads(storage.read_bytes(storage.join(output, previous.state[0]))) if previous.state else {}
        old = sorted((dataset.order_key(uri), line) for uri, line in incremental.migrate_state(
            state, incremental.read_v1_failures(output, dataset.read_index(output)))
                     if dataset.part_of(dataset.order_key(uri)[0], parts) == part)
        lines: Iterator[str] = (line for _, line in old)
    else:
        lines = previous.state_lines(output, part, parts)
    out, summary = [], incremental.empty_summary()
    for line in lines:
        entry = json.loads(line)
        if incremental.is_input(entry):
            entry["shards"] = {}
            for source in entry.get("sources", []):
                entry["shards"].update(by_source.get(source, {}))
            line = json.dumps(entry, sort_keys=True)
        incremental.add_to_summary(summary, entry)
        out.append(line)
    rel = None
    if out:
        rel = dataset.state_part_path(version, part)
        storage.write_atomic(storage.join(output, rel), "".join(l + "\n" for l in out).encode("utf-8"))
    return shards.PartWritten(part, rel, summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiotok compact", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the dataset folder (any fsspec URL)")
    parser.add_argument("--shard-max-samples", type=int, default=1000)
    parser.add_argument("--shard-max-bytes", type=int, default=1 << 30)
    parser.add_argument("--separate-vectors", action=argparse.BooleanOptionalAction, default=None,
                        help="vector streams in a shard set of their own (default: as the dataset has them)")
    args = parser.parse_args(argv)
    before = dataset.read_index(args.output)
    layout = separate_vectors(args.output, before) if args.separate_vectors is None else args.separate_vectors
    try:
        after = compact(args.output, shards.ShardConfig(args.shard_max_samples, args.shard_max_bytes,
                                                        separate_vectors=layout))
    except (lease.LeaseHeld, lease.LeaseLost, shards.IndexChanged) as e:
        print(f"audiotok compact: {e}", file=sys.stderr)
        return lease.EXIT_BUSY
    print(f"compacted {before['totals']['shards']} shards into {after['totals']['shards']} "
          f"({after['totals']['samples']} live samples), dataset version {after['dataset_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
