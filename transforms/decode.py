"""Bytes -> waveform: format sniffing, decoding, downmixing, resampling.

Formats are recognised by content, never by extension. libsndfile (``soundfile``) decodes
first; FFmpeg (PyAV) is the fallback for what libsndfile cannot read (M4A/AAC, some
MP3/Opus builds) and for anything the sniffer does not know.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import BinaryIO

import numpy as np

import apache_beam as beam

from transforms import failures, metrics
from transforms.failures import AudiotokError, Failure
from transforms.progress import Progress
from transforms.records import AudioRef, Decoded

logger = logging.getLogger(__name__)

SNIFF_BYTES = 64

# Formats that libsndfile reads; the rest go straight to FFmpeg.
_SOUNDFILE_FORMATS = frozenset({"wav", "flac", "ogg-vorbis", "ogg-opus", "ogg-flac", "aiff", "mp3"})


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How inputs become waveforms.

    Attributes:
        max_duration_s: longer inputs are rejected as ``too_long`` (None: no limit).
        min_sample_rate, max_sample_rate: accepted source rates, Hz.
        max_channels: inputs with more channels are rejected.
    """

    max_duration_s: float | None = 4 * 3600.0
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000
    max_channels: int = 64

    def __post_init__(self) -> None:
        if self.max_duration_s is not None and self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be positive. Found: {self.max_duration_s}")
        if not 0 < self.min_sample_rate <= self.max_sample_rate:
            raise ValueError(
                f"need 0 < min_sample_rate <= max_sample_rate. Found: {self.min_sample_rate}, {self.max_sample_rate}")
        if self.max_channels < 1:
            raise ValueError(f"max_channels must be >= 1. Found: {self.max_channels}")


@dataclasses.dataclass(frozen=True, eq=False)
class Audio:
    """Decoded audio.

    Attributes:
        samples: float32 [channels, samples] in [-1, 1] nominal.
        sample_rate: Hz.
        format: what the sniffer or decoder recognised (``wav``, ``flac``, ``mp3``, ...).
    """

    samples: np.ndarray
    sample_rate: int
    format: str

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


def sniff_format(head: bytes) -> str | None:
    """Names the container/codec from the first bytes of a file, or None when unknown."""
    if len(head) < 4:
        return None
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        page = head[28:40]
        if page.startswith(b"OpusHead"):
            return "ogg-opus"
        if page.startswith(b"\x01vorbis"):
            return "ogg-vorbis"
        if page.startswith(b"\x7fFLAC"):
            return "ogg-flac"
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:3] == b"ID3":
        return "mp3"
    if head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        layer = (head[1] >> 1) & 0x03
        if layer == 0:  # MPEG-2/4 ADTS, layer bits always 00
            return "aac"
        return "mp3"
    return None


def decode_audio(source: bytes | BinaryIO, uri: str = "") -> Audio:
    """Decodes a whole file.

    Args:
        source: the file's bytes, or a seekable binary file object.
        uri: named in errors.

    Returns:
        The decoded audio, all channels, at the source rate.

    Raises:
        AudiotokError: ``empty``, ``unsupported_format`` or ``decode_error``.
    """
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    head = stream.read(SNIFF_BYTES)
    if not head:
        raise AudiotokError(failures.EMPTY, "the file has no bytes", uri)
    stream.seek(0)
    fmt = sniff_format(head)
    errors: list[str] = []
    if fmt in _SOUNDFILE_FORMATS:
        try:
            return _decode_soundfile(stream, fmt)
        except Exception as e:  # libsndfile's errors are plain RuntimeErrors; FFmpeg gets a try
            errors.append(f"soundfile: {e}")
            stream.seek(0)
    try:
        return _decode_pyav(stream, fmt)
    except AudiotokError as e:
        e.uri = e.uri or uri
        raise
    except Exception as e:
        errors.append(f"ffmpeg: {type(e).__name__}: {e}")
    if fmt is None:
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, "no decoder recognises the content; " + "; ".join(errors), uri)
    raise AudiotokError(failures.DECODE_ERROR, f"{fmt} could not be decoded; " + "; ".join(errors), uri)


def _decode_soundfile(stream: BinaryIO, fmt: str) -> Audio:
    import soundfile

    data, rate = soundfile.read(stream, dtype="float32", always_2d=True)
    return Audio(samples=np.ascontiguousarray(data.T), sample_rate=int(rate), format=fmt)


def _decode_pyav(stream: BinaryIO, fmt: str | None) -> Audio:
    import av

    try:
        container = av.open(stream, mode="r")
    except av.error.InvalidDataError as e:
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, f"FFmpeg: {e}") from e
    with container:
        if not container.streams.audio:
            raise AudiotokError(failures.UNSUPPORTED_FORMAT, "the container has no audio stream")
        audio_stream = container.streams.audio[0]
        rate = int(audio_stream.codec_context.sample_rate or 0)
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        for frame in container.decode(audio_stream):
            rate = rate or int(frame.sample_rate)
            for converted in resampler.resample(frame):
                chunks.append(converted.to_ndarray())
        for converted in resampler.resample(None):
            chunks.append(converted.to_ndarray())
        name = fmt or container.format.name.split(",")[0]
    if not chunks:
        raise AudiotokError(failures.EMPTY, "the audio stream has no samples")
    samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    return Audio(samples=np.ascontiguousarray(samples), sample_rate=rate, format=name)


def downmix(samples: np.ndarray) -> np.ndarray:
    """float32 [channels, samples] -> float32 [samples], the mean of the channels."""
    if samples.ndim == 1:
        return samples
    if samples.shape[0] == 1:
        return samples[0]
    return samples.mean(axis=0, dtype=np.float32)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of float32 [samples] or [channels, samples]."""
    if orig_rate == target_rate:
        return samples
    import soxr

    out = soxr.resample(samples.T, orig_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def check_audio(audio: Audio, config: DecodeConfig, uri: str = "") -> None:
    """Applies the policy limits of ``config``; raises AudiotokError with the reason."""
    channels, n = audio.samples.shape
    if n == 0:
        raise AudiotokError(failures.EMPTY, "the audio stream has no samples", uri)
    if not config.min_sample_rate <= audio.sample_rate <= config.max_sample_rate:
        raise AudiotokError(
            failures.BAD_SAMPLE_RATE,
            f"sample rate {audio.sample_rate} Hz is outside [{config.min_sample_rate}, {config.max_sample_rate}]", uri)
    if channels > config.max_channels:
        raise AudiotokError(failures.TOO_MANY_CHANNELS, f"{channels} channels > {config.max_channels}", uri)
    if config.max_duration_s is not None and audio.duration_s > config.max_duration_s:
        raise AudiotokError(failures.TOO_LONG, f"{audio.duration_s:.1f} s > {config.max_duration_s} s", uri)
    if not np.isfinite(audio.samples).all():
        raise AudiotokError(failures.NON_FINITE, "the audio has NaN or Inf samples", uri)


def decode_ref(ref: AudioRef, config: DecodeConfig) -> Decoded:
    """Reads one input through fsspec, decodes it, applies the policy and downmixes.

    Returns:
        Mono audio at the source rate.

    Raises:
        AudiotokError: with the reason the input cannot be used.
    """
    from transforms import storage

    try:
        with storage.open_input(ref.uri) as f:
            audio = decode_audio(f, ref.uri)
    except AudiotokError:
        raise
    except (OSError, ValueError) as e:
        raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", ref.uri) from e
    check_audio(audio, config, ref.uri)
    return Decoded(source=ref, audio=downmix(audio.samples), sample_rate=audio.sample_rate,
                   source_sample_rate=audio.sample_rate, source_channels=int(audio.samples.shape[0]),
                   source_format=audio.format)


def resample_decoded(decoded: Decoded, target_rate: int | None) -> Decoded:
    """``decoded`` at ``target_rate`` (unchanged when None or equal)."""
    if not target_rate or target_rate == decoded.sample_rate:
        return decoded
    return dataclasses.replace(decoded, audio=resample(decoded.audio, decoded.sample_rate, target_rate),
                               sample_rate=target_rate)


class _DecodeFn(beam.DoFn):
    def __init__(self, config: DecodeConfig):
        self._config = config

    def setup(self) -> None:
        self._progress = Progress("decoded")

    def process(self, ref: AudioRef):
        try:
            decoded = decode_ref(ref, self._config)
        except Exception as e:  # every failure is a record, never a failed bundle
            failure = Failure.from_error(ref.uri, e, "decode")
            metrics.failure(failure.reason, "decode")
            yield beam.pvalue.TaggedOutput("failures", failure)
            return
        metrics.counter("files_ok").inc()
        metrics.counter("audio_ms").inc(int(round(decoded.duration_s * 1000)))
        self._progress.add(decoded.duration_s)
        yield decoded


class DecodeAudio(beam.PTransform):
    """PCollection[AudioRef] -> Decoded (main, mono at the source rate) and Failure (``failures``)."""

    def __init__(self, config: DecodeConfig):
        super().__init__()
        self.config = config

    def expand(self, refs):
        return refs | "Decode" >> beam.ParDo(_DecodeFn(self.config)).with_outputs("failures", main="decoded")


class Resample(beam.PTransform):
    """PCollection[Decoded] -> Decoded at ``target_rate``."""

    def __init__(self, target_rate: int | None):
        super().__init__()
        self.target_rate = target_rate

    def expand(self, decoded):
        return decoded | "ResampleAudio" >> beam.Map(resample_decoded, self.target_rate)
