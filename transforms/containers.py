"""Containers: naming a format from its first bytes, and checking what a header promises
against the bytes present.

Formats are recognised by content, never by extension. The parsers here read a few KiB at
most, never trust a size to allocate, and return None when the structure is not one they know
(the readers, ``transforms/readers.py``, then have the last word).
"""

from __future__ import annotations

import dataclasses
import io
import struct
from typing import BinaryIO

from audiotok.transforms import failures
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.policy import DecodeConfig, check_duration, check_format, check_length, judge_shortfall

# Bytes that name a format.
SNIFF_BYTES = 64
# Bytes read from the start of a file for its tags (ID3, Xing/Info) and small headers.
HEAD_BYTES = 4096
# Formats that libsndfile reads (sample-accurate seeks, frame counts from the header); the
# rest go straight to FFmpeg.
SOUNDFILE_FORMATS = frozenset({"wav", "flac", "ogg-vorbis", "ogg-opus", "ogg-flac", "aiff", "mp3"})
# Of those, the ones whose frame count is exact (MP3's is an estimate without a Xing/Info tag).
EXACT_LENGTH_FORMATS = frozenset({"wav", "flac", "ogg-vorbis", "ogg-opus", "ogg-flac", "aiff"})
OGG_FORMATS = frozenset({"ogg-vorbis", "ogg-opus", "ogg-flac", "ogg"})
# A compressed header is believed about a duration only when the file holds at least this many
# bytes per declared second (below any real codec's rate; FLAC of digital silence is the lowest
# at ~50 B/s). A smaller file is decoded (bounded) and its header judged.
MIN_BYTES_PER_S = 8
# WAV data sizes that writers use for "unknown" (streams written without seeking back).
_WAV_UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})


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


# ------------------------------------------------------------------ header checks


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


def check_wav_layout(layout: WavLayout, config: DecodeConfig, whole: bool = True) -> tuple[int | None, tuple[str, ...]]:
    """Judges a WAV header before decoding: impossible values, rate, channels, truncation, duration
    (and, for a file decoded ``whole``, the memory guard).

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
            notes = judge_shortfall(declared, present, layout.sample_rate, config,
                                     f"the header declares {declared} frames, the file holds {present}")
    if frames == 0:
        raise AudiotokError(failures.EMPTY, "the data chunk holds no complete frame")
    if whole:
        check_length(frames, layout.sample_rate, layout.channels, config, "the file holds")
    else:
        check_duration(frames, layout.sample_rate, config, "the file holds")
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


def header_believable(declared_frames: int, rate: int, size: int | None) -> bool:
    """Whether a compressed file is big enough to hold what its header declares (see MIN_BYTES_PER_S)."""
    return size is not None and size >= declared_frames / rate * MIN_BYTES_PER_S


def stream_size(stream: BinaryIO) -> int | None:
    """The size of a seekable stream (its position is left at the end), or None."""
    try:
        stream.seek(0, io.SEEK_END)
        return stream.tell()
    except (OSError, ValueError, AttributeError):
        return None


def peek(stream: BinaryIO, n: int) -> bytes:
    """The first ``n`` bytes of ``stream``, its position unchanged."""
    pos = stream.tell()
    try:
        stream.seek(0)
        return stream.read(n)
    finally:
        stream.seek(pos)


def cut_short(stream: BinaryIO, fmt: str | None, size: int | None) -> bool:
    """Structural evidence that the file was cut (for decoders that fail or stop quietly)."""
    if size is None:
        return False
    if fmt in OGG_FORMATS:
        return not ogg_tail_complete(stream, size)
    if fmt == "mp4":
        return mp4_truncated(stream, size)
    return False


def declared_frames(frames: int, fmt: str | None, head: bytes) -> int | None:
    """The frame count a soundfile/FFmpeg header gives, when that count comes from the file
    (FLAC STREAMINFO, MP3 Xing/Info, MP4 moov) rather than from an estimate."""
    if frames <= 0 or frames >= 1 << 62:
        return None
    if fmt in ("flac", "mp4", "aiff") or (fmt == "mp3" and mp3_has_length_tag(head)):
        return frames
    return None
