"""The decode route: one open per input, whole files, plans of long files and their stretches,
under one policy (a file streamed in stretches gets what the same file decoded whole gets)."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
import soundfile

from audio_fixtures import encode_audio, speech_clips, synth_speechlike, write_audio
from audiotok.transforms import decode, failures
from audiotok.transforms.decode import DecodeConfig, FileDecoder, Plan, SplitConfig, WorkItem, decode_ref, resample
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.records import AudioRef

IN_PROCESS = DecodeConfig(isolation="none")


def whole(path) -> np.ndarray:
    """What the whole-file path gives: mono samples at the source rate."""
    return decode_ref(AudioRef(str(path)), IN_PROCESS).audio


def test_wrong_extension_is_decoded_by_content(tmp_path):
    x = synth_speechlike(1.0, 16000)
    path = tmp_path / "clip.txt.wav"  # an Ogg/Vorbis stream under a misleading name
    path.write_bytes(encode_audio(x, 16000, "ogg"))
    decoded = decode_ref(AudioRef(uri=str(path)), DecodeConfig())
    assert decoded.source_format == "ogg-vorbis"
    assert abs(decoded.duration_s - 1.0) < 0.1


def test_downmix_mean_of_channels():
    x = np.stack([np.ones(10, np.float32), -np.ones(10, np.float32) * 0.5])
    np.testing.assert_allclose(decode.downmix(x), np.full(10, 0.25, np.float32))
    assert decode.downmix(x[:1]).shape == (10,)


@pytest.mark.parametrize("orig,target", [(8000, 16000), (44100, 16000), (48000, 24000), (16000, 16000)])
def test_resample_length_and_content(orig, target):
    t = np.arange(orig * 2) / orig
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample(tone, orig, target)
    assert out.dtype == np.float32
    assert abs(out.shape[0] - 2 * target) <= 1
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(out.shape[0]) / target)
    mid = slice(target // 10, -target // 10)  # away from the filter's edges
    assert np.max(np.abs(out[mid] - expected[mid])) < 1e-2


def test_resample_removes_content_above_new_nyquist():
    orig, target = 48000, 16000
    t = np.arange(orig) / orig
    high = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # above 8 kHz
    out = resample(high, orig, target)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 0.01


def test_speech_fixtures_decode_to_their_length():
    """espeak-ng speech stored as WAV, FLAC, MP3 and Opus (tests/data/speech): each decodes by
    content, at its stored rate, to exactly its length, finite and loud (speech fills each clip)."""
    clips = speech_clips()
    assert {c.path.suffix for c in clips} >= {".wav", ".flac", ".mp3", ".opus"}
    for clip in clips:
        decoded = decode_ref(AudioRef(uri=str(clip.path)), DecodeConfig())
        assert decoded.sample_rate == clip.sample_rate, clip.path
        assert decoded.audio.shape == (clip.samples,), clip.path
        assert np.isfinite(decoded.audio).all()
        assert 0.5 < np.abs(decoded.audio).max() <= 1.0, clip.path


# ---------------------------------------------------------------------------- stretches


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    x = synth_speechlike(12.0, 44100, channels=2, seed=5)
    out = {fmt: write_audio(root / f"a.{fmt}", x, 44100, fmt) for fmt in ("wav", "flac", "mp3", "m4a")}
    out["opus"] = write_audio(root / "a.opus", synth_speechlike(8.0, 48000, seed=6), 48000, "opus")
    return out


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a", "opus"])
def test_stream_from_start_equals_whole_file(files, fmt):
    reference = whole(files[fmt])
    for chunk_s in (0.37, 4.0, 100.0):
        got, _ = decode.read_stretch(str(files[fmt]), chunk_s=chunk_s, config=IN_PROCESS)
        np.testing.assert_array_equal(got, reference)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a", "opus"])
def test_stretches_equal_the_whole_file(files, fmt):
    reference = whole(files[fmt])
    for start, stop in [(1, 9000), (12345, 70001), (100000, None), (len(reference) - 500, None)]:
        got, _ = decode.read_stretch(str(files[fmt]), chunk_s=1.1, start=start, stop=stop, config=IN_PROCESS)
        want = reference[start:stop]
        assert got.shape == want.shape
        if fmt in ("wav", "flac", "m4a"):  # exact seeks, or FFmpeg decoding from the start
            np.testing.assert_array_equal(got, want)
        else:  # a lossy decoder restarted by a seek: float rounding (Opus: more in its first frames)
            np.testing.assert_allclose(got, want, atol=2e-3 if fmt == "opus" else 1e-6)


def test_adjacent_stretches_concatenate_to_the_whole(files):
    reference = whole(files["flac"])
    cuts = [0, 33333, 33334, 100000, 150001, None]
    parts = [decode.read_stretch(str(files["flac"]), chunk_s=2.0, start=a, stop=b, config=IN_PROCESS)[0]
             for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), reference)


def test_resample_stream_does_not_depend_on_chunking():
    x = synth_speechlike(5.0, 22050, seed=2)[0]
    reference = resample(x, 22050, 16000)
    for size in (1, 441, 10000):
        pieces = [x[i:i + size] for i in range(0, len(x), size)]
        np.testing.assert_array_equal(np.concatenate(list(decode.resample_stream(pieces, 22050, 16000))), reference)


def test_memory_does_not_grow_with_the_file(tmp_path):
    """Five minutes of 48 kHz stereo streamed in 2 s chunks: the peak stays near a few chunks,
    far below the 110 MB that the file takes decoded (tracemalloc counts numpy buffers)."""
    rate = 48000
    pattern = synth_speechlike(3.0, rate, channels=2, seed=1).T
    path = tmp_path / "long.wav"
    with soundfile.SoundFile(path, "w", rate, 2, "PCM_16") as f:
        for _ in range(100):
            f.write(pattern)
    info = decode.probe_uri(str(path))
    item = WorkItem(AudioRef(str(path)), info, 0, None, 0, 1)
    tracemalloc.start()
    try:
        n = sum(chunk.shape[0] for chunk in FileDecoder().stretch(item, IN_PROCESS, 2.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 300 * rate
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_bad_arguments_name_the_value(files):
    info = decode.probe_uri(str(files["wav"]))
    item = WorkItem(AudioRef(str(files["wav"])), info, 0, None, 0, 1)
    with pytest.raises(ValueError, match="chunk_s"):
        next(FileDecoder().stretch(item, IN_PROCESS, 0))
    with pytest.raises(ValueError, match="start"):
        next(FileDecoder().stretch(dataclasses.replace(item, start=10, stop=5), IN_PROCESS, 1.0))
    with pytest.raises(ValueError, match="split_s"):
        SplitConfig(split_s=5)
    with pytest.raises(ValueError, match="segmenter"):
        SplitConfig(split_s=60, segmenter="nope")


# ---------------------------------------------------------------------------- one policy, whole or streamed

SPLIT = SplitConfig(split_s=20.0, segment_s=4.0, chunk_s=3.0)


def _streamed(path, config: DecodeConfig, split: SplitConfig = SPLIT):
    """The long-file route on ``path``: its plan, then every stretch; (samples, notes, items)."""
    route = FileDecoder()
    plan = route.open(AudioRef(str(path)), config, split)
    assert isinstance(plan, Plan), plan
    edges = [0, *plan.cuts, None]
    items = [WorkItem(AudioRef(str(path)), plan.probe, a, b, i, len(edges) - 1, plan.repair, plan.frames)
             for i, (a, b) in enumerate(zip(edges, edges[1:]))]
    samples = np.concatenate([c for item in items for c in route.stretch(item, config, split.chunk_s)])
    return samples, plan.notes, items


def _whole(path, config: DecodeConfig):
    decoded, notes = FileDecoder().open(AudioRef(str(path)), config)
    return decoded.audio, notes


def _outcome(fn, *args):
    try:
        return fn(*args)
    except AudiotokError as e:
        return e.reason


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """50 s float WAVs: one that peaks at 2.5, one silent, one with NaN (stereo: the policy works
    before the downmix); and an MP3 that peaks beyond full scale once decoded."""
    root = tmp_path_factory.mktemp("odd")
    rate = 16000
    x = synth_speechlike(50.0, rate, channels=2, seed=9)
    loud = x / np.abs(x).max() * 2.5
    loud[1, 40 * rate:40 * rate + 400] = 2.5  # a clipped-looking run once scaled
    silent = x * 1e-4
    nan = x.copy()
    nan[0, 30 * rate + 7] = np.nan
    out = {}
    for name, samples in (("loud", loud), ("silent", silent), ("nan", nan)):
        out[name] = root / f"{name}.wav"
        soundfile.write(out[name], samples.T, rate, subtype="FLOAT")
    out["hot_mp3"] = write_audio(root / "hot.mp3", np.clip(x * 8, -1, 1), rate, "mp3")
    return out


@pytest.mark.parametrize("name, knobs", [
    ("loud", {}), ("loud", {"out_of_range": "clip"}), ("loud", {"out_of_range": "reject"}),
    ("loud", {"clipping": "reject", "clipping_fraction": 0.0001}),
    ("silent", {"silence": "reject"}), ("silent", {}),
    ("nan", {}), ("nan", {"non_finite": "zero"}),
    ("hot_mp3", {}),
])
def test_whole_and_streamed_files_get_the_same_policy_and_samples(odd_files, name, knobs):
    config = DecodeConfig(isolation="none", **knobs)
    got_whole = _outcome(_whole, odd_files[name], config)
    got_streamed = _outcome(_streamed, odd_files[name], config)
    if isinstance(got_whole, str):
        assert got_streamed == got_whole
        return
    assert not isinstance(got_streamed, str), got_streamed
    samples, notes = got_whole
    streamed, streamed_notes, items = got_streamed
    assert len(items) >= 2
    assert streamed_notes == notes
    if name == "hot_mp3":  # the first stretch exactly; after a seek, libsndfile's MP3 decoder rounds differently
        assert streamed.shape == samples.shape
        np.testing.assert_array_equal(streamed[: 20 * 16000], samples[: 20 * 16000])
        np.testing.assert_allclose(streamed, samples, atol=1e-6)
    else:
        np.testing.assert_array_equal(streamed, samples)


def test_the_reasons_the_tests_above_compare(odd_files):
    """What the whole-file policy says of each file (so the comparison above compares something)."""
    config = DecodeConfig(isolation="none")
    assert _outcome(_whole, odd_files["loud"], config)[1] == ("out_of_range_scaled",)
    assert _outcome(_whole, odd_files["silent"], dataclasses.replace(config, silence="reject")) == failures.SILENT
    assert _outcome(_whole, odd_files["silent"], config)[1] == ("silent",)
    assert _outcome(_whole, odd_files["nan"], config) == failures.NON_FINITE
    assert _outcome(_whole, odd_files["loud"], dataclasses.replace(
        config, clipping="reject", clipping_fraction=0.0001)) == failures.CLIPPED
    assert "out_of_range_scaled" in _outcome(_whole, odd_files["hot_mp3"], config)[1]


def test_bounded_formats_are_planned_without_a_statistics_pass(tmp_path):
    """A 16-bit FLAC cannot hold NaN or samples beyond full scale: its plan reads the header and
    its last second (is it cut?), not the whole file."""
    path = write_audio(tmp_path / "talk.flac", synth_speechlike(50.0, 16000, seed=2), 16000, "flac")
    reads = []

    class Counting(FileDecoder):
        def blocks(self, f, uri, probe, start, block_frames):
            reads.append(start)
            return super().blocks(f, uri, probe, start, block_frames)

    plan = Counting().open(AudioRef(str(path)), IN_PROCESS, SPLIT)
    assert isinstance(plan, Plan) and plan.frames is None and reads == [49 * 16000]
    assert plan.cuts == (20 * 16000, 40 * 16000)
    reads.clear()
    plan = Counting().open(AudioRef(str(path)), dataclasses.replace(IN_PROCESS, silence="reject"), SPLIT)
    assert plan.frames == 50 * 16000 and reads == [0]


def test_a_cut_long_file_is_judged_as_a_whole(tmp_path):
    """A float WAV whose data chunk is cut short: the statistics pass counts what is there."""
    path = tmp_path / "cut.wav"
    soundfile.write(path, synth_speechlike(50.0, 16000, seed=4)[0] * 2, 16000, subtype="FLOAT")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    config = DecodeConfig(isolation="none")
    assert _outcome(_whole, path, config) == failures.TRUNCATED
    assert _outcome(_streamed, path, config) == failures.TRUNCATED
    keep = dataclasses.replace(config, truncated="keep")
    samples, notes = _whole(path, keep)
    streamed, streamed_notes, _ = _streamed(path, keep)
    assert notes == streamed_notes == ("truncated", "out_of_range_scaled")
    np.testing.assert_array_equal(streamed, samples)


def test_a_cut_flac_is_judged_as_a_whole_without_a_statistics_pass(tmp_path):
    """FLAC needs no statistics pass, but its STREAMINFO promises a length: the plan reads the
    last second and, the file being cut, counts what is there. What decodes of a cut file is
    kept up to the last block that decoded: the two routes read in blocks of other sizes, so
    the lengths they keep may differ (by less than a block), never the samples."""
    path = write_audio(tmp_path / "cut.flac", synth_speechlike(50.0, 16000, seed=4), 16000, "flac")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    config = DecodeConfig(isolation="none")
    assert _outcome(_whole, path, config) == failures.TRUNCATED
    assert _outcome(_streamed, path, config) == failures.TRUNCATED
    keep = dataclasses.replace(config, truncated="keep")
    samples, notes = _whole(path, keep)
    streamed, streamed_notes, items = _streamed(path, keep)
    assert notes == streamed_notes == ("truncated",)
    assert items[-1].frames == streamed.shape[0] and len(items) == 2
    n = min(streamed.shape[0], samples.shape[0])
    assert n > 25 * 16000
    np.testing.assert_array_equal(streamed[:n], samples[:n])


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_downmix_is_numpys_mean_exactly(channels):
    """On the interleaved [samples, channels] buffers the readers fill, seen as [channels, samples]."""
    buffer = np.random.default_rng(channels).standard_normal((48000, channels)).astype(np.float32)
    np.testing.assert_array_equal(decode.downmix(buffer.T), buffer.T.mean(axis=0, dtype=np.float32))
