"""Cutting decoded audio into segments, and naming them.

``fixed_windows`` is the default segmenter: consecutive windows of ``segment_s`` seconds,
the last one kept when it lasts at least ``min_segment_s``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import re
import unicodedata
from typing import Iterator

import apache_beam as beam
import numpy as np

from transforms import failures, metrics
from transforms.failures import Failure
from transforms.records import AudioRef, Decoded, Segment

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
KEY_STEM_CHARS = 40


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Fixed-window segmentation.

    Attributes:
        segment_s: window length, seconds.
        min_segment_s: a shorter tail (or a shorter whole file) is dropped.
    """

    segment_s: float = 30.0
    min_segment_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.segment_s > 0:
            raise ValueError(f"segment_s must be > 0. Found: {self.segment_s}")
        if not 0 <= self.min_segment_s <= self.segment_s:
            raise ValueError(f"min_segment_s must be in [0, segment_s={self.segment_s}]. Found: {self.min_segment_s}")


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


def cut_segments(decoded: Decoded, config: SegmentConfig) -> Iterator[Segment]:
    """Cuts decoded mono audio into fixed-window segments."""
    rate = decoded.sample_rate
    info = decoded.source_info()
    for start, end in fixed_windows(decoded.audio.shape[-1], rate, config):
        start_s = start / rate
        yield Segment(
            key=segment_key(decoded.source, start_s),
            source=decoded.source,
            start_s=start_s,
            end_s=end / rate,
            sample_rate=rate,
            audio=decoded.audio[start:end],
            source_info=info,
        )


def _segment_or_fail(decoded: Decoded, config: SegmentConfig):
    n = 0
    for segment in cut_segments(decoded, config):
        n += 1
        yield segment
    metrics.counter("segments").inc(n)
    if n == 0:
        metrics.failure(failures.TOO_SHORT, "segment")
        yield beam.pvalue.TaggedOutput("failures", Failure(
            decoded.source.uri, failures.TOO_SHORT,
            f"{decoded.duration_s:.3f} s is shorter than the minimum segment ({config.min_segment_s} s)",
            stage="segment"))


class SegmentAudio(beam.PTransform):
    """PCollection[Decoded] -> Segment (main) and Failure (``failures``: inputs too short for any segment)."""

    def __init__(self, config: SegmentConfig):
        super().__init__()
        self.config = config

    def expand(self, decoded):
        return decoded | "FixedWindows" >> beam.FlatMap(_segment_or_fail, self.config).with_outputs(
            "failures", main="segments")
