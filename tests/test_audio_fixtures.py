"""The test audio helpers themselves: synthesis is deterministic, every format round-trips."""

from __future__ import annotations

import io

import numpy as np
import pytest

try:
    from tests.audio_fixtures import (
        FORMATS,
        OPUS_SAMPLE_RATE,
        decode_with_pyav,
        encode_audio,
        synth_speechlike,
    )
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from audio_fixtures import (
        FORMATS,
        OPUS_SAMPLE_RATE,
        decode_with_pyav,
        encode_audio,
        synth_speechlike,
    )

AAC_FRAME = 1024


def test_synth_is_deterministic_and_bounded() -> None:
    a = synth_speechlike(1.5, 16000, channels=2, seed=7)
    assert a.shape == (2, 24000)
    assert a.dtype == np.float32
    assert np.abs(a).max() <= 0.9
    assert np.array_equal(a, synth_speechlike(1.5, 16000, channels=2, seed=7))
    assert not np.array_equal(a, synth_speechlike(1.5, 16000, channels=2, seed=8))
    assert np.corrcoef(a[0], a[1])[0, 1] > 0.3  # channels are correlated, not identical
    assert not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_format_round_trips(fmt: str, channels: int) -> None:
    rate = 16000
    samples = synth_speechlike(1.0, rate, channels=channels, seed=1)
    data = encode_audio(samples, rate, fmt)
    assert len(data) > 100

    decoded, decoded_rate = decode_with_pyav(data)
    expected_rate = OPUS_SAMPLE_RATE if fmt == "opus" else rate
    assert decoded_rate == expected_rate
    assert decoded.shape[0] == channels
    extra = decoded.shape[1] - expected_rate * 1.0
    assert 0 <= extra < (AAC_FRAME if fmt == "m4a" else 1), (fmt, decoded.shape)
    if fmt in ("wav", "flac", "wav-float"):
        tolerance = 0 if fmt == "wav-float" else 1.01 / 32768
        assert np.abs(decoded[:, : samples.shape[1]] - samples).max() <= tolerance


@pytest.mark.parametrize("fmt", FORMATS)
def test_encoding_is_deterministic(fmt: str) -> None:
    samples = synth_speechlike(0.3, 16000, channels=2, seed=3)
    assert encode_audio(samples, 16000, fmt) == encode_audio(samples.copy(), 16000, fmt)


def test_soundfile_reads_what_libsndfile_supports() -> None:
    soundfile = pytest.importorskip("soundfile")
    samples = synth_speechlike(0.5, 16000, seed=2)
    for fmt in ("wav", "wav-float", "flac", "ogg"):
        data, rate = soundfile.read(io.BytesIO(encode_audio(samples, 16000, fmt)), dtype="float32")
        assert rate == 16000
        assert data.shape == (8000,)


def test_rejects_bad_input() -> None:
    samples = synth_speechlike(0.2, 16000)
    with pytest.raises(ValueError, match="unknown format"):
        encode_audio(samples, 16000, "aiff")
    with pytest.raises(ValueError, match="cannot encode at"):
        encode_audio(samples, 7000, "mp3")
    with pytest.raises(ValueError, match="1 or 2 channels"):
        encode_audio(np.zeros((3, 1600), np.float32), 16000, "m4a")
