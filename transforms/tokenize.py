"""The Tokenize stage: batching segments, loading tokenizers once per process, encoding.

``tokenize_batch`` is the pure core (segments -> samples or failures); ``TokenizeSegments``
is the thin PTransform around it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from transforms import decode, failures, metrics
from transforms.failures import Failure
from transforms.records import Sample, Segment
from transforms.shards import count_tokens
from transforms.tokenizers import registry
from transforms.tokenizers.base import Tokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """How segments are tokenized.

    Attributes:
        specs: comma-separated tokenizer specs (``logmel,mfcc-kmeans[k=100]``).
        batch_max_s: seconds of audio per batch at most (padding included).
        batch_max_items: segments per batch at most.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
    """

    specs: str = "logmel"
    batch_max_s: float = 240.0
    batch_max_items: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        registry.create_all(self.specs)  # names and options are checked when the job is built
        if self.batch_max_s <= 0 or self.batch_max_items < 1:
            raise ValueError(f"batch limits must be positive. Found: {self.batch_max_s} s, {self.batch_max_items}")

    def tokenizers(self) -> list[Tokenizer]:
        return registry.create_all(self.specs)

    def sample_rate(self) -> int:
        """The rate segments are cut at: the highest any tokenizer takes (others resample down)."""
        return max(t.sample_rate for t in self.tokenizers())


_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], list[Tokenizer]] = {}


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def loaded_tokenizers(specs: str, device: str) -> list[Tokenizer]:
    """The tokenizers of ``specs``, loaded once per process and shared by its threads."""
    key = (specs, resolve_device(device))
    with _LOCK:
        if key not in _LOADED:
            tokenizers = registry.create_all(specs)
            for tok in tokenizers:
                tok.load(key[1])
            _LOADED[key] = tokenizers
            metrics.counter("model_loads").inc()
            logger.info("loaded tokenizers %s on %s", specs, key[1])
        return _LOADED[key]


def stream_descriptions(tokenizers: Sequence[Tokenizer]) -> dict[str, dict[str, Any]]:
    """Stream name -> its description for sample metadata (kind, rate, dtype, K, tokenizer...)."""
    out = {}
    for tok in tokenizers:
        described = tok.describe()
        for spec in tok.streams:
            out[spec.name] = {
                **spec.to_dict(),
                "family": tok.family,
                "tokenizer": tok.name,
                "tokenizer_version": tok.version,
                "fingerprint": described["fingerprint"],
                "weights": described["weights"],
            }
    return out


def sample_meta(segment: Segment, streams: dict[str, np.ndarray], descriptions: dict[str, dict]) -> dict[str, Any]:
    """The ``KEY.json`` of one sample."""
    meta: dict[str, Any] = {
        "key": segment.key,
        "source": {
            "uri": segment.source.uri,
            **({"size_bytes": segment.source.size_bytes} if segment.source.size_bytes is not None else {}),
            **({"version": segment.source.version} if segment.source.version else {}),
            **dict(segment.source_info),
        },
        "start_s": round(segment.start_s, 6),
        "end_s": round(segment.end_s, 6),
        "duration_s": round(segment.duration_s, 6),
        "sample_rate": segment.sample_rate,
        "streams": {
            name: {**descriptions[name], "shape": list(array.shape), "dtype": str(array.dtype)}
            for name, array in sorted(streams.items())
        },
    }
    meta.update(dict(segment.source.meta))
    return meta


def _audio_at(segment: Segment, rate: int, cache: dict[int, np.ndarray]) -> np.ndarray:
    if rate not in cache:
        cache[rate] = decode.resample(segment.audio, segment.sample_rate, rate)
    return cache[rate]


def _check_shapes(tok: Tokenizer, n_samples: int, arrays: dict[str, np.ndarray]) -> None:
    for spec in tok.streams:
        frames = tok.stream_num_frames(spec, n_samples)
        if spec.name not in arrays:
            raise ValueError(f"{tok.name} returned no {spec.name!r} stream")
        array = arrays[spec.name]
        if spec.kind == "durations" or (spec.kind == "units" and f"{spec.name}-durations" in arrays):
            continue  # run-length deduplicated: fewer frames than the audio holds
        if tuple(array.shape) != spec.shape(frames):
            raise ValueError(f"{tok.name} returned {spec.name} of shape {array.shape}; expected {spec.shape(frames)}")


def encode_segments(tokenizers: Sequence[Tokenizer], segments: Sequence[Segment]) -> list[dict[str, np.ndarray]]:
    """All streams of every tokenizer for each segment (raises on any failure)."""
    caches: list[dict[int, np.ndarray]] = [{} for _ in segments]
    results: list[dict[str, np.ndarray]] = [{} for _ in segments]
    for tok in tokenizers:
        audios = [_audio_at(seg, tok.sample_rate, cache) for seg, cache in zip(segments, caches)]
        for audio, encoded, result in zip(audios, tok.encode_batch(audios), results):
            _check_shapes(tok, audio.shape[-1], encoded)
            result.update({name: encoded[name] for name in (s.name for s in tok.streams)})
    return results


def tokenize_batch(tokenizers: Sequence[Tokenizer], segments: Sequence[Segment]) -> list[Sample | Failure]:
    """Encodes a batch; when the batch fails, each segment is retried alone, and a segment
    that fails alone becomes a Failure (the rest of the batch still comes out)."""
    descriptions = stream_descriptions(tokenizers)
    try:
        encoded = encode_segments(tokenizers, segments)
    except Exception as batch_error:
        if len(segments) == 1:
            seg = segments[0]
            return [Failure.from_error(seg.source.uri, batch_error, "tokenize", start_s=seg.start_s, end_s=seg.end_s)]
        logger.warning("batch of %d failed (%s); retrying one by one", len(segments), batch_error)
        return [out for seg in segments for out in tokenize_batch(tokenizers, [seg])]
    return [Sample(key=seg.key, meta=sample_meta(seg, streams, descriptions), streams=streams)
            for seg, streams in zip(segments, encoded)]


def plan_batches(lengths: Sequence[int], rate: int, max_s: float, max_items: int,
                 same_length_only: bool = False) -> list[list[int]]:
    """Groups segment indices into batches, longest first, bounded by padded seconds and count.

    Sorting by length keeps padding small: each batch's padded size is its first (longest)
    member times its size. ``same_length_only`` groups only identical lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        padded_s = longest * (len(current) + 1) / rate
        if current and (len(current) >= max_items or padded_s > max_s
                        or (same_length_only and lengths[i] != longest)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class _TokenizeFn(beam.DoFn):
    def __init__(self, config: TokenizeConfig):
        self._config = config

    def setup(self) -> None:
        self._tokenizers = loaded_tokenizers(self._config.specs, self._config.device)
        self._same_length_only = not all(t.padding_invariant for t in self._tokenizers)
        self._descriptions = stream_descriptions(self._tokenizers)
        self._buffer: list[Segment] = []
        self._buffered_s = 0.0

    def start_bundle(self) -> None:
        self._buffer = []
        self._buffered_s = 0.0

    def process(self, segment: Segment):
        self._buffer.append(segment)
        self._buffered_s += segment.duration_s
        if self._buffered_s >= 4 * self._config.batch_max_s or len(self._buffer) >= 4 * self._config.batch_max_items:
            yield from self._flush(windowed=False)

    def finish_bundle(self):
        yield from self._flush(windowed=True)

    def _flush(self, windowed: bool):
        segments, self._buffer, self._buffered_s = self._buffer, [], 0.0
        if not segments:
            return
        rate = segments[0].sample_rate
        lengths = [s.audio.shape[-1] for s in segments]
        for batch in plan_batches(lengths, rate, self._config.batch_max_s, self._config.batch_max_items,
                                  self._same_length_only):
            padded = max(lengths[i] for i in batch) * len(batch)
            metrics.counter("padding_samples").inc(padded - sum(lengths[i] for i in batch))
            metrics.counter("batched_samples").inc(padded)
            metrics.distribution("batch_size").update(len(batch))
            for out in tokenize_batch(self._tokenizers, [segments[i] for i in batch]):
                if isinstance(out, Failure):
                    metrics.failure(out.reason, "tokenize")
                    value = beam.pvalue.TaggedOutput("failures", GlobalWindows.windowed_value(out)
                                                     if windowed else out)
                else:
                    metrics.counter("samples").inc()
                    for name, n in count_tokens(out.streams, self._descriptions).items():
                        metrics.counter(f"tokens_{name}").inc(n)
                    value = GlobalWindows.windowed_value(out) if windowed else out
                yield value


class TokenizeSegments(beam.PTransform):
    """PCollection[Segment] -> Sample (main) and Failure (``failures``)."""

    def __init__(self, config: TokenizeConfig):
        super().__init__()
        self.config = config

    def expand(self, segments):
        return segments | "Encode" >> beam.ParDo(_TokenizeFn(self.config)).with_outputs("failures", main="samples")
