"""Long files: split into work items, streamed in chunks, segmented; nothing lost or duplicated,
the same whatever the chunk size, timed transcripts cut along."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from audio_fixtures import clips_between_pauses, speech_with_pauses, synth_speechlike, write_audio
from test_vad import TOLERANCE_S, assert_borders, speech_at_vad_rate
from audiotok.transforms import dataset, failures, read, segment, vad
from audiotok.transforms.decode import DecodeConfig, FileDecoder, Plan, decode_ref, resample
from audiotok.transforms.failures import Failure
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.read import ReadSegments
from audiotok.transforms.records import AudioRef, Decoded
from audiotok.transforms.segment import SegmentConfig, segment_work_item
from audiotok.transforms.vad import VAD_RATE, VadConfig

RUNNER = "FnApiRunner"
SOURCE_RATE = 22050
RATE = SOURCE_RATE  # long files are planned and streamed at their own rate
DECODE = DecodeConfig(isolation="none")
SPANS = [(1.0 + 0.25 * (i % 4), 2.0 + 0.7 * (i % 5)) for i in range(14)]  # ~67 s


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """~67 s of speech-like stretches and pauses, FLAC at 22.05 kHz, with the true stretches."""
    audio, truth = speech_with_pauses(SPANS, rate=SOURCE_RATE, seed=11)
    path = write_audio(tmp_path_factory.mktemp("long") / "talk.flac", audio, SOURCE_RATE, "flac")
    return path, truth


def whole_decoded(path, rate: int = RATE) -> Decoded:
    ref = AudioRef(str(path))
    d = decode_ref(ref, DECODE)
    return Decoded(ref, resample(d.audio, d.sample_rate, rate), rate, d.sample_rate, d.source_channels,
                   d.source_format)


def run_items(path, config: SegmentConfig, ref: AudioRef | None = None, decode: DecodeConfig = DECODE):
    """The long-file route in this process: the decoder's plan, then each item segmented."""
    ref = ref or AudioRef(str(path))
    route = FileDecoder()
    plan = route.open(ref, decode, config.split_config())
    assert isinstance(plan, Plan), plan
    items = segment.work_items(ref, plan)
    outs = [out for item in items
            for out in segment_work_item(item, config, lambda it: route.stretch(it, decode, config.chunk_s))]
    return items, [o for o in outs if not isinstance(o, Failure)], [o for o in outs if isinstance(o, Failure)]


def borders(segments):
    return [(s.start_s, s.end_s) for s in segments]


# ---------------------------------------------------------------------------- fixed windows


def test_fixed_items_concatenate_to_the_source(long_file):
    path, _ = long_file
    config = SegmentConfig(segment_s=4.0, min_segment_s=1.0, split_s=20, chunk_s=3.0)
    items, segs, fails = run_items(path, config)
    assert len(items) >= 3 and not fails
    assert all(item.start % (4 * RATE) == 0 for item in items)
    whole = whole_decoded(path)
    expected = list(segment.cut_segments(whole, config))
    assert borders(segs) == borders(expected)
    assert [s.key for s in segs] == [s.key for s in expected]
    joined = np.concatenate([s.audio for s in segs])
    kept = expected[-1].audio.shape[0] + int(expected[-1].start_s * RATE)
    assert joined.shape[0] == kept  # only the short tail is left out, as for a whole file
    np.testing.assert_allclose(joined, whole.audio[:kept], atol=1e-6)


def test_fixed_results_do_not_depend_on_the_chunk_size(long_file):
    path, _ = long_file
    runs = [run_items(path, SegmentConfig(segment_s=4.0, min_segment_s=1.0, split_s=20, chunk_s=c))[1]
            for c in (0.5, 7.0, 100.0)]
    for other in runs[1:]:
        assert borders(other) == borders(runs[0])
        assert all(np.array_equal(a.audio, b.audio) for a, b in zip(other, runs[0]))


def test_files_that_only_ffmpeg_reads_are_split_too(tmp_path):
    x = synth_speechlike(30.0, 22050, seed=2)
    path = write_audio(tmp_path / "talk.m4a", x, 22050, "m4a")
    config = SegmentConfig(segment_s=5.0, min_segment_s=1.0, split_s=20, chunk_s=4.0)
    items, segs, fails = run_items(path, config)
    assert len(items) >= 2 and not items[0].info.seekable and not fails
    whole = whole_decoded(path)
    assert borders(segs) == borders(segment.cut_segments(whole, config))
    np.testing.assert_allclose(np.concatenate([s.audio for s in segs]), whole.audio[: sum(len(s.audio) for s in segs)],
                               atol=1e-6)


# ---------------------------------------------------------------------------- speech


@pytest.mark.parametrize("segmenter", ["energy", "vad"])
def test_speech_items_are_chunk_independent_disjoint_and_cover_speech(long_file, segmenter):
    path, truth = long_file
    runs = {}
    for chunk_s in (1.3, 45.0):
        config = SegmentConfig(segment_s=10.0, min_segment_s=0.5, segmenter=segmenter, split_s=20, chunk_s=chunk_s,
                               vad=VadConfig(pad_s=0.05, merge_gap_s=0.5))
        items, segs, fails = run_items(path, config)
        assert len(items) >= 3 and not fails
        runs[chunk_s] = segs
    a, b = runs.values()
    assert borders(a) == borders(b)
    assert all(np.array_equal(x.audio, y.audio) for x, y in zip(a, b))
    spans = borders(a)
    assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:])), "segments overlap"
    assert all(s.audio.shape[0] == round((s.end_s - s.start_s) * RATE) for s in a)
    whole = whole_decoded(path)
    if segmenter == "energy":
        speech = truth
    else:
        # Silero takes the generator's tones for speech only in part: check against what it
        # detects in the whole file, away from the item borders (where its lanes restart).
        plan = vad.plan_segments(segment.speech_scores([segment.at_vad_rate(whole)], config), config.vad,
                                 config.segment_s, config.min_segment_s)
        cuts = [item.start / RATE for item in items[1:]]
        speech = [(x / VAD_RATE, y / VAD_RATE) for x, y in plan.speech
                  if all(abs(c - x / VAD_RATE) > 1 and abs(c - y / VAD_RATE) > 1 for c in cuts)]
        assert len(speech) >= 8
    for start, end in speech:  # all speech is inside the segments
        covered = sum(max(0.0, min(end, y) - max(start, x)) for x, y in spans)
        assert covered >= end - start - 2 * TOLERANCE_S, (start, end, spans)
    # The audio of a segment is the source's audio at that place.
    for s in a:
        i = round(s.start_s * RATE)
        np.testing.assert_allclose(s.audio, whole.audio[i: i + s.audio.shape[0]], atol=1e-6)


def test_second_pass_decodes_again_when_the_item_is_too_big_to_keep(long_file, monkeypatch):
    path, _ = long_file
    config = SegmentConfig(segment_s=10.0, min_segment_s=0.5, segmenter="energy", split_s=20, chunk_s=2.0)
    kept = run_items(path, config)[1]
    monkeypatch.setattr(segment, "ITEM_BUFFER_BYTES", 100_000)
    again = run_items(path, config)[1]
    assert borders(again) == borders(kept)
    assert all(np.array_equal(x.audio, y.audio) for x, y in zip(again, kept))


def test_speech_across_work_items(tmp_path):
    """Spoken sentences (speech from their first sample to their last) with pauses, written as
    one FLAC and split into work items: Silero's borders within 100 ms."""
    clips = speech_at_vad_rate() * 3
    audio, truth = clips_between_pauses(clips, [1.0 + 0.3 * (i % 3) for i in range(len(clips))] + [1.0], 0.0005,
                                         seed=3)
    path = write_audio(tmp_path / "speech.flac", audio, VAD_RATE, "flac")
    config = SegmentConfig(segment_s=30.0, min_segment_s=0.0, segmenter="vad", split_s=20, chunk_s=2.0,
                           vad=VadConfig(pad_s=0.0, merge_gap_s=0.0))
    items, segs, fails = run_items(path, config)
    assert len(items) >= 3 and not fails
    assert_borders(borders(segs), truth)


def test_energy_borders_across_work_items(long_file):
    """With no padding or merging, the first and last border of every true stretch is found
    within 100 ms, items or not; and the items give the same segments as the whole file."""
    path, truth = long_file
    config = SegmentConfig(segment_s=30.0, min_segment_s=0.0, segmenter="energy", split_s=20, chunk_s=5.0,
                           vad=VadConfig(pad_s=0.0, merge_gap_s=0.0))
    items, segs, _ = run_items(path, config)
    found = borders(segs)
    for start, end in truth:
        assert min(abs(x - start) for x, _ in found) <= TOLERANCE_S
        assert min(abs(y - end) for _, y in found) <= TOLERANCE_S
    whole = whole_decoded(path)
    scores = segment.speech_scores([segment.at_vad_rate(whole)], config)
    assert found == borders(segment.cut_speech(whole, scores, config))
    # Item borders are at quiet points: in the pauses, not in speech.
    for item in items[1:]:
        t = item.start / RATE
        assert not any(a < t < b for a, b in truth), (t, truth)


# ---------------------------------------------------------------------------- transcripts


def _words(truth):
    return [{"start": a + k * (b - a) / 3, "end": a + (k + 1) * (b - a) / 3, "word": f"w{i}_{k}"}
            for i, (a, b) in enumerate(truth) for k in range(3)]


@pytest.mark.parametrize("segmenter, split_s", [("fixed", None), ("fixed", 20), ("energy", None), ("energy", 20)])
def test_timed_words_are_cut_with_the_segments(long_file, segmenter, split_s):
    path, truth = long_file
    words = _words(truth)
    ref = AudioRef(str(path), meta={"id": "talk", "text": "the whole talk", "words": words})
    config = SegmentConfig(segment_s=6.0, min_segment_s=0.5, segmenter=segmenter, split_s=split_s, chunk_s=4.0)
    if split_s:
        _, segs, _ = run_items(path, config, ref)
    else:
        whole = whole_decoded(path)
        whole = Decoded(ref, whole.audio, RATE, SOURCE_RATE, 1, "flac")
        if segmenter == "fixed":
            segs = list(segment.cut_segments(whole, config))
        else:
            segs = list(segment.cut_speech(whole, segment.speech_scores([segment.at_vad_rate(whole)], config), config))
    seen = []
    for s in segs:
        meta = s.source.meta
        assert meta["id"] == "talk" and s.key.startswith("talk-")
        assert meta["text"] == " ".join(w["word"] for w in meta["words"])
        for w in meta["words"]:
            assert 0 <= w["start"] <= w["end"] <= round(s.end_s - s.start_s, 3)
        seen += [w["word"] for w in meta["words"]]
    assert len(seen) == len(set(seen)), "a word in two segments"
    if segmenter == "fixed":  # windows cover the file: every word lands somewhere
        assert sorted(seen) == sorted(w["word"] for w in words)
    else:
        assert len(seen) >= 0.9 * len(words)


def test_segment_transcript_reaches_the_sample_json():
    from audiotok.transforms import tokenize
    from audiotok.transforms.records import Sample

    ref = AudioRef("/data/talk.flac", meta={"id": "talk", "text": "whole file", "speaker": "s1",
                                            "words": [{"start": 0.5, "end": 0.9, "word": "hello"},
                                                      {"start": 2.1, "end": 2.6, "word": "world"},
                                                      {"start": 5.0, "end": 5.5, "word": "later"}]})
    seg = segment.make_segment(ref, 16000, 48000, 16000, np.zeros(32000, np.float32), {"sample_rate": 16000})
    meta = tokenize.sample_meta(seg, {}, {})
    (name, data), (txt_name, txt) = dataset.encode_sample(Sample(seg.key, meta, {}))
    written = json.loads(data)
    assert name == f"{seg.key}.json" and seg.key.startswith("talk-") and seg.key.endswith("-000001000")
    assert (txt_name, txt) == (f"{seg.key}.txt", b"world")
    assert written["text"] == "world" and written["speaker"] == "s1"
    assert written["words"] == [{"start": 1.1, "end": 1.6, "word": "world"}]
    assert (written["start_s"], written["end_s"]) == (1.0, 3.0)


def test_a_bad_transcript_is_a_bad_manifest(long_file):
    path, _ = long_file
    whole = whole_decoded(path)
    bad = Decoded(AudioRef(str(path), meta={"words": [{"start": 2.0, "end": 1.0, "word": "x"}]}), whole.audio,
                  RATE, SOURCE_RATE, 1, "flac")
    outs = list(segment._segment_or_fail(bad, SegmentConfig()))
    assert len(outs) == 1 and outs[0].value.reason == failures.BAD_MANIFEST


# ---------------------------------------------------------------------------- planning and Beam


def test_one_decode_step_sends_short_unknown_and_too_long_files_the_right_way(long_file, tmp_path):
    path, _ = long_file
    short = write_audio(tmp_path / "short.wav", synth_speechlike(3.0, 16000, seed=1), 16000, "wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF" + bytes(100))

    def outputs(decode: DecodeConfig, uri: str):
        fn = read._DecodeFn(decode, SegmentConfig(split_s=20).split_config())
        fn.setup()
        fn.start_bundle()
        outs = [*fn.process(AudioRef(uri)), *fn.finish_bundle()]
        fn.teardown()
        unwrapped = [(getattr(o, "tag", None), getattr(o, "value", o)) for o in outs]
        return [(tag, getattr(value, "value", value)) for tag, value in unwrapped]  # WindowedValue -> value

    ((tag, decoded),) = outputs(DECODE, str(short))
    assert tag is None and decoded.duration_s == pytest.approx(3.0)
    ((tag, failure),) = outputs(DECODE, str(garbage))
    assert tag == "failures" and failure.reason in (failures.UNSUPPORTED_FORMAT, failures.TRUNCATED)
    outs = outputs(DECODE, str(path))
    assert {tag for tag, _ in outs} == {"items"} and len(outs) == 2  # 30 s windows: items of 30 s
    assert all(item.sample_rate == SOURCE_RATE for _, item in outs)  # streamed at the file's own rate
    ((tag, failure),) = outputs(DecodeConfig(max_duration_s=30, isolation="none"), str(path))
    assert tag == "failures" and failure.reason == failures.TOO_LONG


def test_truncated_long_file_is_judged_as_a_whole(long_file, tmp_path):
    """Cut to 60 %: rejected as the whole-file decoder would, or kept up to where it decodes."""
    path, _ = long_file
    data = path.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    config = SegmentConfig(segment_s=4.0, min_segment_s=1.0, split_s=20, chunk_s=3.0)
    with pytest.raises(failures.AudiotokError) as e:
        run_items(cut, config)
    assert e.value.reason == failures.TRUNCATED
    items, segs, fails = run_items(cut, config, decode=DecodeConfig(isolation="none", truncated="keep"))
    assert not fails and segs and 0.6 * 67 - 6 <= max(s.end_s for s in segs) <= 0.6 * 67 + 4


@pytest.mark.parametrize("segmenter", ["fixed", "energy"])
def test_pipeline_spreads_long_files_and_decodes_short_ones_whole(long_file, tmp_path, segmenter):
    path, _ = long_file
    root = tmp_path / "in"
    root.mkdir()
    (root / "talk.flac").write_bytes(path.read_bytes())
    write_audio(root / "short.wav", synth_speechlike(3.0, 16000, seed=1), 16000, "wav")
    config = SegmentConfig(segment_s=4.0, min_segment_s=0.5, segmenter=segmenter, split_s=20, chunk_s=3.0)
    # What the work items give for the long file, what the whole-file path gives for the short one,
    # both at their sources' own rates (nothing is resampled before the tokenizers).
    whole = whole_decoded(root / "short.wav", 16000)
    if segmenter == "fixed":
        short_segs = list(segment.cut_segments(whole, config))
    else:
        scores = segment.speech_scores([segment.at_vad_rate(whole)], config)
        short_segs = list(segment.cut_speech(whole, scores, config))
    expected = [(s.key, round(s.start_s, 4), round(s.end_s, 4))
                for s in run_items(root / "talk.flac", config)[1] + short_segs]
    p = TestPipeline(runner=RUNNER)
    read = p | ReadSegments(MatchConfig(patterns=(f"{root}/*",)), DECODE, config)
    assert_that(read["segments"] | beam.Map(lambda s: (s.key, round(s.start_s, 4), round(s.end_s, 4))),
                equal_to(expected), label="segments")
    assert_that(read["segments"] | beam.Map(lambda s: (s.sample_rate, s.source_info["sample_rate"]))
                | beam.Distinct(), equal_to([(SOURCE_RATE, SOURCE_RATE), (16000, 16000)]), label="rates")
    assert_that(read["failures"], equal_to([]), label="failures")
    result = p.run()
    result.wait_until_finish()
    counters: dict[str, int] = {}
    for c in result.metrics().query()["counters"]:  # one entry per step: sum them
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    assert counters["long_files"] == 1 and counters["work_items"] >= 3
    assert counters["segments"] == len(expected)
    if segmenter == "energy":
        assert counters["nonspeech_ms"] > 10_000 and counters["segmented_ms"] > 30_000


def test_pipeline_cuts_manifest_transcripts(long_file, tmp_path):
    """A manifest's ``words`` reach each sample's metadata as that segment's share (given
    here on the AudioRef, as the manifest reader will hand it over)."""
    path, truth = long_file
    ref = AudioRef(str(path), meta={"id": "talk", "words": _words(truth)})
    config = SegmentConfig(segment_s=6.0, min_segment_s=0.5, segmenter="energy", split_s=20, chunk_s=3.0)

    class _Refs(beam.PTransform):
        def expand(self, pbegin):
            return pbegin | beam.Create([ref])

    with TestPipeline(runner=RUNNER) as p:
        opened = p | _Refs() | read.DecodeAudio(DECODE, config.split_config())
        segs = opened.items | segment.SegmentWorkItems(config, DECODE)
        words = segs.segments | beam.FlatMap(lambda s: [w["word"] for w in s.source.meta["words"]])
        assert_that(words | beam.combiners.Count.Globally(), equal_to([len(truth) * 3]))
        texts = segs.segments | beam.Map(lambda s: s.source.meta["text"].split()[0])
        assert_that(texts | beam.Map(lambda w: w.startswith("w")) | beam.combiners.ToList() | beam.Map(all),
                    equal_to([True]), label="texts")
