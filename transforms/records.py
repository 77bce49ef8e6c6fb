"""The records that flow between pipeline stages.

``AudioRef`` (an input file) -> ``Segment`` (a stretch of decoded audio) ->
``Sample`` (a segment's token streams and metadata, one WebDataset sample).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

# Manifest fields carried into every sample's metadata.
MANIFEST_FIELDS: tuple[str, ...] = ("id", "text", "speaker", "language")
# Timed transcripts a manifest line may carry: lists of {start, end, word} or {start, end, text}.
TRANSCRIPT_FIELDS: tuple[str, ...] = ("words", "segments")


@dataclasses.dataclass(frozen=True)
class AudioRef:
    """One input file.

    Attributes:
        uri: fsspec URL or local path of the file.
        size_bytes: size reported by the store, when known.
        version: the store's version marker (GCS generation, S3 ETag, local mtime), when known.
        meta: manifest fields (``id``, ``text``, ``speaker``, ``language``), when given.
    """

    uri: str
    size_bytes: int | None = None
    version: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class Decoded:
    """A whole input, decoded and downmixed.

    Attributes:
        source: the input.
        audio: float32 [samples], mono.
        sample_rate: of ``audio``, Hz.
        source_sample_rate, source_channels, source_format: what the file held.
    """

    source: AudioRef
    audio: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_format: str

    @property
    def duration_s(self) -> float:
        return self.audio.shape[-1] / self.sample_rate

    def source_info(self) -> dict[str, Any]:
        return {"sample_rate": self.source_sample_rate, "channels": self.source_channels,
                "format": self.source_format}


@dataclasses.dataclass(frozen=True, eq=False)
class Segment:
    """A stretch of mono audio cut from one source file.

    Attributes:
        key: the WebDataset sample key (safe characters only, no dots).
        source: the input it was cut from.
        start_s, end_s: position in the source, seconds.
        sample_rate: of ``audio``, Hz: the source's own (each tokenizer resamples from it).
        audio: float32 [samples], mono.
        source_info: the source's rate, channels and format.
    """

    key: str
    source: AudioRef
    start_s: float
    end_s: float
    sample_rate: int
    audio: np.ndarray
    source_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.audio.shape[-1] / self.sample_rate


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """One WebDataset sample: a segment's metadata and its token streams.

    Attributes:
        key: the sample key.
        meta: JSON-serialisable metadata (source, position, streams' descriptions).
        streams: stream name -> array (int16 [T] or [K, T] for discrete tokens,
            float16 [T, D] for vectors).
    """

    key: str
    meta: Mapping[str, Any]
    streams: Mapping[str, np.ndarray]
