"""Small datasets for tests: synthetic ones written with the real shard writer, and one real run.

Plain functions, no pytest fixtures::

    index = write_dataset(tmp_path / "ds", synthetic_samples(6, seed=1), max_samples=4)
    out = example_run()     # a real `audiotok tokenize` run on part of examples/corpus (cached per process)
    members = read_members(shard); write_members(shard, members)   # to damage shards on purpose
    index = exclude_source(out, index, key)                          # as an incremental refresh would
    index = flat_index(out); write_flat_index(out, index)           # the rows inline, to edit them

Synthetic samples carry the metadata the pipeline writes (``audiotok.transforms.tokenize.sample_meta``)
and three streams by default: ``codec`` (int16 [4, T] codes, 1024 per codebook, 75 Hz),
``units`` (int16 [T], 100 units, 50 Hz) and ``fbank`` (float16 [T, 8] vectors, 100 Hz).
Random values come from a generator seeded per call; global RNG state is untouched.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from audiotok.transforms import dataset, shards
from audiotok.transforms.failures import Failure
from audiotok.transforms.records import AudioRef, Sample, Segment
from audiotok.transforms.shards import ShardConfig, ShardWriter
from audiotok.transforms.segment import segment_key
from audiotok.transforms.tokenize import sample_meta
from audiotok.transforms.tokenizers.base import StreamSpec

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000

CODEC = StreamSpec("codec", "codes", 75.0, "int16", num_codebooks=4, codebook_size=1024)
UNITS = StreamSpec("units", "units", 50.0, "int16", codebook_size=100)
FBANK = StreamSpec("fbank", "vectors", 100.0, "float16", dim=8)
DEFAULT_SPECS: tuple[StreamSpec, ...] = (CODEC, UNITS, FBANK)


def describe(specs: Sequence[StreamSpec]) -> dict[str, dict[str, Any]]:
    """Stream descriptions as ``audiotok.transforms.tokenize.stream_descriptions`` writes them."""
    return {s.name: {**s.to_dict(), "family": "test", "tokenizer": f"synthetic-{s.name}", "tokenizer_version": "1",
                     "fingerprint": hashlib.sha256(s.name.encode()).hexdigest()[:16], "weights": None}
            for s in specs}


def synthetic_sample(key: str | None, duration_s: float, rng: np.random.Generator,
                     specs: Sequence[StreamSpec] = DEFAULT_SPECS, uri: str = "",
                     manifest: Mapping[str, Any] | None = None,
                     code_probs: Mapping[str, np.ndarray] | None = None) -> Sample:
    """One sample with random streams shaped as ``specs`` say for ``duration_s``.

    Args:
        key: the sample key; None: the pipeline's key for the segment at 0 s of ``uri``.
        code_probs: stream name -> probabilities over its codes (e.g. to leave dead codes).
    """
    streams: dict[str, np.ndarray] = {}
    for s in specs:
        t = int(round(duration_s * s.frame_rate_hz))
        if s.kind == "vectors":
            streams[s.name] = rng.standard_normal((t, s.dim)).astype(np.float16)
            continue
        probs = (code_probs or {}).get(s.name)
        shape = s.shape(t)
        if probs is None:
            values = rng.integers(0, s.codebook_size, size=shape)
        else:
            values = rng.choice(s.codebook_size, size=shape, p=probs)
        streams[s.name] = values.astype(np.int16)
    ref = AudioRef(uri=uri or f"/data/corpus/{key}.wav", meta=manifest or {})
    segment = Segment(key=key or segment_key(ref, 0.0), source=ref, start_s=0.0, end_s=duration_s,
                      sample_rate=SAMPLE_RATE, audio=np.zeros(int(round(duration_s * SAMPLE_RATE)), dtype=np.float32))
    return Sample(key=segment.key, meta=sample_meta(segment, streams, describe(specs)), streams=streams)


def synthetic_samples(n: int, seed: int = 0, specs: Sequence[StreamSpec] = DEFAULT_SPECS,
                      min_s: float = 0.5, max_s: float = 3.0, **kwargs: Any) -> list[Sample]:
    """``n`` samples of files ``/data/corpus/src{i % 3}/clip{i:02d}.wav``, keyed as the pipeline
    keys them (``clip00-<source hash>-000000000``: sorted by i), durations uniform in
    [min_s, max_s] (to 10 ms)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        duration = round(float(rng.uniform(min_s, max_s)), 2)
        out.append(synthetic_sample(None, duration, rng, specs, uri=f"/data/corpus/src{i % 3}/clip{i:02d}.wav",
                                    **kwargs))
    return out


def write_dataset(output: str | os.PathLike, samples: Sequence[Sample], specs: Sequence[StreamSpec] = DEFAULT_SPECS,
                  max_samples: int = 1000, failures: Sequence[Failure] = (), separate_vectors: bool = False) -> dict:
    """Writes samples (and dead letters) with ``ShardWriter`` + ``finalize``; returns the index
    with its rows inline (:func:`flat_index`). ``separate_vectors``: the vector streams in a shard
    set of their own."""
    output = str(output)
    temp = os.path.join(output, dataset.TMP_DIR, "test")
    descriptions = describe(specs)
    written = []
    with ShardWriter(temp, ShardConfig(max_samples=max_samples, separate_vectors=separate_vectors),
                     descriptions) as writer:
        for sample in samples:
            written += writer.add(sample)
        written += writer.close()
    info = {"tokenizers": [], "streams": descriptions, "settings": {}}
    inputs = {s.meta["source"]["uri"]: AudioRef(uri=s.meta["source"]["uri"]) for s in samples}
    inputs.update({f.uri: AudioRef(uri=f.uri) for f in failures})
    shards.finalize(output, temp, written, info, listed=list(inputs.values()), selected=list(inputs),
                    failures=failures)
    return flat_index(output)


def flat_index(output: str | os.PathLike) -> dict:
    """The index with its shard and failure rows inline (``shards``, ``failures``), for tests to
    edit and :func:`write_flat_index` to write back into the part files."""
    index = dataset.read_index(str(output))
    return {**index, "shards": list(dataset.shard_rows(str(output), index)),
            "failures": list(dataset.failure_rows(str(output), index))}


def write_flat_index(output: str | os.PathLike, index: dict) -> None:
    """Writes an index edited as :func:`flat_index` gave it: its rows go back to the rows part of
    their url (rows that name no part file get one), the rest to ``index.json``."""
    output = str(output)
    index = json.loads(json.dumps(index))
    layout = index["layout"]
    parts = layout["parts"]
    by_part = [{"shards": [], "failures": []} for _ in range(parts)]
    for kind in ("shards", "failures"):
        for row in index.pop(kind):
            by_part[dataset.part_of(dataset.slot_of(row["url"]), parts)][kind].append(row)
    for q, rows in enumerate(by_part):
        rel = layout["rows"][q] or dataset.rows_part_path(index["dataset_version"], q)
        layout["rows"][q] = rel
        with open(os.path.join(output, rel), "w") as f:
            json.dump(rows, f, indent=1, sort_keys=True)
    with open(os.path.join(output, dataset.INDEX_NAME), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)


@functools.lru_cache(maxsize=None)
def example_run() -> str:
    """A real ``audiotok tokenize`` run (``tokenize.run``, mfcc-kmeans with k=32, shards of 3
    samples) on the example corpus's ``en/a`` and ``en/b`` files, once per process; returns
    its folder, which holds vocab.json and the card too.

    To keep it quick, the codebook is fitted here on synthetic speech-like audio (with
    ``fit_kmeans``'s own frame sampling and fit) instead of by a second Beam job.
    """
    from audiotok.pipelines import fit_kmeans, tokenize
    from audiotok.runners import profiles
    from audio_fixtures import synth_speechlike
    from audiotok.transforms.match import MatchConfig
    from audiotok.transforms.shards import ShardConfig as Shards
    from audiotok.transforms.tokenize import TokenizeConfig
    from audiotok.transforms.tokenizers import registry

    root = tempfile.mkdtemp(prefix="audiotok-example-run-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    output = os.path.join(root, "out")  # a dataset is written only into a new or empty folder
    codebook = os.path.join(root, "codebook-k32.safetensors")
    fit = fit_kmeans.FitConfig(spec="mfcc-kmeans[k=32]", output=codebook, max_frames=2000)
    features = registry.create(fit.spec).features([synth_speechlike(4.0, SAMPLE_RATE, seed=s)[0] for s in range(3)])
    sampled = [rf for i, f in enumerate(features) for rf in fit_kmeans.sample_frames(f"synth{i}", f, 300, fit.seed)]
    fit_kmeans.write_codebook(sampled, fit)

    corpus = REPO / "examples" / "corpus" / "en"
    config = tokenize.JobConfig(
        output=output,
        match=MatchConfig(patterns=(str(corpus / "a" / "*"), str(corpus / "b" / "*"))),
        tokenize=TokenizeConfig(specs=f"mfcc-kmeans[k=32,codebook={codebook}]"),
        shards=Shards(max_samples=3),
    )
    tokenize.run(config, profiles.pipeline_options("direct", []))
    return output


def read_members(shard: str | os.PathLike) -> list[tuple[str, bytes]]:
    """(name, bytes) of each member of a tar, in order."""
    with tarfile.open(shard) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def write_members(shard: str | os.PathLike, members: Sequence[tuple[str, bytes]]) -> int:
    """Writes a tar of regular files as given (any names, duplicates included); returns its size."""
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return os.path.getsize(shard)


def exclude_source(output: str | os.PathLike, index: dict, key: str) -> dict:
    """Marks the source of sample ``key`` superseded, as an incremental refresh would: its shard
    row gets ``excluded_sources`` and fewer ``live_samples``, the totals lose its samples.
    Rewrites and returns the index (rows inline, as :func:`flat_index` gives it)."""

    index = flat_index(output) if "shards" not in index else index
    source = dataset.source_of_key(key)
    for row in index["shards"]:
        gone = [(n, d) for n, d in read_members(os.path.join(str(output), row["url"]))
                if n.endswith(".json") and dataset.source_of_key(n.split(".")[0]) == source]
        if not gone:
            continue
        row["excluded_sources"] = sorted({*row.get("excluded_sources", []), source})
        row["live_samples"] = row.get("live_samples", row["samples"]) - len(gone)
        for _, data in gone:
            meta = json.loads(data)
            index["totals"]["samples"] -= 1
            index["totals"]["audio_s"] = round(index["totals"]["audio_s"] - meta["duration_s"], 3)
            for name, d in meta["streams"].items():
                n = d["shape"][0] if d["kind"] == "vectors" else int(np.prod(d["shape"]))
                index["totals"]["tokens"][name] -= n
    write_flat_index(output, index)
    return index
