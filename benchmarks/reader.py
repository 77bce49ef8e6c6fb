"""How fast a trainer reads an audiotok dataset back, and how many bytes it reads to do so.

    python benchmarks/reader.py                  # 2,000 samples of 2-30 s (~9 h of audio), 3 rounds
    python benchmarks/reader.py --quick          # 40 samples, 1 round: checks that it runs
    python benchmarks/reader.py --samples 4000 --repeats 5 --json out/reader.json

A dataset is written into a temporary folder by the project's own shard writer
(``ShardWriter`` + ``finalize``, 500 samples per shard), once in each layout: samples whose durations are drawn
evenly from 2-30 s (seeded), each with the three streams a speech-LM dataset typically holds,
random values of the real shapes and types:

* ``units``: int16 [T] of 500 at 50 Hz (HuBERT layer-9 units, k = 500);
* ``codec``: int16 [8, T] of 1024 at 75 Hz (EnCodec 24 kHz at 6 kbps);
* ``logmel``: float16 [T, 80] at 100 Hz (log-mel frames: ~99 % of the shard's bytes).

Rows, each in this process, one worker (no DataLoader processes), every sample read once per
round, after an untimed warm-up round; each row keeps its fastest of ``--repeats`` rounds:

* ``lm units``: ``reader.lm_dataset(OUT, SequenceConfig(("units",)), context_len=2048)``:
  packed rows of units alone, what a units LM trains on;
* ``lm codec+units``: the same with ``("codec", "units")``, codes flattened frame by frame;
* ``samples units``: ``reader.sample_dataset(OUT, streams=["units"])``: samples with their
  ``KEY.json`` parsed and the arrays checked against it; ``samples codec+logmel+units``: every
  stream (what a reader of whole samples pays);
* ``stock ...``: the baseline, the same rows from the stock webdataset reader
  (``webdataset.WebDataset(urls, shardshuffle=False).decode()``, which reads and decodes every
  member of every sample) turned into the same documents and rows with the same functions
  (``lm.sample_to_document``, ``lm.pack_documents``, ``lm.next_token_targets``);
* ``(split)``: the same samples written with ``--separate-vectors`` (``ShardConfig(
  separate_vectors=True)``): ``logmel`` in a shard set of its own beside the discrete one.

Columns: ``tokens/s``: tokens in the rows, padding excluded, per wall second (for ``samples``
rows, the tokens of the arrays read, as the index counts them: a vector frame is one token); ``CPU s``: this process's CPU time (``tokens/CPU s``: the
rate on a machine with a core to itself); ``vs stock``: tokens/s over the stock row of the same
streams; ``read MB``: bytes the row read from local files (``rchar`` of ``/proc/self/io``: what
``read()`` returned; seeks cost nothing); ``bucket MB``: bytes the same reading fetches from an
object store (a second, untimed pass through an fsspec file with ``storage.open_input``'s
settings for buckets: one 4 MiB read-ahead block, as gcsfs and s3fs use it; counted at the
fetch; stock rows: the whole shards, which webdataset pipes through ``gsutil`` or ``curl``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

CONTEXT_LEN = 2048
SAMPLES_PER_SHARD = 500
BUCKET_PROTOCOL = "readerbench"


@dataclasses.dataclass(frozen=True)
class Stream:
    name: str
    kind: str
    frame_rate_hz: float
    dtype: str
    codebook_size: int | None = None
    num_codebooks: int | None = None
    dim: int | None = None


STREAMS = (
    Stream("codec", "codes", 75.0, "int16", codebook_size=1024, num_codebooks=8),
    Stream("logmel", "vectors", 100.0, "float16", dim=80),
    Stream("units", "units", 50.0, "int16", codebook_size=500),
)


# ---------------------------------------------------------------------------- the dataset


def _stream_specs():
    from audiotok.transforms.tokenizers.base import StreamSpec

    return [StreamSpec(s.name, s.kind, s.frame_rate_hz, s.dtype, codebook_size=s.codebook_size,
                       num_codebooks=s.num_codebooks or 1, dim=s.dim) for s in STREAMS]


def _descriptions(specs) -> dict[str, dict[str, Any]]:
    return {s.name: {**s.to_dict(), "family": "bench", "tokenizer": f"bench-{s.name}", "tokenizer_version": "1",
                     "fingerprint": f"bench-{s.name}", "weights": None} for s in specs}


def synthetic_samples(n: int, seed: int = 0, min_s: float = 2.0, max_s: float = 30.0) -> Iterator[Any]:
    """``n`` samples as the job writes them (``KEY.json`` from ``tokenize.sample_meta``),
    durations drawn evenly from [min_s, max_s], streams of random values."""
    from audiotok.transforms.records import AudioRef, Sample, Segment
    from audiotok.transforms.segment import segment_key
    from audiotok.transforms.tokenize import sample_meta

    specs = _stream_specs()
    descriptions = _descriptions(specs)
    rng = np.random.default_rng(seed)
    for i in range(n):
        duration = round(float(rng.uniform(min_s, max_s)), 2)
        streams = {}
        for s in specs:
            t = int(round(duration * s.frame_rate_hz))
            if s.kind == "vectors":
                streams[s.name] = rng.standard_normal((t, s.dim), dtype=np.float32).astype(np.float16)
            else:
                streams[s.name] = rng.integers(0, s.codebook_size, size=s.shape(t)).astype(np.int16)
        ref = AudioRef(uri=f"/corpus/spk{i % 97:03d}/utt{i:06d}.flac")
        segment = Segment(key=segment_key(ref, 0.0), source=ref, start_s=0.0, end_s=duration, sample_rate=16000,
                          audio=np.zeros(int(round(duration * 16000)), np.float32))  # zeros: never touched
        yield Sample(key=segment.key, meta=sample_meta(segment, streams, descriptions), streams=streams)


def write_dataset(output: Path, n: int, seed: int = 0, separate_vectors: bool = False) -> dict:
    """Writes the benchmark's dataset and its ``vocab.json``; returns the index."""
    from audiotok.transforms import dataset, lm, shards
    from audiotok.transforms.records import AudioRef

    descriptions = _descriptions(_stream_specs())
    temp = str(output / dataset.TMP_DIR / "bench")
    written, uris = [], []
    samples = sorted(synthetic_samples(n, seed), key=lambda s: s.key)
    config = shards.ShardConfig(max_samples=SAMPLES_PER_SHARD, separate_vectors=separate_vectors)
    with shards.ShardWriter(temp, config, descriptions) as writer:
        for sample in samples:
            written += writer.add(sample)
            uris.append(sample.meta["source"]["uri"])
        written += writer.close()
    info = {"tokenizers": [], "streams": descriptions, "settings": {}}
    index = shards.finalize(str(output), temp, written, info, listed=[AudioRef(uri=u) for u in uris], selected=uris)
    lm.write_vocab(str(output), index)
    return index


# ---------------------------------------------------------------------------- a bucket, simulated


@contextlib.contextmanager
def bucket_view(root: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """``readerbench://...`` URLs for the files under ``root``, opened as an object store's
    files are (fsspec buffered files, ``storage.open_input``'s read-ahead block); yields the URL
    prefix and a counter of the bytes and requests fetched."""
    import fsspec
    from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

    counter = {"bytes": 0, "requests": 0}

    class _File(AbstractBufferedFile):
        def _fetch_range(self, start: int, end: int) -> bytes:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(end - start)
            counter["bytes"] += len(data)
            counter["requests"] += 1
            return data

    class _Bucket(AbstractFileSystem):
        protocol = BUCKET_PROTOCOL
        cachable = False

        def info(self, path, **kwargs):
            path = self._strip_protocol(path)
            return {"name": path, "size": os.path.getsize(path), "type": "file"}

        def _open(self, path, mode="rb", block_size=None, cache_type="readahead", **kwargs):
            return _File(self, path, mode, block_size=block_size or 4 << 20, cache_type=cache_type, **kwargs)

        def cat_file(self, path, start=None, end=None, **kwargs):
            with self._open(self._strip_protocol(path)) as f:
                return f.read()

    fsspec.register_implementation(BUCKET_PROTOCOL, _Bucket, clobber=True)
    yield f"{BUCKET_PROTOCOL}://{root}", counter


# ---------------------------------------------------------------------------- the rows


def _rchar() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _count_lm(rows: Iterable[dict[str, np.ndarray]]) -> int:
    return sum(int((r["document_ids"] >= 0).sum()) for r in rows)


def _count_samples(samples: Iterable[Any]) -> int:
    """Tokens as the index counts them: K x T codes, T units, T frames of vectors."""
    vectors = {s.name for s in STREAMS if s.kind == "vectors"}
    return sum(sum(int(a.shape[0]) if n in vectors else int(a.size) for n, a in s.streams.items()) for s in samples)


def stock_lm_rows(urls: Sequence[str], vocab, config) -> Iterator[dict[str, np.ndarray]]:
    """The baseline: stock webdataset reading, then the same documents and packing as ours."""
    import webdataset as wds

    from audiotok.transforms import lm

    samples = wds.WebDataset(list(urls), shardshuffle=False, empty_check=False).decode()
    docs = (lm.sample_to_document({n: s[f"{n}.npy"] for n in config.streams}, vocab, config) for s in samples)
    for row in lm.pack_documents(docs, CONTEXT_LEN, vocab.pad_id):
        yield {"tokens": row.tokens.astype(np.int64), "document_ids": row.document_ids,
               "positions": row.positions.astype(np.int64),
               "targets": lm.next_token_targets(row.tokens, row.document_ids)}


@dataclasses.dataclass
class Row:
    name: str
    streams: tuple[str, ...]
    layout: str  # "interleaved", or "split": written with ShardConfig(separate_vectors=True)
    make: Callable[[str], Iterable[Any]]  # dataset root or URL prefix -> what to count
    count: Callable[[Iterable[Any]], int]
    rounds: list[dict[str, float]] = dataclasses.field(default_factory=list)
    bucket: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {'+'.join(self.streams)}" + (" (split)" if self.layout == "split" else "")


def plan_rows() -> list[Row]:
    from audiotok.transforms import lm, reader

    def ours_lm(streams):
        config = lm.SequenceConfig(streams)
        return lambda base: reader.lm_dataset(base, config, CONTEXT_LEN, split=False)

    def stock_lm(streams):
        config = lm.SequenceConfig(streams)
        return lambda base: stock_lm_rows(reader.shard_urls(base), lm.read_vocab(base), config)

    def samples(streams):
        return lambda base: reader.sample_dataset(base, streams=streams, split=False)

    return [
        Row("stock lm", ("units",), "interleaved", stock_lm(("units",)), _count_lm),
        Row("lm", ("units",), "interleaved", ours_lm(("units",)), _count_lm),
        Row("lm", ("units",), "split", ours_lm(("units",)), _count_lm),
        Row("stock lm", ("codec", "units"), "interleaved", stock_lm(("codec", "units")), _count_lm),
        Row("lm", ("codec", "units"), "interleaved", ours_lm(("codec", "units")), _count_lm),
        Row("lm", ("codec", "units"), "split", ours_lm(("codec", "units")), _count_lm),
        Row("samples", ("units",), "interleaved", samples(["units"]), _count_samples),
        Row("samples", ("codec", "logmel", "units"), "interleaved", samples(None), _count_samples),
        Row("samples", ("codec", "logmel", "units"), "split", samples(None), _count_samples),
    ]


def _timed(row: Row, base: str) -> dict[str, float]:
    rchar, cpu, t0 = _rchar(), time.process_time(), time.perf_counter()
    tokens = row.count(row.make(base))
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "cpu_s": time.process_time() - cpu, "read_bytes": _rchar() - rchar}


def measure(workdir: Path, samples: int, repeats: int = 3, warmup: bool = True, seed: int = 0) -> dict[str, Any]:
    """Writes the dataset under ``workdir`` in both layouts and measures every row; returns the report."""
    t0 = time.perf_counter()
    roots = {"interleaved": workdir / "interleaved", "split": workdir / "split"}
    indexes = {layout: write_dataset(root, samples, seed, separate_vectors=layout == "split")
               for layout, root in roots.items()}
    written_s = time.perf_counter() - t0
    rows = plan_rows()
    if warmup:
        for row in rows:
            row.count(row.make(str(roots[row.layout])))
    for _ in range(repeats):
        for row in rows:  # interleaved rounds: a busy spell slows every row alike
            row.rounds.append(_timed(row, str(roots[row.layout])))

    from audiotok.transforms import dataset

    shard_rows = {layout: list(dataset.shard_rows(str(root))) for layout, root in roots.items()}

    def size(layout: str, field: str) -> int:
        return sum(os.path.getsize(roots[layout] / r[field]) for r in shard_rows[layout] if r.get(field))

    shard_bytes = size("interleaved", "url")
    for row in rows:
        if row.name.startswith("stock"):
            # webdataset opens bucket URLs by piping whole objects through gsutil or curl.
            row.bucket = {"bytes": shard_bytes, "requests": len(shard_rows["interleaved"])}
            continue
        with bucket_view(roots[row.layout]) as (prefix, counter):
            row.count(row.make(prefix))
            row.bucket = dict(counter)

    stock = {row.streams: row for row in rows if row.name.startswith("stock")}
    report_rows = []
    for row in rows:
        best = min(row.rounds, key=lambda r: r["wall_s"])
        base = stock.get(row.streams)
        base_best = min(base.rounds, key=lambda r: r["wall_s"]) if base else None
        rate = best["tokens"] / best["wall_s"]
        report_rows.append({
            "label": row.label, "name": row.name, "streams": list(row.streams), "layout": row.layout,
            "tokens": best["tokens"], "wall_s": round(best["wall_s"], 4), "cpu_s": round(best["cpu_s"], 4),
            "tokens_per_s": round(rate), "tokens_per_cpu_s": round(best["tokens"] / max(best["cpu_s"], 1e-9)),
            "vs_stock": round(rate / (base_best["tokens"] / base_best["wall_s"]), 2)
            if base_best and row.name == "lm" else None,
            "read_bytes": best["read_bytes"], "bucket_bytes": row.bucket["bytes"],
            "bucket_requests": row.bucket["requests"], "rounds": row.rounds,
        })
    split = indexes["split"]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(("webdataset",)),
        "load_before": common.load_average(),
        "dataset": {"samples": samples, "shards": len(shard_rows["split"]), "audio_s": split["totals"]["audio_s"],
                    "tokens": split["totals"]["tokens"], "shard_bytes": shard_bytes,
                    "split_bytes": {"discrete": size("split", "url"), "vectors": size("split", "vectors_url")},
                    "write_s": round(written_s, 1)},
        "repeats": repeats,
        "rows": report_rows,
    }


def format_table(report: dict[str, Any]) -> str:
    d = report["dataset"]
    mb = 1 / 1e6
    lines = [
        f"reader: {report['when']}, {report['machine'].get('cpu', '?')} ({report['machine']['cpu_count']} cores), "
        f"load average {report['load_before']} before, {common.load_average()} after",
        f"dataset: {d['samples']} samples, {d['audio_s'] / 3600:.1f} h, {d['shards']} shard(s), "
        f"{d['shard_bytes'] * mb:.0f} MB; split: discrete {d['split_bytes']['discrete'] * mb:.1f} MB + vectors "
        f"{d['split_bytes']['vectors'] * mb:.0f} MB",
        f"timing: one process, fastest of {report['repeats']} round(s)",
        "",
    ]
    header = ["row", "tokens", "wall s", "CPU s", "tokens/s", "tokens/CPU s", "vs stock", "read MB", "bucket MB"]
    table = [[r["label"], f"{r['tokens']:,}", f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
              f"{r['tokens_per_s'] / 1e6:.2f} M", f"{r['tokens_per_cpu_s'] / 1e6:.2f} M",
              "-" if r["vs_stock"] is None else f"{r['vs_stock']:.1f}x",
              f"{r['read_bytes'] * mb:.1f}", f"{r['bucket_bytes'] * mb:.1f}"] for r in report["rows"]]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in table]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=None, help="samples in the dataset (default 2000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per row (default 3)")
    parser.add_argument("--quick", action="store_true", help="40 samples, one round, no warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", metavar="DIR", help="where the dataset goes (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    samples = args.samples or (40 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="audiotok-reader-bench-")))
        report = measure(workdir, samples, repeats, warmup=not args.quick, seed=args.seed)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
