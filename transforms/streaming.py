"""Chunked decoding: a file (or a stretch of it) as mono float32 chunks at a target rate,
with memory bounded by the chunk size rather than by the file's length.

libsndfile (``soundfile``) reads WAV, FLAC, AIFF, MP3 and Ogg (Vorbis, Opus, FLAC) and seeks
in them to the exact sample; for them a stretch that starts late in the file costs only the
stretch. Everything else (M4A/AAC, Matroska, ...) goes through FFmpeg (PyAV) frame by frame
from the start of the file, and the audio before the stretch is decoded and dropped: exact,
and cheap next to tokenizing (decoding runs at ~1000x real time).

Resampling is one ``soxr.ResampleStream`` per stream. soxr's stream output does not depend on
how the input is chunked: a file streamed from its start equals ``decode.resample`` of the
whole file, bit for bit, for any ``chunk_s``. A stretch starting at ``start > 0`` is resampled
from a point of the source that falls exactly on the output grid, ``PREROLL_S`` or more
earlier, and the pre-roll is dropped; those samples differ from the whole-file resample only
by float rounding (measured: at most ~2e-7 for 8-48 kHz sources). Lossy decoders can differ a
little more right after a seek (Opus: up to ~1e-3 in the first frames), never in position.

Positions (``start``, ``stop``) are sample indices at the target rate: output sample ``i`` is
at ``i / target_rate`` seconds of the source, whatever the source rate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from audiotok.transforms import failures, storage
from audiotok.transforms.decode import SNIFF_BYTES, DecodeConfig, check_format, downmix, sniff_format
from audiotok.transforms.failures import AudiotokError

# libsndfile formats: sample-accurate seeks, and frame counts from the header.
SEEKABLE_FORMATS = frozenset({"wav", "flac", "ogg-vorbis", "ogg-opus", "ogg-flac", "aiff", "mp3"})
# Of those, the ones whose frame count is exact (MP3's is an estimate without a Xing/Info tag).
EXACT_LENGTH_FORMATS = frozenset({"wav", "flac", "ogg-vorbis", "ogg-opus", "ogg-flac", "aiff"})
# A compressed header's duration is believed only when the file has at least this many bytes
# per declared second (below any real codec's rate); otherwise the file is not split.
MIN_BYTES_PER_S = 8
PREROLL_S = 0.25
DEFAULT_CHUNK_S = 30.0
# A file whose header gives no length is streamed (as one work item) rather than decoded whole
# when it is at least this big.
UNKNOWN_LENGTH_STREAM_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Probe:
    """What a file's header says, read without decoding the audio.

    Attributes:
        sample_rate: Hz.
        channels: channel count.
        frames: samples per channel, or None when the header does not say.
        format: what the sniffer recognised (``wav``, ``flac``, ``mp4``, ...).
        exact: ``frames`` is the true length (not an estimate from the bit rate).
        seekable: libsndfile reads the file: stretches are read by seeking, not by decoding
            from the start.
        size_bytes: the file's size.
    """

    sample_rate: int
    channels: int
    frames: int | None
    format: str
    exact: bool = False
    seekable: bool = False
    size_bytes: int | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate

    def believable(self) -> bool:
        """Whether the declared length is backed by the bytes present."""
        if self.frames is None:
            return False
        if self.size_bytes is None:
            return self.exact
        return self.size_bytes >= self.frames / self.sample_rate * MIN_BYTES_PER_S

    def source_info(self) -> dict:
        return {"sample_rate": self.sample_rate, "channels": self.channels, "format": self.format}


def probe(uri: str) -> Probe:
    """Reads the header of ``uri`` (through fsspec).

    Raises:
        AudiotokError: ``empty``, ``unsupported_format``, ``read_error``.
    """
    try:
        with storage.open_input(uri) as f:
            return probe_stream(f, uri)
    except AudiotokError:
        raise
    except (OSError, ValueError) as e:
        raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", uri) from e


def probe_stream(f: BinaryIO, uri: str = "") -> Probe:
    """:func:`probe` of an open, seekable binary file."""
    f.seek(0)
    head = f.read(SNIFF_BYTES)
    if not head:
        raise AudiotokError(failures.EMPTY, "the file has no bytes", uri)
    size = _size(f)
    fmt = sniff_format(head)
    if fmt in SEEKABLE_FORMATS:
        import soundfile

        f.seek(0)
        try:
            with soundfile.SoundFile(f) as sf:
                frames = int(sf.frames)
                # libsndfile reports streamed WAVs (no data size) as 0 frames and then reads
                # nothing: those go to FFmpeg, which reads to the end, as decode_audio does.
                if 0 < frames < (1 << 62):
                    return Probe(int(sf.samplerate), int(sf.channels), frames, fmt,
                                 exact=fmt in EXACT_LENGTH_FORMATS, seekable=f.seekable(), size_bytes=size)
        except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError):
            pass  # FFmpeg gets a try, as in decode_audio
    return _probe_pyav(f, fmt, size, uri)


def _probe_pyav(f: BinaryIO, fmt: str | None, size: int | None, uri: str) -> Probe:
    import av

    f.seek(0)
    try:
        container = av.open(f, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OverflowError) as e:
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, f"FFmpeg: {e}", uri) from None
    with container:
        if not container.streams.audio:
            raise AudiotokError(failures.UNSUPPORTED_FORMAT, "the container has no audio stream", uri)
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # FFmpeg knows the container but has no decoder for this codec id
            raise AudiotokError(failures.UNSUPPORTED_FORMAT, "FFmpeg has no decoder for the stream's codec", uri)
        rate, channels = int(stream.codec_context.sample_rate or 0), int(stream.codec_context.channels or 0)
        if rate <= 0 or channels <= 0:
            raise AudiotokError(failures.UNSUPPORTED_FORMAT, "the stream declares no rate or channels", uri)
        frames = None
        if stream.duration and stream.time_base:
            frames = int(stream.duration * stream.time_base * rate)
        elif container.duration:
            frames = int(container.duration * rate / 1_000_000)
        name = fmt or container.format.name.split(",")[0]
        return Probe(rate, channels, frames if frames and frames > 0 else None, name,
                     exact=name == "mp4" and bool(frames), seekable=False, size_bytes=size)


def _size(f: BinaryIO) -> int | None:
    try:
        pos = f.tell()
        f.seek(0, 2)
        size = f.tell()
        f.seek(pos)
        return size
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------- resampling


def aligned_start(start: int, source_rate: int, target_rate: int, preroll: int) -> tuple[int, int]:
    """Where to start reading the source so that resampling lands on the whole-file output grid.

    Args:
        start: the first wanted output sample (target rate).
        preroll: output samples of warm-up wanted before ``start``.

    Returns:
        (source sample to start at, the output sample it corresponds to): the latest pair on
        the common grid at or before ``start - preroll`` (never before 0).
    """
    g = math.gcd(source_rate, target_rate)
    unit_in, unit_out = source_rate // g, target_rate // g
    k = max(0, start - preroll) // unit_out
    return k * unit_in, k * unit_out


def resample_stream(chunks: Iterable[np.ndarray], source_rate: int, target_rate: int) -> Iterator[np.ndarray]:
    """float32 [n] chunks at ``source_rate`` -> float32 chunks at ``target_rate``; the whole output
    equals ``decode.resample`` of the concatenated input, whatever the chunk sizes."""
    if source_rate == target_rate:
        yield from chunks
        return
    import soxr

    rs = soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32", quality="HQ")
    for chunk in chunks:
        out = rs.resample_chunk(np.ascontiguousarray(chunk, dtype=np.float32))
        if out.shape[0]:
            yield out
    out = rs.resample_chunk(np.zeros(0, np.float32), last=True)
    if out.shape[0]:
        yield out


# ---------------------------------------------------------------------------- decoding


class _Budget:
    """Decode time spent inside the generator only (not while the consumer holds a chunk)."""

    def __init__(self, limit_s: float | None):
        self.limit_s, self.spent = limit_s, 0.0

    def check(self, since: float) -> float:
        now = time.monotonic()
        self.spent += now - since
        if self.limit_s is not None and self.spent > self.limit_s:
            raise AudiotokError(failures.TIMEOUT, f"decoding this stretch took longer than {self.limit_s} s")
        return now


def _policy(block: np.ndarray, config: DecodeConfig) -> np.ndarray:
    """The per-chunk part of the sample-value policy on float32 [channels, n].

    Whole-file judgements (``out_of_range=scale``, ``silence``, ``clipping``) cannot be made
    chunk by chunk: a long file's out-of-range samples are clipped when the policy says
    ``scale``, and silence and clipping are not judged.
    """
    if not np.isfinite(block).all():
        if config.non_finite == "reject":
            raise AudiotokError(failures.NON_FINITE, "the audio has NaN or Inf samples")
        block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
    if block.size and max(float(block.max()), -float(block.min())) > 1.0:
        if config.out_of_range == "reject":
            raise AudiotokError(failures.OUT_OF_RANGE, "samples beyond [-1, 1]")
        block = np.clip(block, -1.0, 1.0)
    return block


def _soundfile_blocks(f: BinaryIO, start: int, block: int, budget: _Budget) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 [channels, n], rate) blocks from source sample ``start``."""
    import soundfile

    t = time.monotonic()
    try:
        sf = soundfile.SoundFile(f)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise AudiotokError(failures.DECODE_ERROR, f"soundfile: {e}") from None
    with sf:
        rate = int(sf.samplerate)
        try:
            if start:
                sf.seek(start)
            while True:
                data = sf.read(block, dtype="float32", always_2d=True)
                t = budget.check(t)
                if not len(data):
                    return
                yield data.T, rate
                t = time.monotonic()
                if len(data) < block:
                    return
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
            raise AudiotokError(failures.DECODE_ERROR, f"soundfile stopped: {e}") from None


def _pyav_blocks(f: BinaryIO, start: int, budget: _Budget) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 [channels, n], rate) blocks from source sample ``start``, decoding (and
    dropping) everything before it."""
    import av

    t = time.monotonic()
    try:
        container = av.open(f, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OverflowError) as e:
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, f"FFmpeg: {e}") from None
    with container:
        if not container.streams.audio:
            raise AudiotokError(failures.UNSUPPORTED_FORMAT, "the container has no audio stream")
        stream = container.streams.audio[0]
        resampler, rate, position = None, 0, 0
        try:
            for frame in container.decode(stream):
                if resampler is None:
                    rate = int(frame.sample_rate)
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate)
                elif int(frame.sample_rate) != rate:
                    raise AudiotokError(failures.DECODE_ERROR,
                                        f"the sample rate changes from {rate} to {frame.sample_rate} Hz mid-stream")
                for converted in resampler.resample(frame):
                    data = converted.to_ndarray()
                    n = data.shape[1]
                    if position + n > start:
                        t = budget.check(t)
                        yield data[:, max(0, start - position):], rate
                        t = time.monotonic()
                    position += n
                t = budget.check(t)
            if resampler is not None:
                for converted in resampler.resample(None):
                    data = converted.to_ndarray()
                    if position + data.shape[1] > start:
                        yield data[:, max(0, start - position):], rate
                    position += data.shape[1]
        except (av.error.FFmpegError, ValueError, OverflowError) as e:
            raise AudiotokError(failures.DECODE_ERROR, f"FFmpeg stopped: {type(e).__name__}: {e}") from None


def iter_chunks(uri: str, chunk_s: float, target_rate: int, start: int = 0, stop: int | None = None,
                config: DecodeConfig | None = None, info: Probe | None = None) -> Iterator[np.ndarray]:
    """Streams ``uri`` as mono float32 chunks at ``target_rate``.

    Args:
        uri: any fsspec URL or local path.
        chunk_s: seconds of source audio decoded at a time (memory is proportional to it).
        target_rate: Hz of the output.
        start, stop: the stretch wanted, in output samples (``stop=None``: to the end).
        config: the decode policy (rates, channels, non-finite and out-of-range samples,
            ``timeout_s`` as a budget of decoding time for this call).
        info: the file's probe, when already known (saves reading the header again).

    Yields:
        float32 [n] chunks (about ``chunk_s`` each) whose concatenation is samples
        ``[start, stop)`` of the whole file downmixed and resampled.

    Raises:
        AudiotokError: with the reason the stream could not be read.
    """
    if not chunk_s > 0:
        raise ValueError(f"chunk_s must be > 0. Found: {chunk_s}")
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"need 0 <= start <= stop. Found: {start}, {stop}")
    config = config or DecodeConfig()
    try:
        with storage.open_input(uri) as f:
            yield from _iter_open(f, uri, chunk_s, target_rate, start, stop, config, info)
    except AudiotokError as e:
        e.uri = e.uri or uri
        raise
    except (OSError, ValueError) as e:
        raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", uri) from e


def _iter_open(f: BinaryIO, uri: str, chunk_s: float, target_rate: int, start: int, stop: int | None,
               config: DecodeConfig, info: Probe | None) -> Iterator[np.ndarray]:
    info = info or probe_stream(f, uri)
    check_format(info.sample_rate, info.channels, config)
    if stop is not None and stop == start:
        return
    src_start, out_pos = aligned_start(start, info.sample_rate, target_rate, int(PREROLL_S * target_rate))
    budget = _Budget(config.timeout_s)
    f.seek(0)
    block = max(1024, int(chunk_s * info.sample_rate))
    if info.seekable:
        blocks = _soundfile_blocks(f, src_start, block, budget)
    else:
        blocks = _pyav_blocks(f, src_start, budget)

    def mono() -> Iterator[np.ndarray]:
        for data, rate in blocks:
            if rate != info.sample_rate:
                raise AudiotokError(failures.HEADER_MISMATCH,
                                    f"the header says {info.sample_rate} Hz, the stream is {rate} Hz")
            if data.shape[0] != info.channels:
                raise AudiotokError(failures.DECODE_ERROR, f"{data.shape[0]} channel(s) where the header "
                                    f"says {info.channels}")
            yield downmix(_policy(data, config))

    for out in resample_stream(mono(), info.sample_rate, target_rate):
        n = out.shape[0]
        lo = max(0, start - out_pos)
        hi = n if stop is None else min(n, stop - out_pos)
        if hi > lo:
            yield out[lo:hi]
        out_pos += n
        if stop is not None and out_pos >= stop:
            return


def read_all(uri: str, target_rate: int, chunk_s: float = DEFAULT_CHUNK_S, **kwargs) -> np.ndarray:
    """The concatenation of :func:`iter_chunks` (for tests and small stretches)."""
    parts = list(iter_chunks(uri, chunk_s, target_rate, **kwargs))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
