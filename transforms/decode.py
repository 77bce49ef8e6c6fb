"""Bytes -> waveform: format sniffing, decoding under limits, the input policy, downmixing, resampling.

Formats are recognised by content, never by extension. libsndfile (``soundfile``) decodes
first; FFmpeg (PyAV) is the fallback for what libsndfile cannot read (M4A/AAC, some
MP3/Opus builds) and for anything the sniffer does not know.

Hostile input: every way a file can be bad ends as an :class:`AudiotokError` with a reason
code (README.md, "Bad input"); any other exception escaping :func:`decode_audio` is a bug.
Nothing is allocated on a header's word: headers are checked against the bytes present,
rate, channels and duration are refused before decoding where the header allows it, and
decoding reads in bounded chunks, stopping at the duration limit and the memory guard.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import re
import struct
import time
from typing import BinaryIO, Callable

import numpy as np

from audiotok.transforms import failures
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.records import AudioRef, Decoded


SNIFF_BYTES = 64

# Formats that libsndfile reads; the rest go straight to FFmpeg.
_SOUNDFILE_FORMATS = frozenset({"wav", "flac", "ogg-vorbis", "ogg-opus", "ogg-flac", "aiff", "mp3"})

# A decoded chunk holds at most this many bytes (float32), whatever the rate and channels.
CHUNK_BYTES = 4 << 20
# A sample at or beyond this magnitude counts as clipped.
CLIP_LEVEL = 0.99
# Compressed headers are believed about a duration over the limit only when the file holds at
# least this many bytes per declared second (below any real codec's rate; FLAC of digital
# silence is the lowest at ~50 B/s). A smaller file is decoded (bounded) and its header judged.
MIN_BYTES_PER_S = 8
# Declared and decoded lengths may differ by codec padding: this many frames, or 0.5 %.
_LENGTH_SLACK_FRAMES = 2304
# WAV data sizes that writers use for "unknown" (streams written without seeking back).
_WAV_UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})

_CHOICES = {
    "truncated": ("reject", "keep"),
    "non_finite": ("reject", "zero"),
    "out_of_range": ("scale", "clip", "reject"),
    "silence": ("keep", "reject"),
    "clipping": ("keep", "reject"),
    "isolation": ("process", "none"),
}
# Fields that change how decoding runs, not what it produces.
_EXECUTION_FIELDS = ("isolation", "timeout_s")
DEFAULT_DECODER = "audiotok.transforms.decode:decode_checked"
_DECODER_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How inputs become waveforms, and what is refused or repaired on the way.

    Attributes:
        max_duration_s: longer inputs are rejected as ``too_long`` (None: no limit).
        min_sample_rate, max_sample_rate: accepted source rates, Hz (``bad_sample_rate``).
        max_channels: inputs with more channels are rejected (``too_many_channels``).
        max_decoded_bytes: memory guard: a decode needing more float32 bytes than this is
            stopped and rejected as ``too_long``.
        truncated: ``reject`` (``truncated``) or ``keep`` what decodes of a cut file.
        non_finite: ``reject`` (``non_finite``) or ``zero`` NaN/Inf samples.
        out_of_range: finite samples beyond [-1, 1] (float formats): ``scale`` the file down to
            a peak of 1, ``clip`` them, or ``reject`` (``out_of_range``).
        silence: ``keep`` or ``reject`` (``silent``) a file whose peak is at or below
            ``silence_threshold_dbfs``.
        clipping: ``keep`` or ``reject`` (``clipped``) a file with more than
            ``clipping_fraction`` of its samples at full scale (|x| >= 0.99).
        isolation: ``process``: decode in a reused child process (a crash or hang becomes a
            ``decoder_crash``/``timeout`` record); ``none``: in the worker itself.
        timeout_s: per-file decode time limit (None: none). In-process it is checked between
            chunks; with process isolation a hung decoder is killed.
        decoder: ``module:function`` that decodes one file, called as
            ``fn(AudioRef, DecodeConfig) -> (Decoded, notes)``; for custom decoders and for
            fault injection in tests.
    """

    max_duration_s: float | None = 4 * 3600.0
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000
    max_channels: int = 64
    max_decoded_bytes: int = 2 << 30
    truncated: str = "reject"
    non_finite: str = "reject"
    out_of_range: str = "scale"
    silence: str = "keep"
    silence_threshold_dbfs: float = -60.0
    clipping: str = "keep"
    clipping_fraction: float = 0.01
    isolation: str = "process"
    timeout_s: float | None = 300.0
    decoder: str = DEFAULT_DECODER

    def __post_init__(self) -> None:
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be positive. Found: {self.max_duration_s}")
        if not 0 < self.min_sample_rate <= self.max_sample_rate:
            raise ValueError(
                f"need 0 < min_sample_rate <= max_sample_rate. Found: {self.min_sample_rate}, {self.max_sample_rate}")
        if self.max_channels < 1:
            raise ValueError(f"max_channels must be >= 1. Found: {self.max_channels}")
        if self.max_decoded_bytes < 1 << 20:
            raise ValueError(f"max_decoded_bytes must be >= 1 MiB. Found: {self.max_decoded_bytes}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}. Found: {getattr(self, name)!r}")
        if not self.silence_threshold_dbfs <= 0:
            raise ValueError(f"silence_threshold_dbfs must be <= 0. Found: {self.silence_threshold_dbfs}")
        if not 0 < self.clipping_fraction <= 1:
            raise ValueError(f"clipping_fraction must be in (0, 1]. Found: {self.clipping_fraction}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive. Found: {self.timeout_s}")
        if not _DECODER_PATH.match(self.decoder):
            raise ValueError(f"decoder must be 'module:function'. Found: {self.decoder!r}")

    def content_settings(self) -> dict:
        """The fields that decide what decoding produces (not how it runs): for fingerprints."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in _EXECUTION_FIELDS}
        if self.decoder == DEFAULT_DECODER:
            del settings["decoder"]  # the built-in decoder: named by what it does, not by its module path
        return settings

    def max_frames(self, rate: int, channels: int) -> int:
        """Frames that may be decoded at ``rate`` with ``channels`` (the tighter of both limits)."""
        by_bytes = self.max_decoded_bytes // (4 * max(1, channels))
        if self.max_duration_s is None:
            return by_bytes
        return min(by_bytes, int(self.max_duration_s * rate) + 1)


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


# ------------------------------------------------------------------ container structure
# Small parsers that say what a header promises and whether the bytes present keep the
# promise. They read a few KiB at most, never trust a size to allocate, and return None
# when the structure is not what they know (the decoders then have the last word).


@dataclasses.dataclass(frozen=True)
class WavLayout:
    """What a WAV header says, against what the file holds.

    Attributes:
        codec: the format tag (1 PCM, 3 float, 0xFFFE extensible, ...).
        channels, sample_rate, block_align, bits: from ``fmt ``.
        data_offset: where the samples start.
        declared_bytes: the ``data`` size (None: the writer marked it unknown).
        present_bytes: data bytes in the file.
        frame_exact: one frame per ``block_align`` bytes (PCM, float, A-law, mu-law).
    """

    codec: int
    channels: int
    sample_rate: int
    block_align: int
    bits: int
    data_offset: int
    declared_bytes: int | None
    present_bytes: int
    frame_exact: bool


def wav_layout(stream: BinaryIO, size: int) -> WavLayout | None:
    """Parses a RIFF/RF64 WAV header (chunks up to the ``data`` chunk); None when it is not one we know.

    Raises:
        AudiotokError: ``truncated`` when the file ends inside a sane header.
    """
    stream.seek(0)
    head = stream.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return None
    pos, fmt, ds64_data = 12, None, None
    for _ in range(256):
        stream.seek(pos)
        chunk = stream.read(8)
        if len(chunk) < 8:
            if fmt is not None:
                raise AudiotokError(failures.TRUNCATED, f"the file ends at byte {size} before the data chunk")
            return None
        cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"ds64":
            body = stream.read(min(csize, 28))
            if len(body) >= 16:
                ds64_data = struct.unpack("<Q", body[8:16])[0]
        elif cid == b"fmt ":
            if not 14 <= csize <= 1024:
                return None
            body = stream.read(min(csize, 40))
            if len(body) < 14:
                raise AudiotokError(failures.TRUNCATED, "the file ends inside the fmt chunk")
            codec, channels, rate, _, block_align = struct.unpack("<HHIIH", body[:14])
            bits = struct.unpack("<H", body[14:16])[0] if len(body) >= 16 else 0
            if codec == 0xFFFE and len(body) >= 26:
                codec = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the tag
            fmt = (codec, channels, rate, block_align, bits)
        elif cid == b"data":
            if fmt is None:
                return None
            codec, channels, rate, block_align, bits = fmt
            declared: int | None = csize
            if head[:4] == b"RF64" and csize == 0xFFFFFFFF:
                declared = ds64_data
            elif csize in _WAV_UNKNOWN_SIZES:
                declared = None
            return WavLayout(codec=codec, channels=channels, sample_rate=rate, block_align=block_align, bits=bits,
                             data_offset=pos + 8, declared_bytes=declared, present_bytes=max(0, size - pos - 8),
                             frame_exact=codec in (1, 3, 6, 7))
        pos += 8 + csize + (csize & 1)
        if pos > size:
            if fmt is not None:
                raise AudiotokError(failures.TRUNCATED, f"a {cid!r} chunk runs past the end of the file")
            return None
    return None


def check_wav_layout(layout: WavLayout, config: DecodeConfig) -> tuple[int | None, tuple[str, ...]]:
    """Judges a WAV header before decoding: impossible values, rate, channels, truncation, duration.

    Returns:
        (the frames the file holds when exactly known, notes).

    Raises:
        AudiotokError: ``header_mismatch``, ``bad_sample_rate``, ``too_many_channels``,
            ``truncated``, ``too_long`` or ``empty``.
    """
    if layout.channels == 0 or layout.sample_rate == 0 or layout.block_align == 0:
        raise AudiotokError(failures.HEADER_MISMATCH, f"the header declares {layout.channels} channel(s) at "
                            f"{layout.sample_rate} Hz with {layout.block_align}-byte frames")
    if layout.frame_exact and layout.block_align != layout.channels * ((layout.bits + 7) // 8):
        raise AudiotokError(failures.HEADER_MISMATCH, f"the header's frame size ({layout.block_align} bytes) does "
                            f"not fit {layout.channels} channel(s) of {layout.bits} bits")
    check_format(layout.sample_rate, layout.channels, config)
    if not layout.frame_exact:
        return None, ()
    present = layout.present_bytes // layout.block_align
    if layout.declared_bytes is None:
        frames, notes = present, ()
    else:
        declared = layout.declared_bytes // layout.block_align
        frames, notes = min(declared, present), ()
        if declared > present:
            notes = _judge_shortfall(declared, present, layout.sample_rate, config,
                                     f"the header declares {declared} frames, the file holds {present}")
    if frames == 0:
        raise AudiotokError(failures.EMPTY, "the data chunk holds no complete frame")
    check_length(frames, layout.sample_rate, layout.channels, config, "the file holds")
    return frames, notes


def ogg_tail_complete(stream: BinaryIO, size: int) -> bool:
    """Whether an Ogg stream ends with a complete end-of-stream page (a cut file does not)."""
    span = min(size, 65536 + 282)
    stream.seek(size - span)
    tail = stream.read(span)
    pos = tail.rfind(b"OggS")
    while pos >= 0:
        if pos + 27 <= len(tail):
            nseg = tail[pos + 26]
            lacing = tail[pos + 27: pos + 27 + nseg]
            if len(lacing) == nseg and pos + 27 + nseg + sum(lacing) == len(tail):
                return bool(tail[pos + 5] & 0x04)
        pos = tail.rfind(b"OggS", 0, pos)
    return False


def mp4_truncated(stream: BinaryIO, size: int) -> bool:
    """Whether a top-level MP4/MOV box runs past the end of the file."""
    pos = 0
    for _ in range(100_000):
        if pos + 8 > size:
            return False
        stream.seek(pos)
        head = stream.read(16)
        if len(head) < 8:
            return False
        box = struct.unpack(">I", head[:4])[0]
        if box == 1:
            if len(head) < 16:
                return True
            box = struct.unpack(">Q", head[8:16])[0]
        elif box == 0:  # to the end of the file
            return False
        if box < 8:
            return False  # not a box structure we can judge
        if pos + box > size:
            return True
        pos += box
    return False


def mp3_has_length_tag(head: bytes) -> bool:
    """Whether an MP3 carries a Xing/Info (LAME) or VBRI tag, whose frame count decoders report.

    ``head``: the first few KiB (ID3v2 tag included).
    """
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        start = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F))
    frame = head[start: start + 200]
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


# ------------------------------------------------------------------ limits and judgements


def check_format(rate: int, channels: int, config: DecodeConfig) -> None:
    """Rate and channel limits (before anything is decoded, where a header tells them)."""
    if rate <= 0 or channels <= 0:
        raise AudiotokError(failures.HEADER_MISMATCH, f"the stream declares {channels} channel(s) at {rate} Hz")
    if not config.min_sample_rate <= rate <= config.max_sample_rate:
        raise AudiotokError(failures.BAD_SAMPLE_RATE,
                            f"sample rate {rate} Hz is outside [{config.min_sample_rate}, {config.max_sample_rate}]")
    if channels > config.max_channels:
        raise AudiotokError(failures.TOO_MANY_CHANNELS, f"{channels} channels > {config.max_channels}")


def check_length(frames: int, rate: int, channels: int, config: DecodeConfig, what: str) -> None:
    """Duration limit and memory guard for ``frames`` frames; raises ``too_long``."""
    if config.max_duration_s is not None and frames / rate > config.max_duration_s:
        raise AudiotokError(failures.TOO_LONG, f"{what} {frames / rate:.1f} s > {config.max_duration_s} s")
    if frames * channels * 4 > config.max_decoded_bytes:
        raise AudiotokError(failures.TOO_LONG, f"{what} {frames / rate:.1f} s of {channels} channel(s): "
                            f"{frames * channels * 4 / 2**20:.0f} MiB decoded > max_decoded_bytes "
                            f"({config.max_decoded_bytes / 2**20:.0f} MiB)")


def _judge_shortfall(declared: int, got: int, rate: int, config: DecodeConfig, what: str) -> tuple[str, ...]:
    """A stream shorter than its header promised: truncated (kept or not), or a header that lies."""
    if declared - got <= max(_LENGTH_SLACK_FRAMES, declared // 200):
        return ()
    if config.max_duration_s is not None and declared / rate > config.max_duration_s:
        raise AudiotokError(failures.HEADER_MISMATCH,
                            f"{what}: {declared / rate:.0f} s declared is over the limit and not in the file")
    if config.truncated == "reject":
        raise AudiotokError(failures.TRUNCATED, f"{what} ({got / rate:.2f} of {declared / rate:.2f} s)")
    return ("truncated",)


def _header_believable(declared_frames: int, rate: int, size: int | None) -> bool:
    """Whether a compressed file is big enough to hold what its header declares (see MIN_BYTES_PER_S)."""
    return size is not None and size >= declared_frames / rate * MIN_BYTES_PER_S


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


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise AudiotokError(failures.TIMEOUT, "decoding took longer than the per-file time limit")


# libsndfile's messages start with the repr of the file object (a memory address): not news.
_OPENING = re.compile(r"^Error opening <[^>]*>: ")


class _DecoderFailed(Exception):
    """A decoder could not open or read the stream (its message says why); the next one gets a try."""

    def __init__(self, message: str, partial: "Audio | None" = None, opened: bool = False):
        super().__init__(message)
        self.partial = partial
        self.opened = opened


# ------------------------------------------------------------------ decoding


def decode_audio(source: bytes | BinaryIO, uri: str = "", config: DecodeConfig | None = None,
                 deadline: float | None = None) -> Audio:
    """Decodes a whole file under the limits of ``config``.

    Args:
        source: the file's bytes, or a seekable binary file object.
        uri: named in errors.
        config: limits and the truncation policy (default ``DecodeConfig()``).
        deadline: ``time.monotonic()`` value after which decoding stops with ``timeout``.

    Returns:
        The decoded audio, float32 [channels, samples], at the source rate (not yet
        checked against the sample-value policy: see :func:`apply_policy`).

    Raises:
        AudiotokError: ``empty``, ``truncated``, ``unsupported_format``, ``header_mismatch``,
            ``decode_error``, ``bad_sample_rate``, ``too_many_channels``, ``too_long``,
            ``timeout`` or ``read_error``. Nothing else: any other exception is a bug.
    """
    config = config or DecodeConfig()
    try:
        return _decode_audio(source, config, deadline)
    except AudiotokError as e:
        e.uri = e.uri or uri
        raise
    except MemoryError:
        raise AudiotokError(failures.OUT_OF_MEMORY, "out of memory while decoding", uri) from None
    except OSError as e:  # the storage under the stream failed
        raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", uri) from e


def _decode_audio(source: bytes | BinaryIO, config: DecodeConfig, deadline: float | None) -> Audio:
    stream = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    size = _stream_size(stream)
    stream.seek(0)
    head = stream.read(4096)
    if not head:
        raise AudiotokError(failures.EMPTY, "the file has no bytes")
    fmt = sniff_format(head[:SNIFF_BYTES])

    exact_frames, notes, use_soundfile = None, (), fmt in _SOUNDFILE_FORMATS
    if fmt == "wav" and size is not None:
        layout = wav_layout(stream, size)
        if layout is not None:
            exact_frames, notes = check_wav_layout(layout, config)
            if layout.declared_bytes is None and layout.frame_exact:
                use_soundfile = False  # libsndfile reads a size-0 data chunk as empty; FFmpeg reads to the end
    errors: list[str] = []
    partial: Audio | None = None
    opened = False
    if use_soundfile:
        stream.seek(0)
        try:
            audio = _decode_soundfile(stream, fmt, config, deadline, size, exact_frames)
            return dataclasses.replace(audio, notes=notes + audio.notes)
        except _DecoderFailed as e:
            errors.append(f"soundfile: {e}")
            partial, opened = e.partial, e.opened
    stream.seek(0)
    try:
        audio = _decode_pyav(stream, fmt, config, deadline, size)
        return dataclasses.replace(audio, notes=notes + audio.notes)
    except _DecoderFailed as e:
        errors.append(f"ffmpeg: {e}")
        opened = opened or e.opened
        if partial is None or (e.partial is not None and e.partial.samples.shape[1] > partial.samples.shape[1]):
            partial = e.partial or partial
    detail = "; ".join(errors)
    if partial is not None and partial.samples.shape[1] and _cut_short(stream, fmt, size):
        if config.truncated == "reject":
            raise AudiotokError(failures.TRUNCATED, f"the {fmt} stream ends early ({partial.duration_s:.2f} s "
                                f"decoded); {detail}")
        return dataclasses.replace(partial, notes=notes + ("truncated",))
    if fmt is not None and _cut_short(stream, fmt, size):
        raise AudiotokError(failures.TRUNCATED, f"the {fmt} container ends early; {detail}")
    if fmt is None or not opened:
        what = "no decoder recognises the content" if fmt is None else f"no decoder can open this {fmt} data"
        raise AudiotokError(failures.UNSUPPORTED_FORMAT, f"{what}; {detail}")
    raise AudiotokError(failures.DECODE_ERROR, f"{fmt} could not be decoded; {detail}")


def _stream_size(stream: BinaryIO) -> int | None:
    try:
        stream.seek(0, io.SEEK_END)
        return stream.tell()
    except (OSError, ValueError, AttributeError):
        return None


def _cut_short(stream: BinaryIO, fmt: str | None, size: int | None) -> bool:
    """Structural evidence that the file was cut (for decoders that fail or stop quietly)."""
    if size is None:
        return False
    if fmt in ("ogg-vorbis", "ogg-opus", "ogg-flac", "ogg"):
        return not ogg_tail_complete(stream, size)
    if fmt == "mp4":
        return mp4_truncated(stream, size)
    return False


def _declared_frames(frames: int, fmt: str | None, head: bytes) -> int | None:
    """The frame count a soundfile/FFmpeg header gives, when that count comes from the file
    (FLAC STREAMINFO, MP3 Xing/Info, MP4 moov) rather than from an estimate."""
    if frames <= 0 or frames >= 1 << 62:
        return None
    if fmt in ("flac", "mp4", "aiff") or (fmt == "mp3" and mp3_has_length_tag(head)):
        return frames
    return None


def _decode_soundfile(stream: BinaryIO, fmt: str, config: DecodeConfig, deadline: float | None,
                      size: int | None, exact_frames: int | None) -> Audio:
    import soundfile

    try:
        f = soundfile.SoundFile(stream)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise _DecoderFailed(_OPENING.sub("", str(e))) from None
    with f:
        rate, channels = int(f.samplerate), int(f.channels)
        check_format(rate, channels, config)
        stream_head = _peek(stream, 4096)
        declared = _declared_frames(int(f.frames), fmt, stream_head)
        believed = declared if declared is not None and _header_believable(declared, rate, size) else None
        if exact_frames is None and believed is not None:
            check_length(believed, rate, channels, config, "the header declares")
        sink = _Sink(rate, channels, config, deadline, exact_frames or believed)
        block = max(256, CHUNK_BYTES // (4 * channels))
        error = None
        while True:
            try:
                if sink.full:  # a small read first: growing the buffer just to find the end is waste
                    probe = f.read(256, dtype="float32", always_2d=True)
                    if not len(probe):
                        break
                    sink.add(probe.T)
                    continue
                want = sink.room(block)  # straight into the buffer: no per-block copy
                got = len(f.read(want, dtype="float32", always_2d=True, out=sink.region(want)))
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
                error = str(e)
                break
            if not got:
                break
            sink.commit(got)
        audio = Audio(samples=sink.result(), sample_rate=rate, format=fmt)
    if error is not None:
        if sink.frames and declared is not None:  # the header says how much is missing
            return dataclasses.replace(audio, notes=_judge_shortfall(
                declared, sink.frames, rate, config, f"decoding stopped at frame {sink.frames} of {declared} ({error})"))
        raise _DecoderFailed(error, partial=audio if sink.frames else None, opened=True)
    if declared is not None and sink.frames < declared:
        return dataclasses.replace(audio, notes=_judge_shortfall(
            declared, sink.frames, rate, config, f"the header declares {declared} frames, {sink.frames} decoded"))
    if fmt.startswith("ogg") and size is not None and not ogg_tail_complete(stream, size):
        if config.truncated == "reject":
            raise AudiotokError(failures.TRUNCATED, f"the Ogg stream has no complete last page "
                                f"({audio.duration_s:.2f} s decoded)")
        return dataclasses.replace(audio, notes=("truncated",))
    return audio


def _peek(stream: BinaryIO, n: int) -> bytes:
    pos = stream.tell()
    try:
        stream.seek(0)
        return stream.read(n)
    finally:
        stream.seek(pos)


def name_of(container) -> str:
    """FFmpeg's short name of a container format (``mov,mp4,m4a,...`` -> ``mov``)."""
    return container.format.name.split(",")[0]


def _decode_pyav(stream: BinaryIO, fmt: str | None, config: DecodeConfig, deadline: float | None,
                 size: int | None) -> Audio:
    import av

    head = _peek(stream, 4096)
    try:
        container = av.open(stream, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OverflowError) as e:
        raise _DecoderFailed(f"{type(e).__name__}: {e}") from None
    with container:
        if not container.streams.audio:
            raise _DecoderFailed("the container has no audio stream")
        audio_stream = container.streams.audio[0]
        ctx = audio_stream.codec_context
        if ctx is None:  # FFmpeg knows the container but has no decoder for this codec id
            raise _DecoderFailed(f"no decoder for the {name_of(container)} stream's codec", opened=True)
        rate, channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
        declared = believed = None
        if rate > 0 and channels > 0:
            check_format(rate, channels, config)
            if audio_stream.duration and audio_stream.time_base:
                declared = _declared_frames(int(audio_stream.duration * audio_stream.time_base * rate), fmt, head)
            if declared is not None and _header_believable(declared, rate, size):
                believed = declared
                check_length(believed, rate, channels, config, "the header declares")
        name = fmt or name_of(container)
        sink: _Sink | None = None
        resampler = None
        error = None
        frames = container.decode(audio_stream)
        while error is None:
            try:
                frame = next(frames, None)
                if frame is not None and resampler is None:
                    rate, channels = int(frame.sample_rate), int(frame.layout.nb_channels)
                    check_format(rate, channels, config)
                    sink = _Sink(rate, channels, config, deadline, believed)
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate)
                elif frame is not None and int(frame.sample_rate) != rate:
                    raise AudiotokError(failures.DECODE_ERROR,
                                        f"the sample rate changes from {rate} to {frame.sample_rate} Hz mid-stream")
                converted = resampler.resample(frame) if resampler is not None else []
            except (av.error.FFmpegError, ValueError, OverflowError) as e:
                error = f"{type(e).__name__}: {e}"
                break
            for chunk in converted:
                sink.add(chunk.to_ndarray())
            check_deadline(deadline)
            if frame is None:
                break
    if sink is None or not sink.frames:
        if error is not None:
            raise _DecoderFailed(error, opened=True)
        raise AudiotokError(failures.EMPTY, "the audio stream has no samples")
    audio = Audio(samples=sink.result(), sample_rate=rate, format=name)
    if error is not None:
        if declared is not None:  # the header says how much is missing
            return dataclasses.replace(audio, notes=_judge_shortfall(
                declared, sink.frames, rate, config, f"decoding stopped at frame {sink.frames} of {declared} ({error})"))
        raise _DecoderFailed(error, partial=audio, opened=True)
    if declared is not None and sink.frames < declared:
        return dataclasses.replace(audio, notes=_judge_shortfall(
            declared, sink.frames, rate, config, f"the header declares {declared} frames, {sink.frames} decoded"))
    if _cut_short(stream, fmt, size):
        if config.truncated == "reject":
            raise AudiotokError(failures.TRUNCATED, f"the {name} container ends early ({audio.duration_s:.2f} s "
                                "decoded)")
        return dataclasses.replace(audio, notes=("truncated",))
    return audio


# ------------------------------------------------------------------ sample-value policy

_SCAN_FRAMES = 1 << 18


@dataclasses.dataclass(frozen=True)
class SampleStats:
    """One pass over the samples, in blocks (no full-size temporaries).

    Attributes:
        finite: no NaN or Inf.
        peak: the largest finite magnitude.
        clipped: samples with magnitude >= CLIP_LEVEL (finite ones).
        total: samples (all channels).
    """

    finite: bool
    peak: float
    clipped: int
    total: int


def sample_stats(samples: np.ndarray) -> SampleStats:
    """Statistics of float32 [channels, samples]."""
    finite, peak, clipped = True, 0.0, 0
    for start in range(0, samples.shape[-1], _SCAN_FRAMES):
        block = samples[..., start: start + _SCAN_FRAMES]
        ok = np.isfinite(block)
        if not ok.all():
            finite = False
            block = np.where(ok, block, np.float32(0))
        if block.size:
            peak = max(peak, float(block.max()), -float(block.min()))
            clipped += int(np.count_nonzero(block >= CLIP_LEVEL)) + int(np.count_nonzero(block <= -CLIP_LEVEL))
    return SampleStats(finite=finite, peak=peak, clipped=clipped, total=int(samples.size))


def apply_policy(audio: Audio, config: DecodeConfig, uri: str = "") -> Audio:
    """Limits, then the sample-value policy: non-finite, out-of-range, silence, clipping.

    Repairs (``non_finite=zero``, ``out_of_range=scale|clip``) work in place on
    ``audio.samples`` and add a note (``non_finite_zeroed``, ``out_of_range_scaled``,
    ``out_of_range_clipped``); kept silence and clipping add ``silent`` / ``clipped``.

    Raises:
        AudiotokError: ``empty``, ``bad_sample_rate``, ``too_many_channels``, ``too_long``,
            ``non_finite``, ``out_of_range``, ``silent`` or ``clipped``.
    """
    try:
        samples = audio.samples
        channels, n = samples.shape
        if n == 0:
            raise AudiotokError(failures.EMPTY, "the audio stream has no samples")
        check_format(audio.sample_rate, channels, config)
        check_length(n, audio.sample_rate, channels, config, "the audio lasts")
        notes = list(audio.notes)
        stats = sample_stats(samples)
        if not stats.finite:
            if config.non_finite == "reject":
                raise AudiotokError(failures.NON_FINITE, "the audio has NaN or Inf samples")
            np.nan_to_num(samples, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            notes.append("non_finite_zeroed")
            stats = sample_stats(samples)
        if stats.peak > 1.0:
            if config.out_of_range == "reject":
                raise AudiotokError(failures.OUT_OF_RANGE, f"samples reach {stats.peak:.4g}, beyond [-1, 1]")
            if config.out_of_range == "scale":
                samples *= np.float32(1.0 / stats.peak)
                np.clip(samples, -1.0, 1.0, out=samples)  # rounding can leave 1 + eps
                notes.append("out_of_range_scaled")
            else:
                np.clip(samples, -1.0, 1.0, out=samples)
                notes.append("out_of_range_clipped")
            stats = sample_stats(samples)
        threshold = 10 ** (config.silence_threshold_dbfs / 20)
        if stats.peak <= threshold:
            if config.silence == "reject":
                raise AudiotokError(failures.SILENT, f"the peak is {_dbfs(stats.peak)} <= "
                                    f"{config.silence_threshold_dbfs} dBFS")
            notes.append("silent")
        clipped = stats.clipped / max(1, stats.total)
        if clipped > config.clipping_fraction:
            if config.clipping == "reject":
                raise AudiotokError(failures.CLIPPED, f"{clipped:.1%} of the samples are at full scale "
                                    f"(> {config.clipping_fraction:.1%})")
            notes.append("clipped")
        return dataclasses.replace(audio, samples=samples, notes=tuple(notes))
    except AudiotokError as e:
        e.uri = e.uri or uri
        raise


def _dbfs(peak: float) -> str:
    return "-inf dBFS" if peak <= 0 else f"{20 * np.log10(peak):.1f} dBFS"


def check_audio(audio: Audio, config: DecodeConfig, uri: str = "") -> None:
    """Raises the first policy violation of ``audio`` (repairs are tried on a copy)."""
    apply_policy(dataclasses.replace(audio, samples=np.array(audio.samples, dtype=np.float32, copy=True)),
                 config, uri)


# ------------------------------------------------------------------ channels and rates


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


# ------------------------------------------------------------------ one input


def decode_checked(ref: AudioRef, config: DecodeConfig) -> tuple[Decoded, tuple[str, ...]]:
    """Reads one input through fsspec, decodes it, applies the policy and downmixes.

    The default ``DecodeConfig.decoder``: what the in-process decoder and the decoder
    process both run. The time limit (``config.timeout_s``) starts here.

    Returns:
        (mono audio at the source rate, the notes of what was accepted or repaired).

    Raises:
        AudiotokError: with the reason the input cannot be used.
    """
    from audiotok.transforms import storage

    deadline = time.monotonic() + config.timeout_s if config.timeout_s else None
    try:
        with storage.open_input(ref.uri) as f:
            audio = decode_audio(f, ref.uri, config, deadline)
    except AudiotokError:
        raise
    except (OSError, ValueError) as e:
        raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", ref.uri) from e
    audio = apply_policy(audio, config, ref.uri)
    decoded = Decoded(source=ref, audio=downmix(audio.samples), sample_rate=audio.sample_rate,
                      source_sample_rate=audio.sample_rate, source_channels=int(audio.samples.shape[0]),
                      source_format=audio.format)
    return decoded, audio.notes


def decode_ref(ref: AudioRef, config: DecodeConfig) -> Decoded:
    """:func:`decode_checked` without the notes: mono audio at the source rate.

    Raises:
        AudiotokError: with the reason the input cannot be used.
    """
    return decode_checked(ref, config)[0]


def resolve_decoder(path: str) -> Callable[[AudioRef, DecodeConfig], tuple[Decoded, tuple[str, ...]]]:
    """The function named by ``module:function`` (``DecodeConfig.decoder``)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def resample_decoded(decoded: Decoded, target_rate: int | None) -> Decoded:
    """``decoded`` at ``target_rate`` (unchanged when None or equal)."""
    if not target_rate or target_rate == decoded.sample_rate:
        return decoded
    return dataclasses.replace(decoded, audio=resample(decoded.audio, decoded.sample_rate, target_rate),
                               sample_rate=target_rate)
