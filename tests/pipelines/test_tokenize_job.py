"""The main job end to end under Beam: every sample read back by the stock webdataset reader."""

from __future__ import annotations

import importlib.util
import json
import os

import apache_beam as beam
import numpy as np
import pytest
import webdataset as wds
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from audio_fixtures import synth_speechlike, write_audio
from audiotok.pipelines import cli
from audiotok.pipelines import tokenize as job
from audiotok.transforms import dataset, failures
from dataset_fixtures import flat_index as fx_flat_index
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.read import ReadSegments
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.shards import ShardConfig
from audiotok.transforms.tokenize import TokenizeConfig

RUNNER = "FnApiRunner"  # DirectRunner's engine, without its Prism download attempt


@pytest.fixture
def corpus(tmp_path):
    """Four good files in three formats and rates (one nested two deep), one corrupt, one text file."""
    root = tmp_path / "in"
    write_audio(root / "a" / "one.wav", synth_speechlike(3.2, 16000, seed=1), 16000, "wav")
    write_audio(root / "a" / "b" / "two.flac", synth_speechlike(5.0, 22050, channels=2, seed=2), 22050, "flac")
    write_audio(root / "three.mp3", synth_speechlike(2.5, 44100, seed=3), 44100, "mp3")
    write_audio(root / "a" / "b" / "c" / "four.ogg", synth_speechlike(1.4, 16000, seed=4), 16000, "ogg")
    (root / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(200))
    (root / "notes.txt").write_text("not audio")
    return root


def job_config(corpus, out, specs="logmel", **kw) -> job.JobConfig:
    return job.JobConfig(
        output=str(out), match=MatchConfig(patterns=(f"{corpus}/**/*",)), decode=DecodeConfig(),
        segment=SegmentConfig(segment_s=2.0, min_segment_s=0.5), tokenize=TokenizeConfig(specs=specs),
        shards=ShardConfig(max_samples=kw.pop("max_samples", 1000)), **kw)


def read_dataset(out):
    index = fx_flat_index(out)
    urls = [str(out / s["url"]) for s in index["shards"]]
    return index, list(wds.WebDataset(urls, shardshuffle=False).decode())


def test_pipeline_writes_readable_shards_and_dead_letters(corpus, tmp_path):
    """With Beam's construction-time type checks on (TestPipeline's default options; the local
    profiles turn them off), so that the job's type hints stay consistent."""
    from apache_beam.options.pipeline_options import TypeOptions

    out = tmp_path / "out"
    config = job_config(corpus, out, max_samples=3)
    with TestPipeline(runner=RUNNER) as p:
        assert p.options.view_as(TypeOptions).pipeline_type_check
        index_pc = job.build(p, config)
        assert_that(index_pc | beam.Map(lambda ix: ix["totals"]["samples"]), equal_to([8]))
    index, samples = read_dataset(out)
    # 3.2 s -> 2 + 1.2; 5.0 -> 2 + 2 + 1; 2.5 -> 2 + 0.5; 1.4 -> 1.4
    assert sorted(round(s["json"]["duration_s"], 2) for s in samples) == [0.5, 1.0, 1.2, 1.4, 2, 2, 2, 2]
    assert index["totals"]["shards"] == 3 and [s["samples"] for s in index["shards"]] == [3, 3, 2]
    for s in samples:
        meta = s["json"]
        frames = int(round(meta["duration_s"] * 16000)) // 160
        assert s["logmel.npy"].shape == (frames, 80) and s["logmel.npy"].dtype == np.float16
        assert meta["streams"]["logmel"]["shape"] == [frames, 80]
        assert meta["streams"]["logmel"]["frame_rate_hz"] == 100
        assert meta["end_s"] - meta["start_s"] == pytest.approx(meta["duration_s"], abs=1e-4)
        assert meta["source"]["uri"].startswith(str(corpus))
        assert "." not in s["__key__"]
    assert len({s["__key__"] for s in samples}) == 8
    fails = [json.loads(line) for f in index["failures"] for line in open(out / f["url"])]
    assert [(f["uri"].rsplit("/", 1)[1], f["stage"]) for f in fails] == [("broken.wav", "decode")]
    assert fails[0]["reason"] in (failures.UNSUPPORTED_FORMAT, failures.DECODE_ERROR, failures.TRUNCATED)
    assert index["totals"]["failures"] == 1
    assert sum(s["audio_s"] for s in index["shards"]) == pytest.approx(3.2 + 5.0 + 2.5 + 1.4, abs=0.01)
    assert not (out / "_tmp").exists()


def test_read_segments_counts_match(corpus):
    with TestPipeline(runner=RUNNER) as p:
        read = p | ReadSegments(MatchConfig(patterns=(f"{corpus}/**/*",)), DecodeConfig(), SegmentConfig(2.0, 0.5))
        assert_that(read["segments"] | beam.combiners.Count.Globally(), equal_to([8]), label="segments")
        assert_that(read["failures"] | beam.Map(lambda f: f.reason), equal_to([failures.UNSUPPORTED_FORMAT]),
                    label="failures")


def test_cli_two_streams_with_fitted_codebook(corpus, tmp_path, capsys):
    out = tmp_path / "cli-out"
    argv = ["tokenize", "--input", f"{corpus}/**/*", "--output", str(out), "--tokenizer", "logmel,mfcc-kmeans[k=16]",
            "--segment-s", "2", "--min-segment-s", "0.5", "--shard-max-samples", "4"]
    assert cli.main(argv) == 0
    summary = capsys.readouterr().err
    assert "8 samples" in summary and "1 failed" in summary
    index, samples = read_dataset(out)
    assert len(samples) == 8
    for s in samples:
        frames = int(round(s["json"]["duration_s"] * 100))
        assert s["logmel.npy"].shape == (frames, 80)
        assert s["mfcc-kmeans.npy"].shape == (frames,) and s["mfcc-kmeans.npy"].dtype == np.int16
        assert s["json"]["streams"]["mfcc-kmeans"]["codebook_size"] == 16
    book = out / "codebooks" / "mfcc-kmeans-k16.safetensors"
    assert book.exists()
    assert str(book) in index["streams"]["mfcc-kmeans"]["weights"] or index["streams"]["mfcc-kmeans"]["weights"]
    # A rerun into the same folder is refused without --overwrite, and replaces it with it.
    with pytest.raises(SystemExit, match="--overwrite"):
        cli.main(argv)
    assert cli.main(argv + ["--overwrite"]) == 0
    _, again = read_dataset(out)
    assert sorted(s["__key__"] for s in again) == sorted(s["__key__"] for s in samples)


def test_separate_vectors_job_writes_two_shard_sets_the_tools_know(corpus, tmp_path, capsys):
    from audiotok.pipelines import export, inspect, verify
    from audiotok.transforms import reader

    out = tmp_path / "split-out"
    argv = ["tokenize", "--input", f"{corpus}/**/*", "--output", str(out), "--tokenizer", "logmel,mfcc-kmeans[k=16]",
            "--segment-s", "2", "--min-segment-s", "0.5", "--shard-max-samples", "4", "--separate-vectors"]
    assert cli.main(argv) == 0
    index = json.load(open(out / "index.json"))
    assert index["settings"]["shards"]["separate_vectors"] is True
    rows = list(dataset.shard_rows(str(out), index))
    assert len(rows) == 2 and all(r["vectors_url"] == dataset.vectors_url(r["url"]) for r in rows)
    assert all(r["vectors_url"].split("/")[-1].startswith("vectors-") for r in rows)
    discrete = list(wds.WebDataset(reader.shard_urls(str(out)), shardshuffle=False).decode())
    vectors = list(wds.WebDataset(reader.shard_urls(str(out), vectors=True), shardshuffle=False).decode())
    assert [s["__key__"] for s in discrete] == [s["__key__"] for s in vectors] and len(discrete) == 8
    assert {k for s in discrete for k in s if not k.startswith("__")} == {"json", "mfcc-kmeans.npy"}
    assert {k for s in vectors for k in s if not k.startswith("__")} == {"logmel.npy"}
    for d, v in zip(discrete, vectors):
        assert v["logmel.npy"].shape == tuple(d["json"]["streams"]["logmel"]["shape"])
    assert verify.verify_dataset(str(out)).ok(strict=True)
    capsys.readouterr()
    assert inspect.main([str(out)]) == 0
    assert "vector streams (logmel) in a shard set of their own (2 vectors-*.tar" in capsys.readouterr().out
    assert "`vectors-BBBBBB-NNNN.tar` beside each" in (out / "README.md").read_text()
    if importlib.util.find_spec("lhotse"):  # the export reads both sets
        paths = export.export_lhotse_shar(str(out), str(tmp_path / "shar"))
        assert paths["cuts"] and paths["logmel"]
    # the same run again writes the same bytes, in both sets
    first = {r[k]: (out / r[k]).read_bytes() for r in rows for k in ("url", "vectors_url")}
    assert cli.main(argv + ["--overwrite"]) == 0
    again = list(dataset.shard_rows(str(out)))
    assert [(out / r[k]).read_bytes() for r in again for k in ("url", "vectors_url")] == list(first.values())


def test_manifest_metadata_reaches_samples(corpus, tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = [
        {"uri": str(corpus / "a" / "one.wav"), "id": "utt-1", "text": "hello there", "speaker": "s1",
         "language": "en"},
        {"uri": "in/three.mp3", "text": "relative uri"},
        "this line is not json",
        {"text": "no uri"},
    ]
    manifest.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    config = job.JobConfig(output=str(out), match=MatchConfig(manifests=(str(manifest),)),
                           segment=SegmentConfig(30, 0.5))
    with TestPipeline(runner=RUNNER) as p:
        job.build(p, config)
    index, samples = read_dataset(out)
    by_id = {s["json"].get("id"): s["json"] for s in samples}
    assert by_id["utt-1"]["text"] == "hello there" and by_id["utt-1"]["speaker"] == "s1"
    assert by_id["utt-1"]["language"] == "en"
    assert samples[0]["__key__"].startswith(("utt-1-", "three-"))
    assert by_id[None]["text"] == "relative uri"
    assert index["totals"]["failures_by_reason"] == {"bad_manifest": 2}


def test_timed_transcript_is_cut_into_key_txt(corpus, tmp_path):
    """A manifest's timed words follow the segments into KEY.json and KEY.txt; verify agrees."""
    from audiotok.pipelines import verify

    words = [{"start": 0.2, "end": 0.6, "word": "alpha"}, {"start": 1.1, "end": 1.5, "word": "beta"},
             {"start": 2.3, "end": 2.8, "word": "gamma"}, {"start": 4.4, "end": 4.9, "word": "delta"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in [
        {"uri": str(corpus / "a" / "b" / "two.flac"), "id": "talk", "text": "whole file", "words": words},
        {"uri": str(corpus / "a" / "one.wav"), "text": "plain text only"},
        {"uri": str(corpus / "three.mp3"), "words": [{"start": 1.0, "end": 0.5, "word": "backwards"}]},
    ]) + "\n")
    out = tmp_path / "out"
    config = job.JobConfig(output=str(out), match=MatchConfig(manifests=(str(manifest),)),
                           segment=SegmentConfig(segment_s=2.0, min_segment_s=0.5))
    with TestPipeline(runner=RUNNER) as p:
        job.build(p, config)
    index, samples = read_dataset(out)
    talk = sorted((s for s in samples if s["json"].get("id") == "talk"), key=lambda s: s["json"]["start_s"])
    assert [s["json"]["start_s"] for s in talk] == [0.0, 2.0, 4.0]
    assert [s["txt"] for s in talk] == ["alpha beta", "gamma", "delta"]
    assert talk[1]["json"]["words"] == [{"start": 0.3, "end": 0.8, "word": "gamma"}]
    plain = [s for s in samples if s["json"].get("text") == "plain text only"]
    assert plain and all("txt" not in s for s in plain)  # a file-level text is not a segment's transcript
    assert index["totals"]["failures_by_reason"] == {"bad_manifest": 1}
    assert verify.verify_dataset(str(out)).problems == []


def test_segment_shorter_than_a_frame_is_too_short_not_an_empty_sample():
    from audiotok.transforms import tokenize
    from audiotok.transforms.records import AudioRef, Segment
    from audiotok.transforms.tokenizers import registry

    toks = registry.create_all("logmel")
    ref = AudioRef("/data/a.wav")
    rng = np.random.default_rng(1)
    segs = [Segment(key=f"a-{n}", source=ref, start_s=0.0, end_s=n / 16000, sample_rate=16000,
                    audio=rng.normal(scale=0.1, size=n).astype(np.float32)) for n in (100, 16000)]
    out = tokenize.tokenize_batch(toks, segs)
    assert isinstance(out[0], failures.Failure) and out[0].reason == failures.TOO_SHORT
    assert "logmel" in out[0].message and out[0].uri == "/data/a.wav"
    assert out[1].streams["logmel"].shape == (100, 80)


def test_tokenizer_failure_isolated_to_its_segment(monkeypatch):
    from audiotok.transforms import tokenize
    from audiotok.transforms.records import AudioRef, Segment
    from audiotok.transforms.tokenizers import registry

    tok = registry.create("logmel")
    real = type(tok)._encode_batch

    def flaky(self, audios):
        if any(a.shape[-1] == 1234 for a in audios):
            raise RuntimeError("kernel exploded")
        return real(self, audios)

    monkeypatch.setattr(type(tok), "_encode_batch", flaky)
    segs = [Segment(f"k{i}", AudioRef(f"u{i}"), 0, n / 16000, 16000, np.zeros(n, np.float32))
            for i, n in enumerate([16000, 1234, 8000])]
    out = tokenize.tokenize_batch([tok], segs)
    assert [type(o).__name__ for o in out] == ["Sample", "Failure", "Sample"]
    assert out[1].reason == failures.TOKENIZER_ERROR and "kernel exploded" in out[1].message


def test_plan_batches_bounds_and_buckets():
    from audiotok.transforms.tokenize import plan_batches

    lengths = [100, 900, 300, 800, 100, 200]
    batches = plan_batches(lengths, rate=100, max_s=20, max_items=3)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) <= 3 and max(lengths[i] for i in b) * len(b) / 100 <= 20
    same = plan_batches([5, 5, 7, 7, 7], rate=1, max_s=100, max_items=10, same_length_only=True)
    assert sorted(map(sorted, same)) == [[0, 1], [2, 3, 4]]


def test_unknown_tokenizer_and_help(capsys):
    with pytest.raises(SystemExit, match="unknown tokenizer"):
        cli.main(["tokenize", "--input", "x", "--output", "y", "--tokenizer", "nope"])
    assert cli.main(["tokenize", "--tokenizer", "help"]) == 0
    assert "mfcc-kmeans" in capsys.readouterr().out


def test_pipe_urls_refused():
    with pytest.raises(SystemExit, match="refusing"):
        cli.main(["tokenize", "--input", "pipe:curl http://x", "--output", "/tmp/x"])


def test_beams_resource_warning_is_filtered_and_others_are_not():
    import logging

    noise = logging.LogRecord("root", logging.WARNING, __file__, 1,
                              "Resource module is not available for current platform, memory usage cannot be fetched.",
                              None, None)
    real = logging.LogRecord("root", logging.WARNING, __file__, 1, "decoder bug on %s", ("x.wav",), None)
    assert cli.drop_known_noise(noise) is False
    assert cli.drop_known_noise(real) is True


def test_summary_says_how_much_a_speech_segmenter_left_out():
    index = {"totals": {"samples": 3, "audio_s": 90.0, "shards": 1, "failures": 0, "failures_by_reason": {},
                        "tokens": {"logmel": 9000}}}
    counters = {"files_ok": 2, "audio_ms": 120_000, "nonspeech_ms": 30_000, "dropped_speech_ms": 1_500}
    text = job.summary(index, counters, 10.0, "out")
    assert "left out: 0.5 min of non-speech (25% of the 2.0 min decoded), 1.5 s of speech" in text
    assert "left out" not in job.summary(index, {"files_ok": 2, "audio_ms": 90_000}, 10.0, "out")
