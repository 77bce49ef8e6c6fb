"""Naming a format by its first bytes; header checks against the bytes present."""

from __future__ import annotations

import io
import struct

import pytest

from audio_fixtures import FORMATS, encode_audio, synth_speechlike
from audiotok.transforms import containers, failures
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.policy import DecodeConfig

EXPECTED_SNIFF = {"wav": "wav", "wav-float": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg-vorbis",
                  "opus": "ogg-opus", "m4a": "mp4"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_named_by_content(fmt):
    rate = 48000 if fmt == "opus" else 22050
    data = encode_audio(synth_speechlike(0.5, rate, seed=3), rate, fmt)
    assert containers.sniff_format(data[:containers.SNIFF_BYTES]) == EXPECTED_SNIFF[fmt]


def test_sniff_unknown_and_short():
    assert containers.sniff_format(b"") is None
    assert containers.sniff_format(b"abc") is None
    assert containers.sniff_format(b"hello world, not audio at all....") is None
    assert containers.sniff_format(b"\xff\xf1\x50\x80" + b"\0" * 10) == "aac"
    assert containers.sniff_format(b"ID3\x04" + b"\0" * 10) == "mp3"


def _wav(frames_declared: int, frames_present: int, channels: int = 1, rate: int = 16000) -> bytes:
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    data = b"\0" * (frames_present * block)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", frames_declared * block) + data)


def test_wav_header_is_judged_against_the_bytes_present():
    data = _wav(16000, 16000)
    layout = containers.wav_layout(io.BytesIO(data), len(data))
    assert (layout.channels, layout.sample_rate, layout.declared_bytes, layout.present_bytes) == (1, 16000, 32000,
                                                                                                  32000)
    assert containers.check_wav_layout(layout, DecodeConfig()) == (16000, ())
    cut = _wav(16000, 4000)
    layout = containers.wav_layout(io.BytesIO(cut), len(cut))
    with pytest.raises(AudiotokError) as e:
        containers.check_wav_layout(layout, DecodeConfig())
    assert e.value.reason == failures.TRUNCATED
    assert containers.check_wav_layout(layout, DecodeConfig(truncated="keep")) == (4000, ("truncated",))
    liar = _wav(1 << 30, 100)  # billions of frames declared, a hundred present
    layout = containers.wav_layout(io.BytesIO(liar), len(liar))
    with pytest.raises(AudiotokError) as e:
        containers.check_wav_layout(layout, DecodeConfig())
    assert e.value.reason == failures.HEADER_MISMATCH


def test_cut_containers_are_recognised():
    ogg = encode_audio(synth_speechlike(1.0, 16000, seed=1), 16000, "ogg")
    assert containers.ogg_tail_complete(io.BytesIO(ogg), len(ogg))
    assert not containers.ogg_tail_complete(io.BytesIO(ogg[:-100]), len(ogg) - 100)
    m4a = encode_audio(synth_speechlike(1.0, 16000, seed=1), 16000, "m4a")
    assert not containers.mp4_truncated(io.BytesIO(m4a), len(m4a))
    assert containers.mp4_truncated(io.BytesIO(m4a[:-100]), len(m4a) - 100)
