"""Delete the files old dataset versions needed and the live one does not: ``audiotok gc OUT``.

A refresh, an ``--overwrite`` or a compaction publishes a new index and leaves the files only
older indexes name (shards whose samples are all superseded, old failure and state files)
where they are, so that readers holding an older index keep working. Each publish lists them
in ``state/retired-vNNNNNN.json``. ``gc`` deletes the files that version ``N`` retired once
``N`` was published more than ``--older-than`` ago; files no index names that were retired
before such lists existed are deleted by the same rule, dated by the live version's publish.
It also removes what interrupted runs left unpublished. Files the live index names, and
names audiotok does not write, are never deleted. ``tokenize`` runs it after each run with
``--gc-grace-s`` (7 days by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Iterator

from audiotok.transforms import card, dataset, lease, storage

logger = logging.getLogger(__name__)

DEFAULT_GRACE_S = 7 * 24 * 3600.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"a duration is a number with an optional unit s, m, h, d or w (7d, 12h). Found: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _version_files(output: str, below: int) -> Iterator[str]:
    """Relative paths of the versioned files audiotok wrote for versions under ``below``."""
    for folder in (dataset.SHARDS_DIR, dataset.FAILURES_DIR, dataset.STATE_DIR, dataset.ROWS_DIR):
        for url, name in storage.list_folder(storage.join(output, folder)):
            version = dataset.version_of_name(folder, name)
            if version is None or version >= below:
                continue
            if name.startswith("v"):  # a version's folder of files
                for _, inner in storage.list_folder(url):
                    yield f"{folder}/{name}/{inner}"
            elif name.startswith("state-"):  # the one state file of index version 1
                yield f"{folder}/{name}"


def collect_garbage(output: str, older_than_s: float, now: float | None = None, dry_run: bool = False) -> list[str]:
    """Deletes what no index younger than ``older_than_s`` seconds names; returns the deleted
    paths (relative to ``output``). The caller holds the dataset's lease.

    Raises:
        FileNotFoundError: ``output`` holds no index.
    """
    now = time.time() if now is None else now
    index = dataset.read_index(output)
    live_version = int(index.get("dataset_version", 0))
    live = dataset.referenced_files(output, index)
    due: list[str] = []
    lists: list[str] = []
    listed: set[str] = set()
    for url, name in sorted(storage.list_folder(storage.join(output, dataset.STATE_DIR))):
        version = dataset.version_of_name(dataset.STATE_DIR, name)
        if version is None or not name.startswith("retired-") or version > live_version:
            continue
        retired = json.loads(storage.read_bytes(url)).get("retired", [])
        listed.update(retired)
        published = storage.modified_time(url)
        if published is not None and now - published >= older_than_s:
            due += [rel for rel in retired if rel not in live and _is_ours(rel)]
            lists.append(f"{dataset.STATE_DIR}/{name}")
    live_published = storage.modified_time(dataset.join_index(output))
    if live_published is not None and now - live_published >= older_than_s:
        due += [rel for rel in _version_files(output, live_version) if rel not in live and rel not in listed]
    removed = []
    for rel in sorted(set(due)) + lists:
        if not dry_run:
            storage.remove(storage.join(output, rel))
        removed.append(rel)
    if not dry_run:
        clean_unpublished(output, live_version + 1)
        for folder in (dataset.SHARDS_DIR, dataset.FAILURES_DIR, dataset.STATE_DIR, dataset.ROWS_DIR):
            for url, name in storage.list_folder(storage.join(output, folder)):
                version = dataset.version_of_name(folder, name)
                if version is not None and name.startswith("v") and version < live_version \
                        and not storage.list_folder(url):
                    storage.remove(url)
    return removed


def clean_unpublished(output: str, version: int) -> None:
    """Removes what runs of ``version`` or later left behind without publishing it: their
    version folders and state files, the temporary folders of runs, and the temporary files
    of interrupted atomic writes. Only names the project writes are ever removed."""
    for folder in (dataset.SHARDS_DIR, dataset.FAILURES_DIR, dataset.STATE_DIR, dataset.ROWS_DIR):
        for entry, name in storage.list_folder(storage.join(output, folder)):
            found = dataset.version_of_name(folder, name)
            if (found is not None and found >= version) or dataset.is_temp_name(name):
                storage.remove(entry)
    for entry, name in storage.list_folder(storage.join(output, dataset.TMP_DIR)):
        if _is_run_id(name):
            storage.remove(entry)
    for folder in (output, storage.join(output, card.PLOTS_DIR)):
        for entry, name in storage.list_folder(folder):
            if dataset.is_temp_name(name):
                storage.remove(entry)


def _is_run_id(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def _is_ours(rel: str) -> bool:
    parts = rel.split("/")
    if len(parts) == 3 and parts[0] in (dataset.SHARDS_DIR, dataset.FAILURES_DIR, dataset.STATE_DIR, dataset.ROWS_DIR):
        return parts[1].startswith("v") and dataset.version_of_name(parts[0], parts[1]) is not None
    return len(parts) == 2 and parts[0] == dataset.STATE_DIR and dataset.version_of_name(parts[0], parts[1]) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiotok gc", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the dataset folder (any fsspec URL)")
    parser.add_argument("--older-than", dest="older_than", default="7d", metavar="DURATION",
                        help="delete files that only versions replaced longer ago than this need (7d, 12h, 0: all)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    parser.add_argument("--wait-for-lock", dest="wait_for_lock_s", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for a run writing the dataset")
    args = parser.parse_args(argv)
    try:
        older_than_s = parse_duration(args.older_than)
    except ValueError as e:
        parser.error(str(e))
    if not storage.exists(dataset.join_index(args.output)):
        print(f"audiotok gc: {args.output} holds no dataset ({dataset.INDEX_NAME})", file=sys.stderr)
        return 1
    try:
        with lease.Lease(args.output, command="gc").acquire(args.wait_for_lock_s).start_heartbeat():
            removed = collect_garbage(args.output, older_than_s, dry_run=args.dry_run)
    except (lease.LeaseHeld, lease.LeaseLost) as e:
        print(f"audiotok gc: {e}", file=sys.stderr)
        return lease.EXIT_BUSY
    for rel in removed:
        print(("would delete " if args.dry_run else "deleted ") + rel)
    print(f"audiotok gc: {'would delete' if args.dry_run else 'deleted'} {len(removed)} file(s) under {args.output}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
