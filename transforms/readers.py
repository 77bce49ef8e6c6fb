"""The readers: libsndfile (``soundfile``) and FFmpeg (PyAV) on an open, seekable binary stream.

One reader per backend serves every way a file is read:

* :func:`probe_stream`: what the header says (rate, channels, length, format), nothing decoded;
* :func:`decode_audio`: the whole file, under the limits, into one bounded buffer;
* :func:`read_blocks`: from a source frame on, block by block (stretches of long files).

libsndfile reads first (WAV, FLAC, AIFF, MP3, Ogg; sample-accurate seeks); FFmpeg is the
fallback for what libsndfile cannot read (M4A/AAC, some MP3/Opus builds, anything the
sniffer does not know). FFmpeg cannot seek to an exact sample: a stretch read through it is
decoded from the start of the file and what precedes the stretch is dropped (exact, and cheap
next to tokenizing). Both readers give the same float32 samples to the whole-file and the
block path, so a file decoded whole and the same file read in stretches hold the same samples.

Hostile input: every way a file can be bad ends as an :class:`AudiotokError` with a reason
code (README.md, "Bad input"); any other exception escaping these functions is a bug.
Nothing is allocated on a header's word: headers are checked against the bytes present,
rate, channels and duration are refused before decoding where the header allows it, and
decoding reads in bounded blocks, stopping at the duration limit and the memory guard.
"""

from __future__ import annotations

import dataclasses
import io
import re
import time
from typing import Any, BinaryIO, Iterator

import numpy as np

from audiotok.transforms import containers, failures
from audiotok.transforms.containers import HEAD_BYTES, MIN_BYTES_PER_S, SNIFF_BYTES
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.policy import DecodeConfig, check_format, check_length, judge_shortfall

# A decoded block holds at most this many bytes (float32), whatever the rate and channels.
CHUNK_BYTES = 4 << 20
# libsndfile's messages start with the repr of the file object (a memory address): not news.
_OPENING = re.compile(r"^Error opening <[^>]*>: ")
# Sample formats whose values are integers scaled into [-1, 1): finite, never beyond full scale.
_BOUNDED_SUBTYPES = ("PCM_", "ULAW", "ALAW")
_BOUNDED_CODECS = ("pcm_s", "pcm_u", "pcm_alaw", "pcm_mulaw", "flac", "alac")


@dataclasses.dataclass(frozen=True, eq=False)
class Audio:
    """Decoded audio.

    Attributes:
        samples: float32 [channels, samples] in [-1, 1] nominal.
        sample_rate: Hz.
        format: what the sniffer or decoder recognised (``wav``, ``flac``, ``mp3``, ...).
        notes: what was accepted or repaired on the way (``truncated``, ``non_finite_zeroed``, ...).
    """

    samples: np.ndarray
    sample_rate: int
    format: str
    notes: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


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
        bounded: the samples are integers scaled into [-1, 1) (PCM, FLAC): finite and never
            beyond full scale, whatever the file holds.
    """

    sample_rate: int
    channels: int
    frames: int | None
    format: str
    exact: bool = False
    seekable: bool = False
    size_bytes: int | None = None
    bounded: bool = False

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

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> "Probe":
        """From :meth:`to_json` (an answer of a decoder process: checked, not trusted).

        Raises:
            ValueError: when ``value`` is not what :meth:`to_json` writes.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(value, dict) or set(value) != fields:
            raise ValueError("a malformed probe")
        ints = {"sample_rate": False, "channels": False, "frames": True, "size_bytes": True}
        for name, optional in ints.items():
            v = value[name]
            if not ((optional and v is None) or (type(v) is int and 0 < v < 1 << 62)):
                raise ValueError(f"a malformed probe ({name})")
        if not all(type(value[k]) is bool for k in ("exact", "seekable", "bounded")):
            raise ValueError("a malformed probe")
        if not (isinstance(value["format"], str) and value["format"].replace("-", "_").isidentifier()):
            raise ValueError("a malformed probe (format)")
        return cls(**value)


class DecoderFailed(Exception):
    """A reader could not open or read the stream (its message says why); the next one gets a try."""

    def __init__(self, message: str, partial: Audio | None = None, opened: bool = False):
        super().__init__(message)
        self.partial = partial
        self.opened = opened


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise AudiotokError(failures.TIMEOUT, "decoding took longer than the time limit")


# ------------------------------------------------------------------ the two backends


class _Soundfile:
    """libsndfile on a stream, or on a local path (read natively: no Python call per read, which
    costs as much as decoding MP3): header values, reads of float32 [n, channels], seeks.

    Reads go straight to ``sf_readf_float``: soundfile's ``read`` asks libsndfile for its position
    before each read and seeks there again after it, which costs a seek per read and makes
    libsndfile's MP3 decoder round differently depending on where reads end.
    """

    def __init__(self, stream: BinaryIO | str):
        import soundfile

        self.errors = (soundfile.LibsndfileError, RuntimeError, ValueError)
        try:
            self._f = soundfile.SoundFile(stream)
        except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
            raise DecoderFailed(_OPENING.sub("", str(e))) from None
        self.rate, self.channels = int(self._f.samplerate), int(self._f.channels)
        self.frames = int(self._f.frames)
        self.bounded = str(self._f.subtype).startswith(_BOUNDED_SUBTYPES)
        self._lib = (soundfile._snd, soundfile._ffi, soundfile._error_check)

    def read(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Up to ``n`` frames, float32 [n, channels] (into ``out``, C-contiguous, when given)."""
        if out is None:
            out = np.empty((n, self.channels), np.float32)
        snd, ffi, error_check = self._lib
        f = self._f
        if f.closed:
            raise RuntimeError("the file is closed")
        got = snd.sf_readf_float(f._file, ffi.from_buffer("float[]", out), n)
        error_check(snd.sf_error(f._file))
        return out[:got]

    def seek(self, frame: int) -> None:
        self._f.seek(frame)

    def __enter__(self) -> "_Soundfile":
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


class _FFmpeg:
    """FFmpeg on a stream: the first audio stream's header values and its frames as float32
    [channels, n] blocks at one rate."""

    def __init__(self, stream: BinaryIO):
        import av

        self._av = av
        self.errors = (av.error.FFmpegError, ValueError, OverflowError)
        try:
            self._container = av.open(stream, mode="r", metadata_errors="ignore")
        except self.errors as e:
            raise DecoderFailed(f"{type(e).__name__}: {e}") from None
        try:
            if not self._container.streams.audio:
                raise DecoderFailed("the container has no audio stream")
            self._stream = self._container.streams.audio[0]
            ctx = self._stream.codec_context
            if ctx is None:  # FFmpeg knows the container but has no decoder for this codec id
                raise DecoderFailed(f"no decoder for the {self.name} stream's codec", opened=True)
            self.rate, self.channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
            self.bounded = str(ctx.name).startswith(_BOUNDED_CODECS)
        except BaseException:
            self._container.close()
            raise

    @property
    def name(self) -> str:
        """FFmpeg's short name of the container format (``mov,mp4,m4a,...`` -> ``mov``)."""
        return self._container.format.name.split(",")[0]

    def declared_frames(self, rate: int) -> int | None:
        """Frames at ``rate`` that the stream's (or else the container's) duration gives."""
        if self._stream.duration and self._stream.time_base:
            return int(self._stream.duration * self._stream.time_base * rate)
        if self._container.duration:
            return int(self._container.duration * rate / 1_000_000)
        return None

    def stream_frames(self, rate: int) -> int | None:
        """Frames at ``rate`` that the stream's own duration gives (not the container's)."""
        if self._stream.duration and self._stream.time_base:
            return int(self._stream.duration * self._stream.time_base * rate)
        return None

    def blocks(self) -> Iterator[np.ndarray]:
        """float32 [channels, n] blocks; the rate is ``self.rate`` once the first block is out.

        Raises:
            AudiotokError: ``decode_error`` when the rate changes mid-stream.
            One of ``self.errors``: FFmpeg failed inside the stream.
        """
        resampler = None
        for frame in self._container.decode(self._stream):
            if resampler is None:
                self.rate, self.channels = int(frame.sample_rate), int(frame.layout.nb_channels)
                resampler = self._av.AudioResampler(format="fltp", layout=frame.layout, rate=self.rate)
            elif int(frame.sample_rate) != self.rate:
                raise AudiotokError(failures.DECODE_ERROR,
                                    f"the sample rate changes from {self.rate} to {frame.sample_rate} Hz mid-stream")
            for converted in resampler.resample(frame):
                yield converted.to_ndarray()
        if resampler is not None:
            for converted in resampler.resample(None):
                yield converted.to_ndarray()

    def __enter__(self) -> "_FFmpeg":
        return self

    def __exit__(self, *exc) -> None:
        self._container.close()


# ------------------------------------------------------------------ the header


def probe_stream(f: BinaryIO, uri: str = "", native: str | None = None) -> Probe:
    """What the header of an open, seekable binary file says, nothing decoded.

    Args:
        native: the local path of the same file, for libsndfile to read natively.

    Raises:
        AudiotokError: ``empty``, ``unsupported_format``.
    """
    try:
        return _probe(f, native)
    except AudiotokError as e:
        e.uri = e.uri or uri
        raise


def _probe(f: BinaryIO, native: str | None) -> Probe:
    f.seek(0)
    head = f.read(SNIFF_BYTES)
    if not head:
        raise AudiotokError(failures.EMPTY, "the file has no bytes")
    size = containers.stream_size(f)
    fmt = containers.sniff_format(head)
    if fmt in containers.SOUNDFILE_FORMATS:
        f.seek(0)
        try:
            with _Soundfile(native or f) as sf:
                # libsndfile reports streamed WAVs (no data size) as 0 frames and then reads
                # nothing: those go to FFmpeg, which reads to the end, as decode_audio does.
                if 0 < sf.frames < (1 << 62):
                    return Probe(sf.rate, sf.channels, sf.frames, fmt, exact=fmt in containers.EXACT_LENGTH_FORMATS,
                                 seekable=f.seekable(), size_bytes=size, bounded=sf.bounded)
        except DecoderFailed:
            pass  # FFmpeg gets a try, as in decode_audio
    f.seek(0)
    try:
        with _FFmpeg(f) as ff:
            if ff.rate <= 0 or ff.channels <= 0:
                raise AudiotokError(failures.UNSUPPORTED_FORMAT, "the stream declares no rate or channels")
            frames = ff.declared_frames(ff.rate)
            name = fmt or ff.name
            return Probe(ff.rate, ff.channels, frames if frames and frames > 0 else None, name,
                         exact=name == "mp4" and bool(frames), seekable=False, size_bytes=size, bounded=ff.bounded)
    except DecoderFailed as e:
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, f"FFmpeg: {e}") from None
    except (OverflowError, ValueError) as e:  # a duration field beyond what the arithmetic holds
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, f"FFmpeg: {type(e).__name__}: {e}") from None


# ------------------------------------------------------------------ a whole file


class _Sink:
    """Decoded frames, gathered under the length limits and the deadline.

    One interleaved float32 buffer [frames, channels] that grows in place (``realloc``:
    large blocks are remapped, not copied), so the resident peak is about the decoded size,
    not twice it; at most ``limit + 1`` frames are ever held. ``expected_frames`` (only from
    the bytes present, or a believable header) sizes it up front.
    """

    def __init__(self, rate: int, channels: int, config: DecodeConfig, deadline: float | None,
                 expected_frames: int | None = None):
        self.rate, self.channels, self.config, self.deadline = rate, channels, config, deadline
        self.limit = config.max_frames(rate, channels)
        self.frames = 0
        first = min(self.limit + 1, expected_frames if expected_frames else rate)
        self._buf = np.empty(max(1, first) * channels, np.float32)

    def region(self, n: int) -> np.ndarray:
        """A writable view [n, channels] after the frames so far, capacity grown as needed
        (never past ``limit + 1`` frames). Use it before the next call: growing moves it."""
        capacity = self._buf.size // self.channels
        need = self.frames + n
        if need > capacity:
            grown = min(self.limit + 1, max(need, capacity + capacity // 2 + 1))
            # refcheck=False: the only views are the short-lived regions handed out here.
            self._buf.resize(grown * self.channels, refcheck=False)
        return self._buf[self.frames * self.channels: need * self.channels].reshape(n, self.channels)

    def room(self, n: int) -> int:
        """How many of ``n`` frames to read next: what fits without growing, else (the buffer
        full) ``n`` up to one past the limit (to detect it)."""
        free = self._buf.size // self.channels - self.frames
        return min(n, free) if free > 0 else max(1, min(n, self.limit + 1 - self.frames))

    @property
    def full(self) -> bool:
        return self.frames * self.channels >= self._buf.size

    def commit(self, n: int) -> None:
        """Counts ``n`` frames written into the last region; raises ``too_long`` past the limit."""
        if self.frames + n > self.limit:
            check_length(self.frames + n, self.rate, self.channels, self.config, "decoding passed")
        self.frames += n
        check_deadline(self.deadline)

    def add(self, chunk: np.ndarray) -> None:
        """Appends float32 [channels, n]."""
        if chunk.ndim != 2 or chunk.shape[0] != self.channels:
            raise AudiotokError(failures.DECODE_ERROR,
                                f"the stream changes from {self.channels} channel(s) to {chunk.shape[0]} mid-way")
        n = chunk.shape[1]
        if self.frames + n > self.limit:
            check_length(self.frames + n, self.rate, self.channels, self.config, "decoding passed")
        self.region(n)[...] = chunk.T
        self.commit(n)

    def result(self) -> np.ndarray:
        """float32 [channels, frames]: a transposed view of the buffer, trimmed in place."""
        self._buf.resize(self.frames * self.channels, refcheck=False)
        return self._buf.reshape(self.frames, self.channels).T


def decode_audio(source: bytes | BinaryIO, uri: str = "", config: DecodeConfig | None = None,
                 deadline: float | None = None, native: str | None = None) -> Audio:
    """Decodes a whole file under the limits of ``config``.

    Args:
        source: the file's bytes, or a seekable binary file object.
        uri: named in errors.
        config: limits and the truncation policy (default ``DecodeConfig()``).
        deadline: ``time.monotonic()`` value after which decoding stops with ``timeout``.
        native: the local path of the same file, for libsndfile to read natively.

    Returns:
        The decoded audio, float32 [channels, samples], at the source rate (not yet
        checked against the sample-value policy: see :func:`audiotok.transforms.policy.apply_policy`).

    Raises:
        AudiotokError: ``empty``, ``truncated``, ``unsupported_format``, ``header_mismatch``,
            ``decode_error``, ``bad_sample_rate``, ``too_many_channels``, ``too_long``,
            ``timeout``, ``out_of_memory`` or ``read_error``. Nothing else: any other exception is a bug.
    """
    config = config or DecodeConfig()
    try:
        return _decode_audio(source, config, deadline, native)
    except AudiotokError as e:
        e.uri = e.uri or uri
        raise
    except MemoryError:
        raise AudiotokError(failures.OUT_OF_MEMORY, "out of memory while decoding", uri) from None
    except OSError as e:  # the storage under the stream failed
        raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", uri) from e


def _decode_audio(source: bytes | BinaryIO, config: DecodeConfig, deadline: float | None,
                  native: str | None) -> Audio:
    stream = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    size = containers.stream_size(stream)
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    if not head:
        raise AudiotokError(failures.EMPTY, "the file has no bytes")
    fmt = containers.sniff_format(head[:SNIFF_BYTES])

    exact_frames, notes, use_soundfile = None, (), fmt in containers.SOUNDFILE_FORMATS
    if fmt == "wav" and size is not None:
        layout = containers.wav_layout(stream, size)
        if layout is not None:
            exact_frames, notes = containers.check_wav_layout(layout, config)
            if layout.declared_bytes is None and layout.frame_exact:
                use_soundfile = False  # libsndfile reads a size-0 data chunk as empty; FFmpeg reads to the end
    errors: list[str] = []
    partial: Audio | None = None
    opened = False
    if use_soundfile:
        stream.seek(0)
        try:
            audio = _decode_soundfile(stream, fmt, head, config, deadline, size, exact_frames, native)
            return dataclasses.replace(audio, notes=notes + audio.notes)
        except DecoderFailed as e:
            errors.append(f"soundfile: {e}")
            partial, opened = e.partial, e.opened
    stream.seek(0)
    try:
        audio = _decode_ffmpeg(stream, fmt, head, config, deadline, size)
        return dataclasses.replace(audio, notes=notes + audio.notes)
    except DecoderFailed as e:
        errors.append(f"ffmpeg: {e}")
        opened = opened or e.opened
        if partial is None or (e.partial is not None and e.partial.samples.shape[1] > partial.samples.shape[1]):
            partial = e.partial or partial
    detail = "; ".join(errors)
    if partial is not None and partial.samples.shape[1] and containers.cut_short(stream, fmt, size):
        if config.truncated == "reject":
            raise AudiotokError(failures.TRUNCATED, f"the {fmt} stream ends early ({partial.duration_s:.2f} s "
                                f"decoded); {detail}")
        return dataclasses.replace(partial, notes=notes + ("truncated",))
    if fmt is not None and containers.cut_short(stream, fmt, size):
        raise AudiotokError(failures.TRUNCATED, f"the {fmt} container ends early; {detail}")
    if fmt is None or not opened:
        what = "no decoder recognises the content" if fmt is None else f"no decoder can open this {fmt} data"
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, f"{what}; {detail}")
    raise AudiotokError(failures.DECODE_ERROR, f"{fmt} could not be decoded; {detail}")


def _finish(audio: Audio, sink: _Sink, declared: int | None, error: str | None, stream: BinaryIO,
            fmt: str | None, size: int | None, config: DecodeConfig) -> Audio:
    """Judges how a decode ended: a failure mid-way, a shortfall against the header, a cut container."""
    rate, got = audio.sample_rate, sink.frames
    if error is not None:
        if got and declared is not None:  # the header says how much is missing
            return dataclasses.replace(audio, notes=judge_shortfall(
                declared, got, rate, config, f"decoding stopped at frame {got} of {declared} ({error})"))
        raise DecoderFailed(error, partial=audio if got else None, opened=True)
    if declared is not None and got < declared:
        return dataclasses.replace(audio, notes=judge_shortfall(
            declared, got, rate, config, f"the header declares {declared} frames, {got} decoded"))
    if containers.cut_short(stream, fmt, size):
        if config.truncated == "reject":
            raise AudiotokError(failures.TRUNCATED, f"the {audio.format} container ends early "
                                f"({audio.duration_s:.2f} s decoded)")
        return dataclasses.replace(audio, notes=("truncated",))
    return audio


def _decode_soundfile(stream: BinaryIO, fmt: str, head: bytes, config: DecodeConfig, deadline: float | None,
                      size: int | None, exact_frames: int | None, native: str | None) -> Audio:
    with _Soundfile(native or stream) as f:
        rate, channels = f.rate, f.channels
        check_format(rate, channels, config)
        declared = containers.declared_frames(f.frames, fmt, head)
        believed = declared if declared is not None and containers.header_believable(declared, rate, size) else None
        if exact_frames is None and believed is not None:
            check_length(believed, rate, channels, config, "the header declares")
        sink = _Sink(rate, channels, config, deadline, exact_frames or believed)
        block = max(256, CHUNK_BYTES // (4 * channels))
        error = None
        while True:
            try:
                if sink.full:  # a small read first: growing the buffer just to find the end is waste
                    more = f.read(256)
                    if not len(more):
                        break
                    sink.add(more.T)
                    continue
                want = sink.room(block)  # straight into the buffer: no per-block copy
                got = len(f.read(want, out=sink.region(want)))
            except f.errors as e:
                error = str(e)
                break
            if not got:
                break
            sink.commit(got)
        audio = Audio(samples=sink.result(), sample_rate=rate, format=fmt)
    return _finish(audio, sink, declared, error, stream, fmt, size, config)


def _decode_ffmpeg(stream: BinaryIO, fmt: str | None, head: bytes, config: DecodeConfig, deadline: float | None,
                   size: int | None) -> Audio:
    with _FFmpeg(stream) as ff:
        rate, channels = ff.rate, ff.channels
        declared = believed = None
        if rate > 0 and channels > 0:
            check_format(rate, channels, config)
            frames = ff.stream_frames(rate)
            declared = containers.declared_frames(frames, fmt, head) if frames is not None else None
            if declared is not None and containers.header_believable(declared, rate, size):
                believed = declared
                check_length(believed, rate, channels, config, "the header declares")
        name = fmt or ff.name
        sink: _Sink | None = None
        error = None
        blocks = ff.blocks()
        while True:
            try:
                block = next(blocks, None)
            except ff.errors as e:
                error = f"{type(e).__name__}: {e}"
                break
            if block is None:
                break
            if sink is None:
                rate = ff.rate
                check_format(rate, ff.channels, config)
                sink = _Sink(rate, ff.channels, config, deadline, believed)
            sink.add(block)
            check_deadline(deadline)
    if sink is None or not sink.frames:
        if error is not None:
            raise DecoderFailed(error, opened=True)
        raise AudiotokError(failures.EMPTY, "the audio stream has no samples")
    audio = Audio(samples=sink.result(), sample_rate=rate, format=name)
    return _finish(audio, sink, declared, error, stream, fmt, size, config)


# ------------------------------------------------------------------ blocks from a position


def read_blocks(f: BinaryIO, probe: Probe, start: int, block_frames: int, stop: int | None = None,
                native: str | None = None) -> Iterator[np.ndarray]:
    """The samples of an open file from source frame ``start`` on (to ``stop``, or the end), as
    float32 [channels, n] blocks of about ``block_frames`` frames (FFmpeg: its own frame sizes),
    at the source rate. Nothing past ``stop`` is read from libsndfile formats; ``native``: the
    local path of the same file, for libsndfile to read natively.

    Raises:
        AudiotokError: ``decode_error`` when a reader fails mid-way or the stream changes
            from what ``probe`` says, ``header_mismatch`` when its rate differs,
            ``unsupported_format`` when no reader opens it.
    """
    f.seek(0)
    if probe.seekable:
        blocks = _soundfile_blocks(native or f, start, block_frames, stop)
    else:
        blocks = _ffmpeg_blocks(f, start)
    position = start
    for block in blocks:
        if block.shape[0] != probe.channels:
            raise AudiotokError(failures.DECODE_ERROR, f"{block.shape[0]} channel(s) where the header "
                                f"says {probe.channels}")
        if stop is not None and position + block.shape[1] >= stop:
            if stop > position:
                yield block[:, : stop - position]
            return
        position += block.shape[1]
        yield block


def _check_rate(rate: int, probe_rate: int) -> None:
    if rate != probe_rate:
        raise AudiotokError(failures.HEADER_MISMATCH, f"the header says {probe_rate} Hz, the stream is {rate} Hz")


def _soundfile_blocks(f: BinaryIO | str, start: int, block: int, stop: int | None) -> Iterator[np.ndarray]:
    try:
        reader = _Soundfile(f)
    except DecoderFailed as e:
        raise AudiotokError(failures.DECODE_ERROR, f"soundfile: {e}") from None
    with reader:
        try:
            if start:
                reader.seek(start)
            position = start
            while stop is None or position < stop:
                want = block if stop is None else min(block, stop - position)
                data = reader.read(want)
                if not len(data):
                    return
                yield data.T
                position += len(data)
                if len(data) < want:
                    return
        except reader.errors as e:
            raise AudiotokError(failures.DECODE_ERROR, f"soundfile stopped: {e}") from None


def _ffmpeg_blocks(f: BinaryIO, start: int) -> Iterator[np.ndarray]:
    try:
        reader = _FFmpeg(f)
    except DecoderFailed as e:
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, f"FFmpeg: {e}") from None
    with reader:
        position = 0
        try:
            for data in reader.blocks():
                n = data.shape[1]
                if position + n > start:
                    yield data[:, max(0, start - position):]
                position += n
        except reader.errors as e:
            raise AudiotokError(failures.DECODE_ERROR, f"FFmpeg stopped: {type(e).__name__}: {e}") from None
