"""Runs ``audiotok`` in this process with a fault injected at a publish point (tests/pipelines/test_faults.py
starts it as a child process, so that a ``kill -9`` kills only it).

    python tests/fault_driver.py POINT -- tokenize ARGS...
    python tests/fault_driver.py full-disk --mount DIR --report FILE -- ARGS...

Points (``kill:`` sends this process SIGKILL there, as ``kill -9`` would):

* ``kill:shard-rename``: when the first shard is moved into place under ``shards/vNNNNNN/``
* ``kill:state``: just before the first state part is written (every shard in place)
* ``kill:index``: once the new index is on disk under its temporary name, before the rename
  that publishes it
* ``kill:card``: after the index is published, before the dataset card is written
* ``none``: no fault

``full-disk`` runs a scenario against a small filesystem mounted at ``--mount`` (a tmpfs the
test mounted in a private mount namespace): a first run, a refresh during which the
filesystem fills up just before the index is written (``--inject`` raises ENOSPC there
instead, where no filesystem can be mounted), ``verify`` of what is live, then the space is
freed and the refresh run again. It writes what it saw to ``--report`` (JSON).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def inject(point: str, fill: str | None = None) -> None:
    """Patches the storage primitives the publishing code goes through."""
    from audiotok.transforms import card, storage

    real_rename, real_write_atomic, real_replace, real_link = storage.rename, storage.write_atomic, os.replace, os.link

    def rename(src, dst):
        if point == "kill:shard-rename" and "/shards/v" in dst.replace(os.sep, "/"):
            _kill()
        return real_rename(src, dst)

    def write_atomic(url, data, **kw):
        path = url.replace(os.sep, "/")
        name = path.rsplit("/", 1)[-1]
        if point == "kill:state" and "/state/v" in path and name.startswith("state-"):
            _kill()
        if name == "index.json":
            if point == "full:index":
                _fill(fill)
            elif point == "enospc:index":
                raise OSError(errno.ENOSPC, "No space left on device (injected)", url)
        return real_write_atomic(url, data, **kw)

    def replace(src, dst, *args, **kw):
        if point == "kill:index" and str(dst).endswith("index.json"):
            _kill()
        return real_replace(src, dst, *args, **kw)

    def link(src, dst, *args, **kw):  # how a first index is published (it must not exist yet)
        if point == "kill:index" and str(dst).endswith("index.json"):
            _kill()
        return real_link(src, dst, *args, **kw)

    def write_card(*args, **kw):
        if point == "kill:card":
            _kill()
        return real_card(*args, **kw)

    real_card = card.write_card
    storage.rename, storage.write_atomic, os.replace, os.link = rename, write_atomic, replace, link
    card.write_card = write_card


def _fill(path: str) -> None:
    """Fills the filesystem holding ``path`` to the last byte."""
    chunk = b"\0" * (1 << 16)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    with open(path, "ab") as f:  # and the last partial block
        try:
            for _ in range(1 << 16):
                f.write(b"\0")
                f.flush()
        except OSError:
            pass


def full_disk(args: argparse.Namespace, cli_args: list[str]) -> int:
    from audiotok.pipelines import cli, verify
    from audiotok.transforms import storage

    out = os.path.join(args.mount, "out")
    argv = ["tokenize", *cli_args, "--output", out]
    report: dict = {"mounted": args.mount}
    report["first"] = cli.main(argv)
    for name in sorted(os.listdir(args.extra)):
        shutil.copy(os.path.join(args.extra, name), os.path.join(args.input, name))
    real_write_atomic = storage.write_atomic
    inject("enospc:index" if args.inject else "full:index", os.path.join(args.mount, "filler"))
    try:
        report["full"] = cli.main(argv + ["--incremental"])
    except (OSError, SystemExit, RuntimeError) as e:  # the job fails: that is the point
        report["full"] = f"{type(e).__name__}: {e}"
    with open(os.path.join(out, "index.json"), "rb") as f:
        report["index_after_full"] = json.loads(f.read())["dataset_version"]
    report["verify_after_full"] = [str(p) for p in verify.verify_dataset(out).errors()]
    if os.path.exists(os.path.join(args.mount, "filler")):
        os.unlink(os.path.join(args.mount, "filler"))
    storage.write_atomic = real_write_atomic
    report["again"] = cli.main(argv + ["--incremental"])
    report["verify_after_again"] = [str(p) for p in verify.verify_dataset(out).errors()]
    shutil.copytree(out, os.path.join(os.path.dirname(args.report), "final"))
    with open(args.report, "w") as f:
        json.dump(report, f)
    return 0


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit(__doc__)
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="fault_driver")
    parser.add_argument("point")
    parser.add_argument("--mount")
    parser.add_argument("--input")
    parser.add_argument("--extra")
    parser.add_argument("--report")
    parser.add_argument("--inject", action="store_true")
    args = parser.parse_args(argv[:cut])
    rest = argv[cut + 1:]
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.point == "full-disk":
        return full_disk(args, rest)
    if args.point != "none":
        inject(args.point)
    from audiotok.pipelines import cli

    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
