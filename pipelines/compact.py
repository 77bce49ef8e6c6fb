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
import io
import json
import sys
import tarfile
from typing import Iterator

import numpy as np

from audiotok.pipelines import gc
from audiotok.transforms import dataset, incremental, lease, shards, storage
from audiotok.transforms.records import Sample


def live_samples(output: str, index: dict) -> Iterator[Sample]:
    """The live samples of a dataset, shard by shard, in tar order."""
    stream_names = set(index.get("streams", {}))
    for row in index["shards"]:
        with storage.open_input(storage.join(output, row["url"])) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            key, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = member.name.split(".", 1)
                if key is not None and k != key:
                    if dataset.is_live(key, row):
                        yield _sample(key, parts, stream_names)
                    parts = {}
                key = k
                parts[ext] = tar.extractfile(member).read()
            if key is not None and dataset.is_live(key, row):
                yield _sample(key, parts, stream_names)


def _sample(key: str, parts: dict[str, bytes], stream_names: set[str]) -> Sample:
    meta = json.loads(parts.pop("json"))
    streams = {ext[:-4]: np.load(io.BytesIO(data), allow_pickle=False)
               for ext, data in parts.items() if ext.endswith(".npy")}
    return Sample(key=key, meta=meta, streams=streams)


def compact(output: str, config: shards.ShardConfig = shards.ShardConfig(), wait_for_lock_s: float = 0.0) -> dict:
    """Rewrites the live dataset into fresh shards; returns the new index.

    Holds the dataset's lease, and publishes only over the index it read (like a run).

    Raises:
        lease.LeaseHeld: another run is writing the dataset.
    """
    with lease.Lease(output, command="compact").acquire(wait_for_lock_s).start_heartbeat() as held:
        data, generation = storage.read_versioned(dataset.join_index(output))
        index = json.loads(data)
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
            storage.rename(w.temp_url, storage.join(output, rel))
            rows.append({"url": rel, "samples": w.samples, "live_samples": w.samples, "bytes": w.bytes,
                         "audio_s": w.audio_s, "tokens": dict(sorted(w.tokens.items()))})
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
    args = parser.parse_args(argv)
    before = dataset.read_index(args.output)
    try:
        after = compact(args.output, shards.ShardConfig(args.shard_max_samples, args.shard_max_bytes))
    except (lease.LeaseHeld, lease.LeaseLost, shards.IndexChanged) as e:
        print(f"audiotok compact: {e}", file=sys.stderr)
        return lease.EXIT_BUSY
    print(f"compacted {before['totals']['shards']} shards into {after['totals']['shards']} "
          f"({after['totals']['samples']} live samples), dataset version {after['dataset_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
