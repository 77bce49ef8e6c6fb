"""Chunked decoding: the same samples as a whole-file decode, for any chunk size and stretch."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
import soundfile

from audio_fixtures import synth_speechlike, write_audio
from audiotok.transforms import failures, streaming
from audiotok.transforms.decode import DecodeConfig, decode_ref, resample
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.records import AudioRef

IN_PROCESS = DecodeConfig(isolation="none")


def whole(path, rate: int) -> np.ndarray:
    """What the whole-file path gives: decode, downmix, resample."""
    decoded = decode_ref(AudioRef(str(path)), IN_PROCESS)
    return resample(decoded.audio, decoded.sample_rate, rate)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    x = synth_speechlike(12.0, 44100, channels=2, seed=5)
    out = {fmt: write_audio(root / f"a.{fmt}", x, 44100, fmt) for fmt in ("wav", "flac", "mp3", "m4a")}
    out["opus"] = write_audio(root / "a.opus", synth_speechlike(8.0, 48000, seed=6), 48000, "opus")
    return out


@pytest.mark.parametrize("fmt, rate, channels, seekable, exact", [
    ("wav", 44100, 2, True, True), ("flac", 44100, 2, True, True), ("mp3", 44100, 2, True, False),
    ("m4a", 44100, 2, False, True), ("opus", 48000, 1, True, True)])
def test_probe_reads_the_header(files, fmt, rate, channels, seekable, exact):
    info = streaming.probe(str(files[fmt]))
    assert (info.sample_rate, info.channels, info.seekable, info.exact) == (rate, channels, seekable, exact)
    expected_s = 8.0 if fmt == "opus" else 12.0
    assert info.duration_s == pytest.approx(expected_s, abs=0.05)
    assert info.believable()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a", "opus"])
@pytest.mark.parametrize("rate", [16000, 24000])
def test_stream_from_start_equals_whole_file_bit_for_bit(files, fmt, rate):
    reference = whole(files[fmt], rate)
    for chunk_s in (0.37, 4.0, 100.0):
        got = streaming.read_all(str(files[fmt]), rate, chunk_s=chunk_s)
        np.testing.assert_array_equal(got, reference)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a", "opus"])
def test_stretches_equal_the_whole_file_within_rounding(files, fmt):
    reference = whole(files[fmt], 16000)
    for start, stop in [(1, 9000), (12345, 70001), (100000, None), (len(reference) - 500, None)]:
        got = streaming.read_all(str(files[fmt]), 16000, chunk_s=1.1, start=start, stop=stop)
        want = reference[start:stop]
        assert got.shape == want.shape
        # Resampling restarts 0.25 s early on the output grid: only rounding differs.
        # Opus's decoder restarts after a seek too, which shows a little more.
        np.testing.assert_allclose(got, want, atol=2e-3 if fmt == "opus" else 1e-6)


def test_adjacent_stretches_concatenate_to_the_whole(files):
    reference = whole(files["flac"], 16000)
    cuts = [0, 33333, 33334, 100000, 150001, None]
    parts = [streaming.read_all(str(files["flac"]), 16000, chunk_s=2.0, start=a, stop=b)
             for a, b in zip(cuts, cuts[1:])]
    joined = np.concatenate(parts)
    assert joined.shape == reference.shape
    np.testing.assert_allclose(joined, reference, atol=1e-6)


def test_resample_stream_does_not_depend_on_chunking():
    x = synth_speechlike(5.0, 22050, seed=2)[0]
    reference = resample(x, 22050, 16000)
    for size in (1, 441, 10000):
        pieces = [x[i:i + size] for i in range(0, len(x), size)]
        np.testing.assert_array_equal(np.concatenate(list(streaming.resample_stream(pieces, 22050, 16000))), reference)


@pytest.mark.parametrize("src, dst", [(44100, 16000), (22050, 24000), (48000, 16000), (8000, 16000), (11025, 16000)])
def test_aligned_start_is_on_the_output_grid(src, dst):
    for start in (0, 1, 999, 123457):
        s_in, s_out = streaming.aligned_start(start, src, dst, preroll=dst // 4)
        assert s_out <= max(0, start - dst // 4) or s_out == 0
        assert s_in * dst == s_out * src  # the same instant at both rates
        assert start - s_out <= dst // 4 + dst  # never more than the pre-roll and one grid step early


def test_memory_does_not_grow_with_the_file(tmp_path):
    """Five minutes of 48 kHz stereo streamed in 2 s chunks: the peak stays near a few chunks,
    far below the 110 MB that the file takes decoded (tracemalloc counts numpy buffers)."""
    rate = 48000
    pattern = synth_speechlike(3.0, rate, channels=2, seed=1).T
    path = tmp_path / "long.wav"
    with soundfile.SoundFile(path, "w", rate, 2, "PCM_16") as f:
        for _ in range(100):
            f.write(pattern)
    tracemalloc.start()
    try:
        n = sum(chunk.shape[0] for chunk in streaming.iter_chunks(str(path), 2.0, 16000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 300 * 16000
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_unreadable_inputs_give_reasons(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(AudiotokError) as e:
        streaming.probe(str(empty))
    assert e.value.reason == failures.EMPTY
    with pytest.raises(AudiotokError) as e:
        streaming.probe(str(garbage))
    assert e.value.reason == failures.UNSUPPORTED_FORMAT and str(garbage) in str(e.value)
    with pytest.raises(AudiotokError) as e:
        streaming.probe(str(tmp_path / "missing.wav"))
    assert e.value.reason == failures.READ_ERROR
    # A WAV whose format tag FFmpeg's demuxer accepts but has no decoder for (codec_context None).
    pcm = b"\x00" * 1600
    fmt = struct.pack("<HHIIHH", 0x1234, 1, 16000, 32000, 2, 16)
    odd = tmp_path / "odd_codec.wav"
    odd.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                    + b"data" + struct.pack("<I", len(pcm)) + pcm)
    with pytest.raises(AudiotokError) as e:
        streaming.probe(str(odd))
    assert e.value.reason == failures.UNSUPPORTED_FORMAT and "no decoder" in str(e.value)


def test_policy_applies_chunk_by_chunk(tmp_path):
    x = synth_speechlike(2.0, 16000, seed=3)[0]
    x[5000:5010] = np.nan
    x[9000] = 3.0
    path = tmp_path / "bad.wav"
    soundfile.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudiotokError) as e:
        streaming.read_all(str(path), 16000)
    assert e.value.reason == failures.NON_FINITE
    fixed = streaming.read_all(str(path), 16000, config=DecodeConfig(non_finite="zero", isolation="none"))
    assert np.isfinite(fixed).all() and np.abs(fixed).max() <= 1.0
    with pytest.raises(AudiotokError) as e:
        streaming.read_all(str(path), 16000, config=DecodeConfig(non_finite="zero", out_of_range="reject",
                                                                 isolation="none"))
    assert e.value.reason == failures.OUT_OF_RANGE


def test_bad_arguments_name_the_value(files):
    with pytest.raises(ValueError, match="chunk_s"):
        next(streaming.iter_chunks(str(files["wav"]), 0, 16000))
    with pytest.raises(ValueError, match="start"):
        next(streaming.iter_chunks(str(files["wav"]), 1.0, 16000, start=10, stop=5))
