"""Rewrite a dataset's live samples into fresh, full shards: ``audiotok compact OUT``.

Refreshes leave shards partly excluded (changed and deleted inputs) and small shards
(small refreshes). Compaction reads the live samples in index order, writes them into new
shards under the next version, and publishes a new state and index naming only those.
Old shards stay on disk (readers of an older index keep working); ``audiotok gc`` deletes
them once the new version is older than its grace period.
"""

from __future__ import annotations

import argparse
import copy
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


def separate_vectors(index: dict) -> bool:
    """Whether a dataset keeps its vector streams in a shard set of their own."""
    return any(row.get("vectors_url") for row in index.get("shards", []))


def compact(output: str, config: shards.ShardConfig | None = None, wait_for_lock_s: float = 0.0) -> dict:
    """Rewrites the live dataset into fresh shards; returns the new index. Without ``config``,
    shards of 1000 samples in the dataset's layout (``separate_vectors``).

    Holds the dataset's lease, and publishes only over the index it read (like a run).

    Raises:
        lease.LeaseHeld: another run is writing the dataset.
    """
    with lease.Lease(output, command="compact").acquire(wait_for_lock_s).start_heartbeat() as held:
        data, generation = storage.read_versioned(dataset.join_index(output))
        index = json.loads(data)
        if config is None:
            config = shards.ShardConfig(separate_vectors=separate_vectors(index))
        state = json.loads(storage.read_bytes(storage.join(output, index["state"])))
        version = int(index["dataset_version"]) + 1
        plan = shards.RunPlan(version=version, index_generation=generation, lease_owner=held.owner)
        gc.clean_unpublished(output, version)
        temp_dir = storage.join(output, dataset.TMP_DIR, held.owner)
        written = []
        with shards.ShardWriter(temp_dir, config, index.get("streams", {})) as writer:
            for sample in sorted(live_samples(output, index), key=lambda s: s.key):
                written += writer.add(sample)
            written += writer.close()
        shards.check_publishable(output, plan)
        vname = dataset.version_name(version)
        rows, by_source = [], {}
        for i, w in enumerate(sorted(written, key=lambda w: w.first_key)):
            rel = f"{dataset.SHARDS_DIR}/{vname}/shard-{i:06d}.tar"
            rows.append({**shards.publish_shard(output, w, rel), "live_samples": w.samples})
            for source, stats in w.sources.items():
                by_source.setdefault(source, {})[rel] = stats["samples"]
        new_state = copy.deepcopy(state)
        new_state["dataset_version"] = version
        for entry in new_state["inputs"].values():
            entry["shards"] = {}
            for source in entry.get("sources", []):
                entry["shards"].update(by_source.get(source, {}))
        storage.write_atomic(storage.join(output, dataset.state_path(version)),
                             json.dumps(new_state, indent=1, sort_keys=True).encode("utf-8"))
        new_index = {**index, "dataset_version": version, "state": dataset.state_path(version), "shards": rows}
        new_index["totals"] = {**index["totals"], **{k: v for k, v in incremental.live_totals(new_state, rows).items()
                                                      if k in ("shards", "bytes")}}
        shards.record_retired(output, index, new_index, version)
        shards.publish_index(output, new_index, plan)
        storage.remove(temp_dir)
    return new_index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiotok compact", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the dataset folder (any fsspec URL)")
    parser.add_argument("--shard-max-samples", type=int, default=1000)
    parser.add_argument("--shard-max-bytes", type=int, default=1 << 30)
    parser.add_argument("--separate-vectors", action=argparse.BooleanOptionalAction, default=None,
                        help="vector streams in a shard set of their own (default: as the dataset has them)")
    args = parser.parse_args(argv)
    before = dataset.read_index(args.output)
    layout = separate_vectors(before) if args.separate_vectors is None else args.separate_vectors
    try:
        after = compact(args.output, shards.ShardConfig(args.shard_max_samples, args.shard_max_bytes,
                                                        separate_vectors=layout))
    except (lease.LeaseHeld, lease.LeaseLost, shards.IndexChanged) as e:
        print(f"audiotok compact: {e}", file=sys.stderr)
        return 75
    print(f"compacted {before['totals']['shards']} shards into {after['totals']['shards']} "
          f"({after['totals']['samples']} live samples), dataset version {after['dataset_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
