"""The readers: every format by content, the header probe, whole files, blocks from a position."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from audio_fixtures import FORMATS, encode_audio, synth_speechlike, write_audio
from audiotok.transforms import failures, readers
from audiotok.transforms.decode import probe_uri
from audiotok.transforms.failures import AudiotokError

LOSSLESS = {"wav", "wav-float", "flac"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("channels", [1, 2])
def test_every_format_decodes_by_content(fmt, channels):
    rate = 48000 if fmt == "opus" else 22050
    x = synth_speechlike(1.5, rate, channels=channels, seed=3)
    audio = readers.decode_audio(encode_audio(x, rate, fmt), uri=f"mem.{fmt}")
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


def test_empty_and_garbage_raise_reasons():
    with pytest.raises(AudiotokError) as e:
        readers.decode_audio(b"", uri="x")
    assert e.value.reason == failures.EMPTY
    rng = np.random.default_rng(0)
    with pytest.raises(AudiotokError) as e:
        readers.decode_audio(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), uri="noise.mp3")
    assert e.value.reason in (failures.UNSUPPORTED_FORMAT, failures.DECODE_ERROR)


def test_decode_from_file_object():
    x = synth_speechlike(0.5, 16000)
    audio = readers.decode_audio(io.BytesIO(encode_audio(x, 16000, "flac")))
    assert audio.samples.shape == (1, 8000)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    x = synth_speechlike(12.0, 44100, channels=2, seed=5)
    out = {fmt: write_audio(root / f"a.{fmt}", x, 44100, fmt) for fmt in ("wav", "flac", "mp3", "m4a")}
    out["wav-float"] = write_audio(root / "f.wav", x, 44100, "wav-float")
    out["opus"] = write_audio(root / "a.opus", synth_speechlike(8.0, 48000, seed=6), 48000, "opus")
    return out


@pytest.mark.parametrize("fmt, rate, channels, seekable, exact, bounded", [
    ("wav", 44100, 2, True, True, True), ("wav-float", 44100, 2, True, True, False),
    ("flac", 44100, 2, True, True, True), ("mp3", 44100, 2, True, False, False),
    ("m4a", 44100, 2, False, True, False), ("opus", 48000, 1, True, True, False)])
def test_probe_reads_the_header(files, fmt, rate, channels, seekable, exact, bounded):
    info = probe_uri(str(files[fmt]))
    assert (info.sample_rate, info.channels, info.seekable, info.exact, info.bounded) == (
        rate, channels, seekable, exact, bounded)
    expected_s = 8.0 if fmt == "opus" else 12.0
    assert info.duration_s == pytest.approx(expected_s, abs=0.05)
    assert info.believable()
    assert readers.Probe.from_json(info.to_json()) == info


def test_probes_from_a_decoder_process_are_checked(files):
    good = probe_uri(str(files["wav"])).to_json()
    for bad in ({"sample_rate": 0}, {"frames": -1}, {"format": "../x"}, {"exact": 1}, {"size_bytes": "1"}):
        with pytest.raises(ValueError):
            readers.Probe.from_json({**good, **bad})


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a"])
def test_blocks_from_a_position_are_the_whole_files_samples(files, fmt):
    whole = readers.decode_audio(open(files[fmt], "rb")).samples
    with open(files[fmt], "rb") as f:
        info = readers.probe_stream(f)
        for start in (0, 1, 44100 * 5 + 17):
            got = np.concatenate(list(readers.read_blocks(f, info, start, 10_000)), axis=1)
            assert got.shape == (2, whole.shape[1] - start)
            if fmt == "mp3" and start:  # libsndfile's MP3 seek restarts the decoder: rounding, not position
                np.testing.assert_allclose(got, whole[:, start:], atol=1e-6)
            else:
                np.testing.assert_array_equal(got, whole[:, start:])


def test_unreadable_inputs_give_reasons(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(AudiotokError) as e:
        probe_uri(str(empty))
    assert e.value.reason == failures.EMPTY
    with pytest.raises(AudiotokError) as e:
        probe_uri(str(garbage))
    assert e.value.reason == failures.UNSUPPORTED_FORMAT and str(garbage) in str(e.value)
    with pytest.raises(AudiotokError) as e:
        probe_uri(str(tmp_path / "missing.wav"))
    assert e.value.reason == failures.READ_ERROR
    # A WAV whose format tag FFmpeg's demuxer accepts but has no decoder for (codec_context None).
    pcm = b"\x00" * 1600
    fmt = struct.pack("<HHIIHH", 0x1234, 1, 16000, 32000, 2, 16)
    odd = tmp_path / "odd_codec.wav"
    odd.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                    + b"data" + struct.pack("<I", len(pcm)) + pcm)
    with pytest.raises(AudiotokError) as e:
        probe_uri(str(odd))
    assert e.value.reason == failures.UNSUPPORTED_FORMAT and "no decoder" in str(e.value)
