"""Cutting audio into segments, naming them, and spreading long files over workers.

Segmenters (``SegmentConfig.segmenter``; see ``transforms/SEGMENTERS.md``):

* ``fixed`` (default): consecutive windows of ``segment_s`` seconds, the last one kept when it
  lasts at least ``min_segment_s``.
* ``vad``: Silero VAD; ``energy``: an energy detector with no model. Both cut speech into
  segments of ``min_segment_s``..``segment_s`` seconds (``transforms/vad.py``); the time left
  out is counted (``nonspeech_ms``), not tokenized.

Short files (up to ``split_s`` seconds by their header) are decoded whole and segmented in
memory. Longer ones are never held whole: the decoder plans them into work items of about
``split_s`` seconds (``transforms/decode.py``), the items are reshuffled over the workers, and
each item is decoded in chunks by the decoder (behind its process boundary) and segmented on
its own (:func:`segment_work_item`).

A manifest may give a timed transcript (``words``: [{start, end, word}] or ``segments``:
[{start, end, text}], seconds in the source); each segment then carries the entries whose
midpoint it holds, with times relative to the segment start, and their ``text``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import posixpath
import re
import unicodedata
from typing import Any, Callable, Iterable, Iterator, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from audiotok.transforms import failures, metrics, vad
from audiotok.transforms.decode import (DEFAULT_CHUNK_S, QUIET_SEARCH_S, SEGMENTERS, DecodeConfig, Plan, SplitConfig,
                                        WorkItem, cut_stream, resample, resample_stream)
from audiotok.transforms.failures import AudiotokError, Failure
from audiotok.transforms.progress import Progress
from audiotok.transforms.records import AudioRef, Decoded, Segment
from audiotok.transforms.vad import VAD_RATE, VadConfig

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
KEY_STEM_CHARS = 40

# The speech segmenters score a work item, then cut it: the item's audio (at the source rate)
# is kept between the two passes up to this size (a 10-minute item at 48 kHz: 110 MiB), and
# decoded a second time beyond it (an item of a file whose header gives no length).
ITEM_BUFFER_BYTES = 128 << 20
# A stretch is resampled for the speech detectors from this much earlier (the resampler's warm-up).
VAD_PREROLL_S = 0.25


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """How audio becomes segments.

    Attributes:
        segment_s: ``fixed``: window length; ``vad``/``energy``: the longest segment (a longer
            stretch of speech is split at its quietest point), seconds.
        min_segment_s: shorter segments (a fixed tail, a short file, a short burst of speech)
            are dropped.
        segmenter: ``fixed``, ``vad`` (Silero) or ``energy``.
        vad: speech detection settings (``vad`` and ``energy``).
        split_s: files longer than this (by their header) are streamed and split into work
            items of about this many seconds spread over the workers; None or 0: every file
            is decoded whole.
        chunk_s: seconds of source audio decoded at a time when streaming (memory, not results:
            the segments are the same for any value).
    """

    segment_s: float = 30.0
    min_segment_s: float = 1.0
    segmenter: str = "fixed"
    vad: VadConfig = VadConfig()
    split_s: float | None = 600.0
    chunk_s: float = DEFAULT_CHUNK_S

    def __post_init__(self) -> None:
        if not self.segment_s > 0:
            raise ValueError(f"segment_s must be > 0. Found: {self.segment_s}")
        if not 0 <= self.min_segment_s <= self.segment_s:
            raise ValueError(f"min_segment_s must be in [0, segment_s={self.segment_s}]. Found: {self.min_segment_s}")
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"unknown segmenter {self.segmenter!r}; known: {', '.join(SEGMENTERS)}")
        if not isinstance(self.vad, VadConfig):
            raise ValueError(f"vad must be a VadConfig. Found: {type(self.vad).__name__}")
        if self.split_s is not None and self.split_s != 0 and not self.split_s >= 4 * QUIET_SEARCH_S:
            raise ValueError(f"split_s must be 0 (never split) or >= {4 * QUIET_SEARCH_S} s. Found: {self.split_s}")
        if not 0.1 <= self.chunk_s <= 3600:
            raise ValueError(f"chunk_s must be in [0.1, 3600] seconds. Found: {self.chunk_s}")

    @property
    def splits(self) -> bool:
        return bool(self.split_s)

    def split_config(self) -> SplitConfig | None:
        """How the decoder plans long files for these segments (None: every file decoded whole)."""
        if not self.splits:
            return None
        return SplitConfig(split_s=self.split_s, segment_s=self.segment_s, segmenter=self.segmenter,
                           chunk_s=self.chunk_s)


def fixed_windows(n_samples: int, sample_rate: int, config: SegmentConfig) -> list[tuple[int, int]]:
    """Window boundaries as (start, end) sample indices, end exclusive.

    Windows are ``round(segment_s * rate)`` samples; the remainder becomes a last window
    when it is at least ``min_segment_s`` long (a remainder that is the whole file counts too).
    """
    window = max(1, int(round(config.segment_s * sample_rate)))
    min_len = int(round(config.min_segment_s * sample_rate))
    bounds = []
    for start in range(0, n_samples, window):
        end = min(start + window, n_samples)
        if end - start < window and (end - start < min_len or end == start):
            break
        bounds.append((start, end))
    return bounds


def key_stem(ref: AudioRef) -> str:
    """A readable, safe stem for sample keys: the manifest id, else the file's name without extension."""
    raw = ref.meta.get("id") if ref.meta else None
    if not raw:
        name = posixpath.basename(ref.uri.rstrip("/").replace("\\", "/"))
        raw = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    text = unicodedata.normalize("NFKD", str(raw)).encode("ascii", "ignore").decode("ascii")
    stem = _UNSAFE.sub("_", text).strip("_-")[:KEY_STEM_CHARS]
    return stem or "audio"


def source_hash(ref: AudioRef) -> str:
    """10 hex characters that tell apart sources whose stems collide."""
    identity = ref.uri if not (ref.meta and ref.meta.get("id")) else f"{ref.uri}\x00{ref.meta['id']}"
    return hashlib.sha1(identity.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def segment_key(ref: AudioRef, start_s: float) -> str:
    """The WebDataset key of the segment of ``ref`` that starts at ``start_s``.

    Only ``[A-Za-z0-9_-]``: no dots (webdataset splits keys at the first dot), no slashes,
    nothing that a tar extractor could turn into a path. The source URI lives in the metadata.
    """
    return f"{key_stem(ref)}-{source_hash(ref)}-{int(round(start_s * 1000)):09d}"


# ---------------------------------------------------------------------------- transcripts

_TRANSCRIPT_LABELS = {"words": "word", "segments": "text"}


def timed_transcript(meta: Mapping[str, Any] | None) -> tuple[str, list[dict[str, Any]]] | None:
    """The timed transcript of a manifest record: (``words`` or ``segments``, its entries sorted
    by start), or None when there is none.

    Raises:
        AudiotokError: ``bad_manifest`` when the field is not a list of
            ``{"start": s, "end": s, "word"|"text": str}`` with 0 <= start <= end.
    """
    if not meta:
        return None
    for field, label in _TRANSCRIPT_LABELS.items():
        entries = meta.get(field)
        if entries is None:
            continue
        if not isinstance(entries, (list, tuple)):
            raise AudiotokError(failures.BAD_MANIFEST, f"{field!r} must be a list of {{start, end, {label}}}")
        parsed = []
        for i, entry in enumerate(entries):
            try:
                start, end, value = float(entry["start"]), float(entry["end"]), entry[label]
            except (TypeError, KeyError, ValueError):
                raise AudiotokError(failures.BAD_MANIFEST,
                                    f"{field}[{i}] needs numeric 'start', 'end' and a string {label!r}") from None
            if not (isinstance(value, str) and math.isfinite(start) and math.isfinite(end) and 0 <= start <= end):
                raise AudiotokError(failures.BAD_MANIFEST, f"{field}[{i}]: need 0 <= start <= end and a string "
                                    f"{label!r}. Found: {entry!r:.200}")
            parsed.append({"start": start, "end": end, label: value})
        parsed.sort(key=lambda e: (e["start"], e["end"]))
        return field, parsed
    return None


def _midpoint_in(entry: Mapping[str, Any], start_s: float, end_s: float) -> bool:
    return start_s <= (entry["start"] + entry["end"]) / 2 < end_s


def narrow_transcript(meta: Mapping[str, Any], start_s: float, end_s: float) -> Mapping[str, Any]:
    """``meta`` with its timed transcript reduced to the entries whose midpoint lies in
    ``[start_s, end_s)`` (times unchanged); ``meta`` itself when it has none."""
    found = timed_transcript(meta)
    if found is None:
        return meta
    field, entries = found
    return {**meta, field: [e for e in entries if _midpoint_in(e, start_s, end_s)]}


def segment_meta(meta: Mapping[str, Any], start_s: float, end_s: float) -> Mapping[str, Any]:
    """The manifest fields of the segment ``[start_s, end_s)``: with a timed transcript, its
    entries whose midpoint the segment holds (times relative to ``start_s``, clipped to the
    segment, rounded to the millisecond) and ``text``, their words or texts joined by spaces.
    Without one, ``meta`` unchanged."""
    found = timed_transcript(meta)
    if found is None:
        return meta
    field, entries = found
    label = _TRANSCRIPT_LABELS[field]
    inside = [e for e in entries if _midpoint_in(e, start_s, end_s)]
    duration = end_s - start_s
    relative = [{"start": round(min(max(e["start"] - start_s, 0.0), duration), 3),
                 "end": round(min(max(e["end"] - start_s, 0.0), duration), 3), label: e[label]} for e in inside]
    text = " ".join(t for t in (e[label].strip() for e in inside) if t)
    return {**meta, field: relative, "text": text}


def make_segment(ref: AudioRef, start: int, end: int, rate: int, audio: np.ndarray,
                 source_info: Mapping[str, Any]) -> Segment:
    """The segment of ``ref`` holding samples ``[start, end)`` at ``rate``.

    With a timed transcript, ``segment.source`` is ``ref`` with the segment's share of it
    (:func:`segment_meta`), which is how ``text``/``words`` reach the sample's ``KEY.json``.
    """
    start_s, end_s = start / rate, end / rate
    meta = segment_meta(ref.meta, start_s, end_s)
    source = ref if meta is ref.meta else dataclasses.replace(ref, meta=meta)
    return Segment(key=segment_key(ref, start_s), source=source, start_s=start_s, end_s=end_s, sample_rate=rate,
                   audio=audio, source_info=dict(source_info))


# ---------------------------------------------------------------------------- whole files


def cut_segments(decoded: Decoded, config: SegmentConfig) -> Iterator[Segment]:
    """Cuts decoded mono audio into fixed-window segments."""
    rate = decoded.sample_rate
    info = decoded.source_info()
    for start, end in fixed_windows(decoded.audio.shape[-1], rate, config):
        yield make_segment(decoded.source, start, end, rate, decoded.audio[start:end], info)


@dataclasses.dataclass
class SegmentStats:
    """Milliseconds of audio by what became of them (the speech segmenters' counters)."""

    segmented_ms: int = 0
    nonspeech_ms: int = 0
    dropped_speech_ms: int = 0
    streamed_samples: int = 0

    def add_plan(self, plan: vad.SegmentPlan, total_16k: int) -> None:
        kept = sum(b - a for a, b in plan.segments)
        dropped = sum(b - a for a, b in plan.dropped)
        self.segmented_ms += _ms(kept)
        self.dropped_speech_ms += _ms(dropped)
        self.nonspeech_ms += _ms(max(0, total_16k - kept - dropped))

    def report(self) -> None:
        metrics.counter("segmented_ms").inc(self.segmented_ms)
        metrics.counter("nonspeech_ms").inc(self.nonspeech_ms)
        metrics.counter("dropped_speech_ms").inc(self.dropped_speech_ms)


def _ms(samples_16k: int) -> int:
    return int(round(samples_16k * 1000 / VAD_RATE))


def to_rate(samples_16k: int, rate: int) -> int:
    """A 16 kHz sample index at ``rate`` (nearest sample)."""
    return (2 * samples_16k * rate + VAD_RATE) // (2 * VAD_RATE)


def speech_scores(chunks_16k: Iterable[np.ndarray], config: SegmentConfig, model=None) -> vad.FrameScores:
    """The detector of ``config.segmenter`` over 16 kHz audio given in chunks."""
    if config.segmenter == "energy":
        return vad.energy_scores(chunks_16k)
    if config.segmenter == "vad":
        return vad.silero_scores(model if model is not None else vad.loaded_silero(), chunks_16k,
                                 config.vad.batch_lanes)
    raise ValueError(f"{config.segmenter!r} is not a speech segmenter")


def speech_intervals(scores: vad.FrameScores, config: SegmentConfig, rate: int,
                     stats: SegmentStats | None = None) -> list[tuple[int, int]]:
    """Segments as (start, end) sample indices at ``rate``, relative to the scored audio."""
    plan = vad.plan_segments(scores, config.vad, config.segment_s, config.min_segment_s)
    if stats is not None:
        stats.add_plan(plan, scores.n_samples)
    return [(to_rate(a, rate), to_rate(b, rate)) for a, b in plan.segments]


def cut_speech(decoded: Decoded, scores: vad.FrameScores, config: SegmentConfig,
               stats: SegmentStats | None = None) -> Iterator[Segment]:
    """Cuts decoded mono audio along the speech found in ``scores`` (of the same audio at 16 kHz)."""
    rate, info, n = decoded.sample_rate, decoded.source_info(), decoded.audio.shape[-1]
    for start, end in speech_intervals(scores, config, rate, stats):
        end = min(end, n)
        if end > start:
            yield make_segment(decoded.source, start, end, rate, decoded.audio[start:end], info)


def at_vad_rate(decoded: Decoded) -> np.ndarray:
    """The audio of ``decoded`` at 16 kHz (what the detectors take)."""
    return resample(decoded.audio, decoded.sample_rate, VAD_RATE)


def _too_short(decoded: Decoded, config: SegmentConfig) -> Failure:
    metrics.failure(failures.TOO_SHORT, "segment")
    if config.segmenter == "fixed":
        message = f"{decoded.duration_s:.3f} s is shorter than the minimum segment ({config.min_segment_s} s)"
    else:
        message = (f"no stretch of speech of {config.min_segment_s} s or more in {decoded.duration_s:.3f} s "
                   f"({config.segmenter} segmenter)")
    return Failure(decoded.source.uri, failures.TOO_SHORT, message, stage="segment")


def _segment_or_fail(decoded: Decoded, config: SegmentConfig):
    n = 0
    try:
        for segment in cut_segments(decoded, config):
            n += 1
            yield segment
    except AudiotokError as e:  # a bad timed transcript
        metrics.failure(e.reason, "segment")
        yield beam.pvalue.TaggedOutput("failures", Failure.from_error(decoded.source.uri, e, "segment"))
        return
    metrics.counter("segments").inc(n)
    if n == 0:
        yield beam.pvalue.TaggedOutput("failures", _too_short(decoded, config))


class _SpeechSegmentFn(beam.DoFn):
    """Speech segmentation of whole files. Silero runs on the lanes of several files at once:
    files are held until ``batch_lanes`` lanes are waiting (or the bundle ends)."""

    def __init__(self, config: SegmentConfig):
        self._config = config

    def setup(self) -> None:
        self._model = vad.loaded_silero() if self._config.segmenter == "vad" else None

    def start_bundle(self) -> None:
        self._held: list[Decoded] = []
        self._lanes = 0

    def process(self, decoded: Decoded):
        if self._model is None:
            yield from self._segment([decoded], windowed=False)
            return
        self._held.append(decoded)
        self._lanes += -(-int(round(decoded.duration_s * VAD_RATE)) // (vad.LANE_FRAMES * vad.SILERO_HOP))
        if self._lanes >= self._config.vad.batch_lanes:
            yield from self._flush(windowed=False)

    def finish_bundle(self):
        yield from self._flush(windowed=True)

    def _flush(self, windowed: bool):
        held, self._held, self._lanes = self._held, [], 0
        if held:
            yield from self._segment(held, windowed)

    def _segment(self, batch: list[Decoded], windowed: bool):
        def out(value):
            return GlobalWindows.windowed_value(value) if windowed else value

        if self._model is not None:
            all_scores = vad.silero_scores_many(self._model, [[at_vad_rate(d)] for d in batch],
                                                self._config.vad.batch_lanes)
        else:
            all_scores = [vad.energy_scores([at_vad_rate(d)]) for d in batch]
        for decoded, scores in zip(batch, all_scores):
            stats = SegmentStats()
            n = 0
            try:
                for segment in cut_speech(decoded, scores, self._config, stats):
                    n += 1
                    yield out(segment)
            except AudiotokError as e:  # a bad timed transcript
                metrics.failure(e.reason, "segment")
                yield beam.pvalue.TaggedOutput("failures", out(Failure.from_error(decoded.source.uri, e, "segment")))
                continue
            stats.report()
            metrics.counter("segments").inc(n)
            if n == 0:
                yield beam.pvalue.TaggedOutput("failures", out(_too_short(decoded, self._config)))


class SegmentAudio(beam.PTransform):
    """PCollection[Decoded] -> Segment (main) and Failure (``failures``: inputs with no segment)."""

    def __init__(self, config: SegmentConfig):
        super().__init__()
        self.config = config

    def expand(self, decoded):
        if self.config.segmenter == "fixed":
            return decoded | "FixedWindows" >> beam.FlatMap(_segment_or_fail, self.config).with_outputs(
                "failures", main="segments")
        return decoded | "SpeechSegments" >> beam.ParDo(_SpeechSegmentFn(self.config)).with_outputs(
            "failures", main="segments")


# ---------------------------------------------------------------------------- long files


def work_items(ref: AudioRef, plan: Plan) -> list[WorkItem]:
    """The work items of a planned long file, each with its share of a timed transcript.

    Raises:
        AudiotokError: ``bad_manifest`` when the manifest's timed transcript is malformed.
    """
    timed_transcript(ref.meta)
    edges = [0, *plan.cuts, None]
    count = len(edges) - 1
    items = []
    for i, (start, stop) in enumerate(zip(edges, edges[1:])):
        source = ref
        if ref.meta:
            rate = plan.probe.sample_rate
            narrowed = narrow_transcript(ref.meta, start / rate, math.inf if stop is None else stop / rate)
            source = ref if narrowed is ref.meta else dataclasses.replace(ref, meta=narrowed)
        items.append(WorkItem(source, plan.probe, start, stop, i, count, plan.repair, plan.frames))
    return items


class _Counted:
    """Passes chunks through, counting their samples, and keeping them while they take at most
    ``keep_bytes`` (so that a second pass need not decode again). The first ``skip`` samples (a
    pre-roll) pass through without being counted or kept."""

    def __init__(self, chunks: Iterable[np.ndarray], keep_bytes: int = 0, skip: int = 0):
        self._chunks, self.n, self._skip = chunks, 0, skip
        self._keep_bytes, self._kept_bytes = keep_bytes, 0
        self.kept: list[np.ndarray] | None = [] if keep_bytes else None

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in self._chunks:
            if self._skip >= chunk.shape[0]:
                self._skip -= chunk.shape[0]
                yield chunk
                continue
            counted, self._skip = chunk[self._skip:], 0
            self.n += counted.shape[0]
            if self.kept is not None:
                self._kept_bytes += counted.nbytes
                if self._kept_bytes <= self._keep_bytes:
                    self.kept.append(counted)
                else:
                    self.kept = None  # too long to hold: the second pass reads again
            yield chunk


def _drop(chunks: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """``chunks`` without their first ``n`` samples."""
    for chunk in chunks:
        if n >= chunk.shape[0]:
            n -= chunk.shape[0]
            continue
        yield chunk[n:]
        n = 0


def vad_preroll(start: int, rate: int) -> int:
    """Where a stretch starting at ``start`` is read from for speech detection: ``VAD_PREROLL_S``
    or more earlier, at a sample that falls on the 16 kHz grid, so that the stretch's 16 kHz
    audio is the whole file's (to float rounding) from ``start`` on."""
    unit = rate // math.gcd(rate, VAD_RATE)
    return max(0, start - int(VAD_PREROLL_S * rate)) // unit * unit


def segment_work_item(item: WorkItem, config: SegmentConfig, stretch: Callable[[WorkItem], Iterable[np.ndarray]],
                      model=None, stats: SegmentStats | None = None) -> Iterator[Segment | Failure]:
    """Segments one work item by streaming it: one pass for ``fixed``; for the speech
    segmenters a first pass scores the stretch and a second cuts it (from the audio kept by the
    first, up to ``ITEM_BUFFER_BYTES``; decoded again beyond).

    Args:
        stretch: the decoder's stretch reader (``decoder.stretch``): the item's mono chunks.

    Yields:
        Segments (absolute positions in the file) and, when the stretch ends early against an
        exact length, one ``truncated`` Failure.

    Raises:
        AudiotokError: when the stretch cannot be read.
    """
    rate, ref = item.sample_rate, item.source
    info = item.info.source_info()
    if config.segmenter == "fixed":
        window = max(1, int(round(config.segment_s * rate)))
        min_len = int(round(config.min_segment_s * rate))
        counted = _Counted(stretch(item))
        pos = item.start
        for block in vad.reblock(counted, window):
            n = block.shape[0]
            if n == window or (n >= min_len and n > 0):
                yield make_segment(ref, pos, pos + n, rate, np.array(block), info)
            pos += n
        got = counted.n
        if stats is not None:
            stats.streamed_samples += got
    else:
        # The detectors see the stretch at 16 kHz as the whole file's resample has it: read from a
        # pre-roll on the common grid, resampled, and the pre-roll dropped at 16 kHz.
        early = vad_preroll(item.start, rate)
        counted = _Counted(stretch(dataclasses.replace(item, start=early)), keep_bytes=ITEM_BUFFER_BYTES,
                           skip=item.start - early)
        at_16k = _drop(resample_stream(counted, rate, VAD_RATE), (item.start - early) * VAD_RATE // rate)
        scores = speech_scores(at_16k, config, model)
        got = counted.n
        if stats is not None:
            stats.streamed_samples += got
        intervals = [(a, min(b, got)) for a, b in speech_intervals(scores, config, rate, stats) if a < got]
        second_pass = counted.kept if counted.kept is not None else stretch(item)
        counted.kept = None
        for lo, hi, audio in cut_stream(second_pass, intervals):
            if hi > lo:
                yield make_segment(ref, item.start + lo, item.start + hi, rate, audio, info)
    expected = item.expected_length()
    if expected is not None and got < expected - int(0.1 * rate):
        yield Failure(ref.uri, failures.TRUNCATED,
                      f"the stretch ends after {got / rate:.2f} of {expected / rate:.2f} s "
                      f"(the header declares {item.info.duration_s:.2f} s)", stage="decode",
                      start_s=item.start_s, end_s=(item.start + expected) / rate)


class _SegmentItemFn(beam.DoFn):
    def __init__(self, config: SegmentConfig, decode: DecodeConfig):
        self._config, self._decode = config, decode

    def setup(self) -> None:
        from audiotok.transforms import isolation

        self._model = vad.loaded_silero() if self._config.segmenter == "vad" else None
        self._progress = Progress("streamed")
        self._decoder = isolation.make_decoder(self._decode)

    def _stretch(self, item: WorkItem) -> Iterator[np.ndarray]:
        return self._decoder.stretch(item, self._config.chunk_s)

    def process(self, item: WorkItem):
        stats = SegmentStats()
        n = 0
        try:
            for out in segment_work_item(item, self._config, self._stretch, self._model, stats):
                if isinstance(out, Failure):
                    metrics.failure(out.reason, out.stage)
                    yield beam.pvalue.TaggedOutput("failures", out)
                    continue
                n += 1
                yield out
        except Exception as e:  # every failure is a record, never a failed bundle
            if not isinstance(e, AudiotokError):
                logger.warning("unexpected %s streaming %s (a bug: please report it): %s", type(e).__name__,
                               failures.redact(failures.printable(item.source.uri)), failures.redact(str(e)))
            failure = Failure.from_error(item.source.uri, e, "decode", start_s=item.start_s, end_s=item.stop_s)
            metrics.failure(failure.reason, "decode")
            yield beam.pvalue.TaggedOutput("failures", failure)
            return
        if item.index == 0:
            metrics.counter("files_ok").inc()
        if self._config.segmenter != "fixed":
            stats.report()
        metrics.counter("segments").inc(n)
        audio_s = stats.streamed_samples / item.sample_rate
        metrics.counter("audio_ms").inc(int(round(audio_s * 1000)))
        self._progress.add(audio_s)

    def teardown(self) -> None:
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.close()


class SegmentWorkItems(beam.PTransform):
    """PCollection[WorkItem] -> Segment (main) and Failure (``failures``); each stretch is
    decoded by the decoder ``decode.isolation`` asks for."""

    def __init__(self, config: SegmentConfig, decode: DecodeConfig):
        super().__init__()
        self.config, self.decode = config, decode

    def expand(self, items):
        return items | "StreamSegments" >> beam.ParDo(_SegmentItemFn(self.config, self.decode)).with_outputs(
            "failures", main="segments")
