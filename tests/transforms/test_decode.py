"""Decoding every listed format by content, downmixing, resampling, policy checks."""

from __future__ import annotations

import io

import numpy as np
import pytest

from audio_fixtures import FORMATS, encode_audio, speech_clips, synth_speechlike
from audiotok.transforms import decode, failures
from audiotok.transforms.decode import AudiotokError, DecodeConfig
from audiotok.transforms.records import AudioRef

EXPECTED_SNIFF = {"wav": "wav", "wav-float": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg-vorbis",
                  "opus": "ogg-opus", "m4a": "mp4"}
LOSSLESS = {"wav", "wav-float", "flac"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("channels", [1, 2])
def test_every_format_decodes_by_content(fmt, channels):
    rate = 48000 if fmt == "opus" else 22050
    x = synth_speechlike(1.5, rate, channels=channels, seed=3)
    data = encode_audio(x, rate, fmt)
    assert decode.sniff_format(data[:decode.SNIFF_BYTES]) == EXPECTED_SNIFF[fmt]
    audio = decode.decode_audio(data, uri=f"mem.{fmt}")
    assert audio.samples.dtype == np.float32
    assert audio.samples.shape[0] == channels
    assert audio.sample_rate == rate
    assert abs(audio.duration_s - 1.5) < 0.1  # codecs add priming/padding frames
    if fmt in LOSSLESS:
        np.testing.assert_allclose(audio.samples[:, : x.shape[1]], x, atol=1 / 16384)
    else:
        # Lossy: the decoded signal must still be the signal (aligned by cross-correlation).
        ref, got = x[0], audio.samples[0]
        corr = np.correlate(got[: len(ref) + 4000], ref[:8000], mode="valid")
        lag = int(np.argmax(corr))
        seg = got[lag: lag + len(ref)][: len(ref)]
        n = min(len(seg), len(ref))
        r = np.corrcoef(seg[:n], ref[:n])[0, 1]
        assert r > 0.8, (fmt, r)  # noise bursts suffer most in lossy codecs


def test_wrong_extension_is_decoded_by_content(tmp_path):
    x = synth_speechlike(1.0, 16000)
    path = tmp_path / "clip.txt.wav"  # an Ogg/Vorbis stream under a misleading name
    path.write_bytes(encode_audio(x, 16000, "ogg"))
    decoded = decode.decode_ref(AudioRef(uri=str(path)), DecodeConfig())
    assert decoded.source_format == "ogg-vorbis"
    assert abs(decoded.duration_s - 1.0) < 0.1


def test_sniff_unknown_and_short():
    assert decode.sniff_format(b"") is None
    assert decode.sniff_format(b"abc") is None
    assert decode.sniff_format(b"hello world, not audio at all....") is None
    assert decode.sniff_format(b"\xff\xf1\x50\x80" + b"\0" * 10) == "aac"
    assert decode.sniff_format(b"ID3\x04" + b"\0" * 10) == "mp3"


def test_empty_and_garbage_raise_reasons():
    with pytest.raises(AudiotokError) as e:
        decode.decode_audio(b"", uri="x")
    assert e.value.reason == failures.EMPTY
    rng = np.random.default_rng(0)
    with pytest.raises(AudiotokError) as e:
        decode.decode_audio(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), uri="noise.mp3")
    assert e.value.reason in (failures.UNSUPPORTED_FORMAT, failures.DECODE_ERROR)


def test_downmix_mean_of_channels():
    x = np.stack([np.ones(10, np.float32), -np.ones(10, np.float32) * 0.5])
    np.testing.assert_allclose(decode.downmix(x), np.full(10, 0.25, np.float32))
    assert decode.downmix(x[:1]).shape == (10,)


@pytest.mark.parametrize("orig,target", [(8000, 16000), (44100, 16000), (48000, 24000), (16000, 16000)])
def test_resample_length_and_content(orig, target):
    t = np.arange(orig * 2) / orig
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = decode.resample(tone, orig, target)
    assert out.dtype == np.float32
    assert abs(out.shape[0] - 2 * target) <= 1
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(out.shape[0]) / target)
    mid = slice(target // 10, -target // 10)  # away from the filter's edges
    assert np.max(np.abs(out[mid] - expected[mid])) < 1e-2


def test_resample_removes_content_above_new_nyquist():
    orig, target = 48000, 16000
    t = np.arange(orig) / orig
    high = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # above 8 kHz
    out = decode.resample(high, orig, target)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 0.01


def test_policy_checks():
    cfg = DecodeConfig(max_duration_s=1.0, max_channels=2, min_sample_rate=8000)
    ok = decode.Audio(np.zeros((1, 8000), np.float32), 8000, "wav")
    decode.check_audio(ok, cfg)
    cases = {
        failures.TOO_LONG: decode.Audio(np.zeros((1, 16001), np.float32), 8000, "wav"),
        failures.TOO_MANY_CHANNELS: decode.Audio(np.zeros((3, 100), np.float32), 8000, "wav"),
        failures.BAD_SAMPLE_RATE: decode.Audio(np.zeros((1, 100), np.float32), 4000, "wav"),
        failures.NON_FINITE: decode.Audio(np.array([[0.0, np.nan]], np.float32), 8000, "wav"),
        failures.EMPTY: decode.Audio(np.zeros((1, 0), np.float32), 8000, "wav"),
    }
    for reason, audio in cases.items():
        with pytest.raises(AudiotokError) as e:
            decode.check_audio(audio, cfg, uri="u")
        assert e.value.reason == reason


def test_decode_from_file_object():
    x = synth_speechlike(0.5, 16000)
    audio = decode.decode_audio(io.BytesIO(encode_audio(x, 16000, "flac")))
    assert audio.samples.shape == (1, 8000)


def test_speech_fixtures_decode_to_their_length():
    """espeak-ng speech stored as WAV, FLAC, MP3 and Opus (tests/data/speech): each decodes by
    content, at its stored rate, to exactly its length, finite and loud (speech fills each clip)."""
    clips = speech_clips()
    assert {c.path.suffix for c in clips} >= {".wav", ".flac", ".mp3", ".opus"}
    for clip in clips:
        decoded = decode.decode_ref(AudioRef(uri=str(clip.path)), DecodeConfig())
        assert decoded.sample_rate == clip.sample_rate, clip.path
        assert decoded.audio.shape == (clip.samples,), clip.path
        assert np.isfinite(decoded.audio).all()
        assert 0.5 < np.abs(decoded.audio).max() <= 1.0, clip.path
