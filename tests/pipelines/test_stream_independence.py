"""A stream's tokens depend on the audio and its own settings only: not on the tokenizers that
share the run, checked through the main job as a trainer would check it."""

from __future__ import annotations

import uuid

import apache_beam as beam
import numpy as np
import pytest

pytest.importorskip("transformers")
wds = pytest.importorskip("webdataset")

import tiny_models  # noqa: E402
from audio_fixtures import synth_speechlike, write_audio  # noqa: E402

from audiotok.pipelines import cli  # noqa: E402
from audiotok.transforms import dataset  # noqa: E402
from audiotok.transforms.decode import DecodeConfig  # noqa: E402
from audiotok.transforms.match import MatchConfig  # noqa: E402
from audiotok.transforms.read import ReadSegments  # noqa: E402
from audiotok.transforms.segment import SegmentConfig  # noqa: E402
from audiotok.transforms.tokenize import TokenizeConfig, TokenizeSegments  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCE_RATES = tiny_models.REGISTRY_RATES


@pytest.fixture(scope="module")
def mixed_rate_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed-rates")
    for i, rate in enumerate(SOURCE_RATES):
        fmt = "flac" if i % 2 else "wav"
        write_audio(root / f"r{rate}.{fmt}", synth_speechlike(2.3 + 0.1 * i, rate, seed=i), rate, fmt)
    return root


def run_job(corpus, out, specs: str) -> dict[str, dict[str, np.ndarray]]:
    """Runs ``audiotok tokenize``; returns key -> member name -> array."""
    code = cli.main(["tokenize", "--input", f"{corpus}/*", "--output", str(out), "--tokenizer", specs,
                     "--segment-s", "1", "--min-segment-s", "0.2"])
    assert code == 0
    urls = [str(out / row["url"]) for row in dataset.shard_rows(str(out))]
    return {s["__key__"]: {k: v for k, v in s.items() if k.endswith(".npy")}
            for s in wds.WebDataset(urls, shardshuffle=False).decode()}


def test_logmel_is_byte_identical_with_a_24k_companion(mixed_rate_corpus, tmp_path):
    """A 24 kHz codec in the run used to send 16 kHz audio through 24 kHz before logmel."""
    encodec = tiny_models.save_encodec(tmp_path / "encodec")
    alone = run_job(mixed_rate_corpus, tmp_path / "alone", "logmel")
    mixed = run_job(mixed_rate_corpus, tmp_path / "mixed", f"logmel,encodec-24k[model={encodec}]")
    assert set(alone) == set(mixed) and len(alone) == 3 * len(SOURCE_RATES)
    for key, streams in alone.items():
        assert mixed[key]["logmel.npy"].tobytes() == streams["logmel.npy"].tobytes(), key
        assert "encodec-24k.npy" in mixed[key]


@pytest.fixture(scope="module")
def one_per_rate(tmp_path_factory):
    return tiny_models.one_spec_per_rate(tmp_path_factory.mktemp("one-per-rate"))


_SINK: dict[str, list] = {}


def _keep(element, run: str) -> None:
    _SINK.setdefault(run, []).append(element)  # the in-process runner shares this module


def read_and_tokenize(corpus, specs: str) -> dict[tuple[str, str], bytes]:
    """ReadSegments -> TokenizeSegments under Beam: (key, stream) -> the array's bytes."""
    run = uuid.uuid4().hex
    with beam.Pipeline(runner="FnApiRunner") as p:
        read = p | ReadSegments(MatchConfig(patterns=(f"{corpus}/*",)), DecodeConfig(isolation="none"),
                                SegmentConfig(segment_s=1.0, min_segment_s=0.2))
        out = read["segments"] | TokenizeSegments(TokenizeConfig(specs=specs, device="cpu"))
        _ = out.samples | beam.FlatMap(lambda s: [((s.key, n), a.tobytes()) for n, a in s.streams.items()]) \
            | beam.Map(_keep, run)
        _ = out.failures | "NoFailures" >> beam.Map(lambda f: (_ for _ in ()).throw(AssertionError(f)))
    return dict(_SINK.pop(run, []))


def test_every_stream_is_the_same_alone_and_with_all_companions_through_the_job(mixed_rate_corpus, one_per_rate):
    """Read and tokenized as the job does, with all six rates at once: each stream's bytes are its
    tokenizer's alone. (Every pair of rates, in batches that mix source rates, is checked on the
    same checkpoints by ``tests/transforms/test_tokenize.py``; a pair through the job costs a
    few seconds each.)"""
    alone = {rate: read_and_tokenize(mixed_rate_corpus, spec) for rate, spec in one_per_rate.items()}
    assert all(len(got) == 3 * len(SOURCE_RATES) * (2 if rate == 48000 else 1) for rate, got in alone.items())
    for rates in [SOURCE_RATES, (16000, 48000)]:
        together = read_and_tokenize(mixed_rate_corpus, ",".join(one_per_rate[r] for r in rates))
        for rate in rates:
            for member, data in alone[rate].items():
                assert together[member] == data, f"{member} changed next to {rates}"


def test_a_long_file_gives_the_same_tokens_streamed_in_work_items_or_decoded_whole(tmp_path, one_per_rate):
    """Work items and chunks are read at the source rate, so how a long file is split and
    streamed changes no sample, hence no token."""
    corpus = tmp_path / "long"
    write_audio(corpus / "talk.flac", synth_speechlike(42.3, 44100, seed=7), 44100, "flac")
    specs = f"logmel,{one_per_rate[24000]}"
    got = {}
    for split_s, chunk_s in ((0, 30.0), (20, 3.1)):
        run = uuid.uuid4().hex
        with beam.Pipeline(runner="FnApiRunner") as p:
            read = p | ReadSegments(MatchConfig(patterns=(f"{corpus}/*",)), DecodeConfig(isolation="none"),
                                    SegmentConfig(segment_s=5.0, min_segment_s=0.2, split_s=split_s, chunk_s=chunk_s))
            out = read["segments"] | TokenizeSegments(TokenizeConfig(specs=specs, device="cpu"))
            _ = out.samples | beam.FlatMap(lambda s: [((s.key, n), a.tobytes()) for n, a in s.streams.items()]) \
                | beam.Map(_keep, run)
        got[(split_s, chunk_s)] = dict(_SINK.pop(run, []))
    whole = got.pop((0, 30.0))
    assert len(whole) == 2 * 9
    for split, streams in got.items():
        assert streams == whole, split
