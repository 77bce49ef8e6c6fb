"""Fit a k-means codebook from a corpus: ``audiotok fit-kmeans``.

match -> decode -> segment -> resample -> features -> deterministic frame sample -> k-means
-> one codebook file (safetensors). Works for any k-means tokenizer: the features are the
tokenizer's own (MFCC for ``mfcc-kmeans``, SSL layers for the others).

    python -m audiotok.pipelines.fit_kmeans --input 'corpus/**/*' --tokenizer 'mfcc-kmeans[k=100]' \
        --output km100.safetensors
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from typing import Iterator, Sequence

import apache_beam as beam
import numpy as np

from audiotok.runners import profiles
from audiotok.transforms import metrics, storage
from audiotok.transforms.decode import DecodeConfig, resample
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.read import ReadSegments
from audiotok.transforms.records import Segment
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.tokenize import loaded_tokenizers
from audiotok.transforms.tokenizers import kmeans, registry
from audiotok.transforms.tokenizers.spectral import KMeansTokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Attributes:
        output: codebook URL to write (``.safetensors``).
        spec: the k-means tokenizer to fit a codebook for (its k and features), e.g.
            ``mfcc-kmeans[k=100]``.
        max_frames: frames sampled from the corpus at most.
        frames_per_segment: frames one segment contributes at most.
        seed: k-means seed.
        device: where features are computed: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    """

    output: str
    spec: str = "mfcc-kmeans"
    max_frames: int = 200_000
    frames_per_segment: int = 300
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        tok = registry.create(self.spec)
        if not isinstance(tok, KMeansTokenizer):
            known = [n for n, e in registry.entries().items() if issubclass(e.factory, KMeansTokenizer)]
            raise ValueError(f"{self.spec!r} is not a k-means tokenizer; k-means tokenizers: {', '.join(known)}")
        storage.check_url(self.output)
        if self.max_frames < tok.config.k or self.frames_per_segment < 1:
            raise ValueError(f"max_frames must be >= k={tok.config.k} and frames_per_segment >= 1")

    def tokenizer(self) -> KMeansTokenizer:
        return registry.create(self.spec)


def frame_ranks(key: str, n_frames: int, seed: int) -> np.ndarray:
    """A deterministic pseudo-random rank per frame (uint64), from the segment key and seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.integers(0, np.iinfo(np.int64).max, size=n_frames, dtype=np.int64)


def sample_frames(key: str, features: np.ndarray, per_segment: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """(rank, frame) for the ``per_segment`` lowest-ranked frames of one segment."""
    ranks = frame_ranks(key, features.shape[0], seed)
    keep = np.argsort(ranks, kind="stable")[:per_segment]
    return [(int(ranks[i]), features[i]) for i in keep]


class _FeatureSampleFn(beam.DoFn):
    def __init__(self, config: FitConfig):
        self._config = config

    def setup(self) -> None:
        # Features only: a k-means tokenizer without its codebook still computes them.
        self._tok: KMeansTokenizer = loaded_tokenizers(self._config.spec, self._config.device)[0]

    def process(self, segment: Segment) -> Iterator[tuple[int, np.ndarray]]:
        # From the source rate straight to the tokenizer's, as the tokenize job does.
        audio = resample(segment.audio, segment.sample_rate, self._tok.sample_rate)
        feats = self._tok.features([audio])[0]
        metrics.counter("kmeans_frames_seen").inc(int(feats.shape[0]))
        yield from sample_frames(segment.key, feats, self._config.frames_per_segment, self._config.seed)


def fit_codebook(sampled: Sequence[tuple[int, np.ndarray]], config: FitConfig) -> kmeans.Codebook:
    """k-means over the sampled frames (in rank order, so the result does not depend on the runner)."""
    tok = config.tokenizer()
    ordered = sorted(sampled, key=lambda rf: rf[0])
    if len(ordered) < tok.config.k:
        raise ValueError(
            f"only {len(ordered)} frames were sampled from the input; k={tok.config.k} needs at least that many "
            "(add audio, or lower k)")
    x = np.stack([f for _, f in ordered]).astype(np.float32)
    result = kmeans.fit(x, tok.config.k, seed=config.seed)
    meta = kmeans.describe_fit(result, n_frames=len(x), seed=config.seed, extra={
        "tokenizer": tok.name,
        "tokenizer_version": tok.version,
        "features": tok.feature_fingerprint(),
        "feature_config": json.dumps(tok.feature_config(), sort_keys=True),
    })
    return kmeans.Codebook(centroids=result.centroids, metadata=meta)


def write_codebook(sampled: Sequence[tuple[int, np.ndarray]], config: FitConfig) -> str:
    book = fit_codebook(sampled, config)
    storage.write_bytes(config.output, book.to_bytes())
    logger.info("wrote codebook k=%d D=%d from %s frames to %s", book.k, book.dim, book.metadata["n_frames"],
                config.output)
    return config.output


def build(p: beam.Pipeline, match: MatchConfig, decode: DecodeConfig, segment: SegmentConfig, fit: FitConfig):
    """Adds the fitting steps to ``p``; returns the PCollection with the codebook's URL."""
    read = p | "ReadSegments" >> ReadSegments(match, decode, segment)
    return (read["segments"]
            | "FeatureSample" >> beam.ParDo(_FeatureSampleFn(fit))
            | "KeepLowestRanks" >> beam.combiners.Top.Smallest(fit.max_frames, key=lambda rf: rf[0])
            | "FitKMeans" >> beam.Map(write_codebook, fit))


def run(match: MatchConfig, decode: DecodeConfig, segment: SegmentConfig, fit: FitConfig,
        beam_options: beam.options.pipeline_options.PipelineOptions) -> str:
    """Runs the fitting pipeline to completion; returns the codebook URL."""
    with beam.Pipeline(options=beam_options) as p:
        build(p, match, decode, segment, fit)
    if not storage.exists(fit.output):
        raise RuntimeError(f"fit-kmeans finished without writing {fit.output}: no audio was read")
    return fit.output


def main(argv: list[str] | None = None) -> int:
    from audiotok.pipelines import options as opts  # the flags are built from this module's FitConfig

    args, beam_args = opts.parse(opts.FitKMeansOptions, list(sys.argv[1:] if argv is None else argv),
                                 prog="audiotok fit-kmeans")
    if not args.output:
        raise SystemExit("audiotok fit-kmeans: give --output (the codebook file to write)")
    try:
        fit = opts.fit_config(args, spec=registry.absolute_locations(args.tokenizer))
        match, decode, segment = opts.match_config(args), opts.decode_config(args), opts.segment_config(args)
        beam_options = profiles.pipeline_options(args.profile, beam_args)
    except ValueError as e:
        raise SystemExit(f"audiotok fit-kmeans: {e}") from None
    url = run(match, decode, segment, fit, beam_options)
    book = kmeans.Codebook.from_bytes(storage.read_bytes(url), url)
    print(f"codebook: {url} (k={book.k}, D={book.dim}, {book.metadata.get('n_frames')} frames, "
          f"inertia {book.metadata.get('inertia')})")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
