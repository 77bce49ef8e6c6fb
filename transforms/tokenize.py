"""The Tokenize stage: batching segments by length, running tokenizers under RunInference.

    segments -> BatchByLength -> RunInference(TokenizerModelHandler) -> samples | failures

* ``LengthBatcher`` (pure) buffers at most ``batch_buffer_s`` seconds of segments per bundle
  and hands out batches of similar lengths, bounded by padded seconds and count, so that
  padding stays small; ``plan_batches`` cuts what is left at the end of a bundle.
* ``tokenize_batch`` (pure) turns one batch into samples, splitting it on out-of-memory,
  retrying one by one on other errors, and dead-lettering the segment that fails alone;
  CUDA errors other than out-of-memory fail the bundle (``inference.AcceleratorError``).
* ``TokenizeSegments`` is the thin PTransform; model placement and sharing live in
  ``audiotok.transforms.inference``.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import uuid
from typing import Any, Generic, Sequence, TypeVar

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from audiotok.transforms import decode, failures, metrics
from audiotok.transforms.failures import AudiotokError, Failure
from audiotok.transforms.inference import (AUTOCAST_CHOICES, AcceleratorError, EncodeFn, check_device, is_accelerator_error,
                                  is_out_of_memory, loaded_tokenizers, report_loads, resolve_device)
from audiotok.transforms.records import Sample, Segment
from audiotok.transforms.dataset import count_tokens
from audiotok.transforms.tokenizers import chunking, registry
from audiotok.transforms.tokenizers.base import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["TokenizeConfig", "TokenizeSegments", "LengthBatcher", "loaded_tokenizers", "plan_batches",
           "resolve_device", "sample_meta", "stream_descriptions", "tokenize_batch"]

# Seconds of audio a bundle's batcher holds, per second of a batch, unless told otherwise:
# on segments spread evenly over 1-30 s this keeps padding under 4% (see LengthBatcher).
DEFAULT_BUFFER_BATCHES = 12
# Seconds of audio per batch on a GPU unless told otherwise.
GPU_BATCH_MAX_S = 240.0


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """How segments are tokenized.

    Attributes:
        specs: comma-separated tokenizer specs (``logmel,mfcc-kmeans[k=100]``).
        batch_max_s: seconds of audio per batch at most, padding included (a single longer
            segment makes a batch of its own); None: 240 where the tokenizers run on a GPU, and
            one segment per batch on a CPU, where batching buys nothing (one long segment
            already fills a core) and holding audio back to group lengths keeps the decoders
            idle and costs memory.
        batch_max_items: segments per batch at most.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` (every GPU, round-robin),
            ``cuda:N``, ``mps``.
        autocast: ``none``, ``bf16`` or ``fp16``: mixed precision for the tokenizers that
            declare it safe (``Tokenizer.autocast_safe``); the others run in float32.
        model_copies: None: on CUDA one copy per GPU shared by all SDK processes of a worker,
            elsewhere one per process; 0: one per SDK process; N: N copies per worker shared
            by its processes, round-robin over its GPUs.
        batch_buffer_s: seconds of audio one bundle's batcher holds to group similar lengths
            (memory: this x the sources' sample rate x 4 bytes per harness thread); None:
            12 x batch_max_s, and nothing when the batches are one segment on a CPU.
        torch_threads: torch intra-op threads per worker process for CPU inference; None: 1
            (one SDK process per core already fills a CPU worker; see ``inference.cpu_threads``).
    """

    specs: str = "logmel"
    batch_max_s: float | None = None
    batch_max_items: int = 64
    device: str = "auto"
    autocast: str = "none"
    model_copies: int | None = None
    batch_buffer_s: float | None = None
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        registry.create_all(self.specs)  # names and options are checked when the job is built
        if (self.batch_max_s is not None and self.batch_max_s <= 0) or self.batch_max_items < 1:
            raise ValueError(f"batch limits must be positive. Found: {self.batch_max_s} s, {self.batch_max_items}")
        check_device(self.device)
        if self.autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_CHOICES)}. Found: {self.autocast!r}")
        if self.model_copies is not None and self.model_copies < 0:
            raise ValueError(f"model_copies must be >= 0 (0: one per SDK process). Found: {self.model_copies}")
        if self.batch_buffer_s is not None and not self.batch_buffer_s > 0:
            raise ValueError(f"batch_buffer_s must be positive. Found: {self.batch_buffer_s}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1. Found: {self.torch_threads}")

    def tokenizers(self) -> list[Tokenizer]:
        return registry.create_all(self.specs)

    def length_rate(self) -> int:
        """The rate segment lengths are measured at when batching (segments keep their sources'
        rates, so lengths are compared in time): the highest any tokenizer takes."""
        return max(t.sample_rate for t in self.tokenizers())

    def batch_limits(self, device: str) -> tuple[float | None, float]:
        """(seconds of audio per batch at most, seconds a bundle's batcher holds at most) on
        ``device`` (resolved: ``cpu``, ``cuda:N``, ...). None as the first: one segment per batch."""
        on_cpu = device == "cpu"
        max_s = self.batch_max_s
        if max_s is None and not on_cpu:
            max_s = GPU_BATCH_MAX_S
        if self.batch_buffer_s is not None:
            return max_s, self.batch_buffer_s
        return max_s, (0.0 if max_s is None else DEFAULT_BUFFER_BATCHES * max_s)


def stream_descriptions(tokenizers: Sequence[Tokenizer]) -> dict[str, dict[str, Any]]:
    """Stream name -> its description for sample metadata (kind, rate, dtype, K, tokenizer...)."""
    out = {}
    for tok in tokenizers:
        described = tok.describe()
        for spec in tok.streams:
            out[spec.name] = {
                **spec.to_dict(),
                "sample_rate": tok.sample_rate,  # what the tokenizer resampled the segment to
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
    """The segment at ``rate``, resampled once from its source rate (``cache``: per segment,
    so each distinct tokenizer rate is computed once and no stream sees audio that went through
    another tokenizer's rate)."""
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


def _encode_directly(tokenizers: Sequence[Tokenizer]) -> EncodeFn:
    return lambda index, audios: tokenizers[index].encode_batch(list(audios))


def encode_segments(tokenizers: Sequence[Tokenizer], segments: Sequence[Segment],
                    encode: EncodeFn | None = None) -> list[dict[str, np.ndarray]]:
    """All streams of every tokenizer for each segment (raises on any failure).

    Args:
        tokenizers: what to encode with (their metadata: rates, streams, frame counts).
        segments: the batch.
        encode: runs ``tokenizers[i]`` on a batch of audios, possibly in another process
            (``LoadedTokenizers.encode``); by default the tokenizers themselves.
    """
    encode = encode or _encode_directly(tokenizers)
    caches: list[dict[int, np.ndarray]] = [{} for _ in segments]
    results: list[dict[str, np.ndarray]] = [{} for _ in segments]
    for index, tok in enumerate(tokenizers):
        audios = [_audio_at(seg, tok.sample_rate, cache) for seg, cache in zip(segments, caches)]
        encoded = encode(index, audios)
        if len(encoded) != len(audios):
            raise ValueError(f"{tok.name} returned {len(encoded)} results for {len(audios)} segments")
        for audio, streams, result in zip(audios, encoded, results):
            _check_shapes(tok, audio.shape[-1], streams)
            result.update({name: streams[name] for name in (s.name for s in tok.streams)})
    return results


def tokenize_batch(tokenizers: Sequence[Tokenizer], segments: Sequence[Segment],
                   encode: EncodeFn | None = None) -> list[Sample | Failure]:
    """Encodes a batch into one Sample or Failure per segment, in order.

    When the batch runs out of memory it is split in halves, down to single segments; when
    it fails otherwise each segment is retried alone. A segment that fails alone becomes a
    Failure (``out_of_memory`` or ``tokenizer_error``); the rest of the batch still comes out.

    Args:
        tokenizers: as for ``encode_segments``.
        segments: the batch.
        encode: as for ``encode_segments``.

    Raises:
        AcceleratorError: a CUDA error other than out-of-memory: the bundle must fail (and be
            retried) rather than dead-letter segments the device could not run.
    """
    descriptions = stream_descriptions(tokenizers)
    return _tokenize(tokenizers, list(segments), encode or _encode_directly(tokenizers), descriptions)


def _tokenize(tokenizers: Sequence[Tokenizer], segments: list[Segment], encode: EncodeFn,
              descriptions: dict[str, dict]) -> list[Sample | Failure]:
    try:
        encoded = encode_segments(tokenizers, segments, encode)
    except Exception as error:
        if is_accelerator_error(error):
            metrics.counter("accelerator_errors").inc()
            first = segments[0]
            raise AcceleratorError(
                f"CUDA error on a batch of {len(segments)} segment(s) starting with {first.key} "
                f"({first.source.uri}): {type(error).__name__}: {error}") from error
        if len(segments) == 1:
            return [_failure(segments[0], error)]
        if is_out_of_memory(error):
            half = (len(segments) + 1) // 2
            metrics.counter("oom_splits").inc()
            logger.warning("batch of %d segments ran out of memory; retrying as %d + %d", len(segments), half,
                           len(segments) - half)
            return (_tokenize(tokenizers, segments[:half], encode, descriptions)
                    + _tokenize(tokenizers, segments[half:], encode, descriptions))
        logger.warning("batch of %d failed (%s); retrying one by one", len(segments), error)
        return [out for seg in segments for out in _tokenize(tokenizers, [seg], encode, descriptions)]
    return [_sample_or_failure(seg, streams, descriptions) for seg, streams in zip(segments, encoded)]


def _sample_or_failure(segment: Segment, streams: dict[str, np.ndarray], descriptions: dict[str, dict]) -> Sample | Failure:
    """The sample of an encoded segment; a ``too_short`` Failure when a stream has no frame
    (a segment shorter than a tokenizer's hop: a sample with nothing to train on)."""
    empty = sorted(name for name, array in streams.items() if array.size == 0)
    if empty:
        error = AudiotokError(failures.TOO_SHORT, f"{segment.duration_s:.3f} s gives no frame of {', '.join(empty)}; "
                                                  "raise --min-segment-s", segment.source.uri)
        return Failure.from_error(segment.source.uri, error, "tokenize", start_s=segment.start_s, end_s=segment.end_s)
    return Sample(key=segment.key, meta=sample_meta(segment, streams, descriptions), streams=streams)


def _failure(segment: Segment, error: BaseException) -> Failure:
    failure = Failure.from_error(segment.source.uri, error, "tokenize", start_s=segment.start_s, end_s=segment.end_s)
    if is_out_of_memory(error) and failure.reason != failures.OUT_OF_MEMORY:
        failure = dataclasses.replace(failure, reason=failures.OUT_OF_MEMORY)
    return failure


# ---------------------------------------------------------------------------- batching


def plan_batches(lengths: Sequence[int], rate: int, max_s: float, max_items: int,
                 same_length_only: bool = False) -> list[list[int]]:
    """Groups segment indices into batches, longest first, bounded by padded seconds and count.

    Sorting by length keeps padding small: each batch's padded size is its first (longest)
    member times its size. ``same_length_only`` groups only identical lengths. The grouping is
    the one a model's forward passes use (``chunking.forward_groups``), in seconds.
    """
    return chunking.forward_groups(lengths, same_length_only, max_s * rate, max_items)


def length_at(segment: Segment, rate: int) -> int:
    """How long ``segment`` is in samples at ``rate`` (segments of different source rates are
    batched together, so the batcher measures them all at one rate)."""
    return int(round(segment.audio.shape[-1] * rate / segment.sample_rate))


def padding_of(lengths: Sequence[int]) -> tuple[int, int]:
    """(padding, padded size) of one batch, in samples: every member padded to the longest."""
    padded = max(lengths, default=0) * len(lengths)
    return padded - sum(lengths), padded


T = TypeVar("T")


class LengthBatcher(Generic[T]):
    """Groups items into batches of similar lengths while holding at most a bounded amount.

    Items are kept sorted by length. While the buffer holds more than ``buffer_samples``, it
    hands out the *full* batch (one that the limits would not let grow by one more item) of
    adjacent lengths that has the least padding (without a full one: the one holding the most
    samples), so dense length ranges go first and each batch is an adaptive length bucket.
    ``flush`` cuts what is left with ``plan_batches``.

    Padding, as a share of the padded samples, with 240 s batches of at most 64 segments
    (10,000 segments; buffer in batches):

        segment lengths               buffer 4x    8x    12x    16x   all in memory   arrival order
        spread evenly over 1-30 s        10.2%   5.5%   3.7%   2.8%        0.2%            41.9%
        70% 30 s windows, 30% tails       4.7%   1.9%   1.0%   0.7%        0.1%            14.3%

    Args:
        max_samples: padded samples per batch at most (longest member x members); a single
            longer item makes a batch alone.
        max_items: items per batch at most.
        buffer_samples: samples held (unpadded) before full batches are handed out.
        same_length_only: batch only items of identical length (models whose output depends
            on padding).
    """

    def __init__(self, max_samples: int, max_items: int, buffer_samples: int, same_length_only: bool = False):
        if max_samples < 1 or max_items < 1 or buffer_samples < 0:
            raise ValueError(f"need max_samples >= 1, max_items >= 1, buffer_samples >= 0. Found: {max_samples}, "
                             f"{max_items}, {buffer_samples}")
        self.max_samples = max_samples
        self.max_items = max_items
        self.buffer_samples = buffer_samples
        self.same_length_only = same_length_only
        self._lengths: list[int] = []  # sorted ascending
        self._items: list[T] = []  # aligned with _lengths
        self._held = 0

    @property
    def held_samples(self) -> int:
        return self._held

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, length: int) -> list[list[T]]:
        """Buffers ``item`` (``length`` samples); returns the batches that are ready (often none)."""
        at = bisect.bisect_right(self._lengths, length)
        self._lengths.insert(at, length)
        self._items.insert(at, item)
        self._held += length
        ready = []
        while self._held > self.buffer_samples and self._items:
            first, last = self._best_window()
            ready.append(self._take(first, last))
        return ready

    def flush(self) -> list[list[T]]:
        """Every buffered item, in batches (longest first); the buffer is empty afterwards."""
        plan = plan_batches(self._lengths, 1, self.max_samples, self.max_items, self.same_length_only)
        batches = [[self._items[i] for i in batch] for batch in plan]
        self._lengths, self._items, self._held = [], [], 0
        return batches

    def _limit(self, length: int) -> int:
        return min(self.max_items, max(1, self.max_samples // max(length, 1)))

    def _best_window(self) -> tuple[int, int]:
        """(first, last) index of the batch to hand out: the full window with the least
        padding; without a full one, the window holding the most samples."""
        lengths = self._lengths
        prefix = [0, *itertools.accumulate(lengths)]
        best_full: tuple[float, int, int] | None = None
        best_any: tuple[int, int, int] | None = None
        run_start = 0  # first index of the run of equal lengths ending at `last`
        for last, longest in enumerate(lengths):
            if last and lengths[last - 1] != longest:
                run_start = last
            limit = self._limit(longest)
            first = max(0, last - limit + 1, run_start if self.same_length_only else 0)
            size, real = last - first + 1, prefix[last + 1] - prefix[first]
            if size == limit:
                padding = 1.0 - real / (longest * size) if longest else 0.0
                if best_full is None or padding < best_full[0]:
                    best_full = (padding, first, last)
            if best_any is None or real > best_any[0]:
                best_any = (real, first, last)
        chosen = best_full[1:] if best_full is not None else best_any[1:]  # type: ignore[index]
        return chosen[0], chosen[1]

    def _take(self, first: int, last: int) -> list[T]:
        batch = self._items[first:last + 1]
        self._held -= sum(self._lengths[first:last + 1])
        del self._items[first:last + 1], self._lengths[first:last + 1]
        return batch


# ---------------------------------------------------------------------------- Beam


class _BatchByLengthFn(beam.DoFn):
    """Segment -> list[Segment]: batches of similar lengths, per bundle (no shuffle of audio)."""

    def __init__(self, config: TokenizeConfig):
        self._config = config

    def setup(self) -> None:
        tokenizers = self._config.tokenizers()
        self._rate = rate = self._config.length_rate()
        max_s, buffer_s = self._config.batch_limits(resolve_device(self._config.device))
        # One segment per batch: any length fits, one item at most.
        self._max_samples = int(max_s * rate) if max_s is not None else 1
        self._max_items = self._config.batch_max_items if max_s is not None else 1
        self._buffer_samples = int(buffer_s * rate)
        self._same_length_only = not all(t.padding_invariant for t in tokenizers)
        self._batcher: LengthBatcher[Segment] | None = None

    def start_bundle(self) -> None:
        self._batcher = LengthBatcher(self._max_samples, self._max_items, self._buffer_samples,
                                      self._same_length_only)

    def process(self, segment: Segment):
        for batch in self._batcher.add(segment, length_at(segment, self._rate)):
            yield self._counted(batch)

    def finish_bundle(self):
        for batch in self._batcher.flush():
            yield GlobalWindows.windowed_value(self._counted(batch))

    def _counted(self, batch: list[Segment]) -> list[Segment]:
        padding, padded = padding_of([length_at(s, self._rate) for s in batch])
        metrics.counter("padding_samples").inc(padding)
        metrics.counter("batched_samples").inc(padded)
        metrics.distribution("batch_size").update(len(batch))
        metrics.distribution("batch_padding_permille").update(1000 * padding // max(padded, 1))
        return batch


class _RouteFn(beam.DoFn):
    """Sample | Failure -> samples (main) and failures, counted."""

    def __init__(self, config: TokenizeConfig):
        self._config = config

    def setup(self) -> None:
        self._descriptions = stream_descriptions(self._config.tokenizers())

    def process(self, out: Sample | Failure):
        report_loads()
        if isinstance(out, Failure):
            metrics.failure(out.reason, "tokenize")
            yield beam.pvalue.TaggedOutput("failures", out)
            return
        metrics.counter("samples").inc()
        for name, n in count_tokens(out.streams, self._descriptions).items():
            metrics.counter(f"tokens_{name}").inc(n)
        yield out

    def finish_bundle(self) -> None:
        report_loads()


class TokenizeSegments(beam.PTransform):
    """PCollection[Segment] -> Sample (main, ``.samples``) and Failure (``.failures``).

    ``BatchByLength`` -> ``RunInference`` (``inference.TokenizerModelHandler``, pre-batched)
    -> ``RouteOutputs``.
    """

    def __init__(self, config: TokenizeConfig):
        super().__init__()
        self.config = config
        self._tag = uuid.uuid4().hex[:16]  # names this job's machine-wide device counter

    def model_handler(self):
        """The ``inference.TokenizerModelHandler`` of this step."""
        from audiotok.transforms.inference import TokenizerModelHandler

        c = self.config
        return TokenizerModelHandler(c.specs, c.device, tokenize_batch, autocast=c.autocast,
                                     model_copies=c.model_copies, tag=self._tag, torch_threads=c.torch_threads)

    def expand(self, segments):
        from apache_beam.ml.inference.base import RunInference  # imports torch: only when a job is built

        batches = segments | "BatchByLength" >> beam.ParDo(_BatchByLengthFn(self.config))
        results = batches | "Encode" >> RunInference(self.model_handler().with_no_batching(),
                                                     model_identifier=f"audiotok-{self._tag}")
        return results | "RouteOutputs" >> beam.ParDo(_RouteFn(self.config)).with_outputs("failures", main="samples")
