"""A stream is a function of the audio and its own tokenizer's settings: the same bytes alone and
with any companion, for every pair of the registry's rates, on tiny checkpoints of the real
architectures, in batches that mix source rates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from audio_fixtures import synth_speechlike  # noqa: E402

from audiotok.transforms.records import AudioRef, Segment  # noqa: E402
from audiotok.transforms.tokenize import length_at, tokenize_batch  # noqa: E402
from audiotok.transforms.tokenizers import registry  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATES = tiny_models.REGISTRY_RATES


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """One tokenizer per rate, loaded once."""
    specs = tiny_models.one_spec_per_rate(tmp_path_factory.mktemp("rates"))
    toks = {rate: registry.create(spec).load() for rate, spec in specs.items()}
    assert {rate: t.sample_rate for rate, t in toks.items()} == {r: r for r in RATES}
    return toks


def segments() -> list[Segment]:
    """One segment per source rate, each a little over a second, in one batch."""
    return [Segment(f"s{rate}", AudioRef(f"mem://{rate}.wav"), 0.0, 1.0 + i / 10, rate,
                    synth_speechlike(1.0 + i / 10, rate, seed=i)[0]) for i, rate in enumerate(RATES)]


def streams_of(tokenizers_, batch) -> dict[str, dict[str, bytes]]:
    out = {}
    for sample in tokenize_batch(tokenizers_, batch):
        assert not hasattr(sample, "reason"), sample
        out[sample.key] = {name: array.tobytes() for name, array in sample.streams.items()}
    return out


def test_every_stream_is_the_same_alone_and_with_any_companion(tokenizers):
    batch = segments()
    alone = {rate: streams_of([tok], batch) for rate, tok in tokenizers.items()}
    for a, b in itertools.combinations(RATES, 2):
        together = streams_of([tokenizers[a], tokenizers[b]], batch)
        for rate in (a, b):
            for key, streams in alone[rate].items():
                for name, data in streams.items():
                    assert together[key][name] == data, f"{name} of {key} changed next to a {a}/{b} Hz companion"
    everything = streams_of(list(tokenizers.values())[::-1], batch)
    for rate in RATES:
        for key, streams in alone[rate].items():
            assert all(everything[key][name] == data for name, data in streams.items()), (rate, key)


def test_each_tokenizer_gets_the_source_resampled_once(tokenizers):
    """What a tokenizer encodes is the source resampled straight to its rate (not via another)."""
    from audiotok.transforms.decode import resample

    seg = segments()[0]  # 16 kHz
    tok = tokenizers[24000]
    direct = resample(seg.audio, 16000, 24000)
    seen = []
    original = tok._encode_batch
    tok._encode_batch = lambda audios: seen.extend(audios) or original(audios)
    try:
        (sample,) = tokenize_batch([tokenizers[48000], tok], [seg])
    finally:
        del tok._encode_batch
    assert len(seen) == 1 and seen[0].tobytes() == direct.tobytes()
    assert sample.streams["encodec-24k"].tobytes() == tok.encode(direct)["encodec-24k"].tobytes()
    assert sample.meta["streams"]["encodec-24k"]["sample_rate"] == 24000 and sample.meta["sample_rate"] == 16000
    # The detour through a companion's rate is not a no-op: this test would see it.
    assert not np.array_equal(direct, resample(resample(seg.audio, 16000, 48000), 48000, 24000))


def test_segment_lengths_are_measured_in_time():
    a = Segment("a", AudioRef("mem://a"), 0.0, 2.0, 16000, np.zeros(32000, np.float32))
    b = Segment("b", AudioRef("mem://b"), 0.0, 2.0, 44100, np.zeros(88200, np.float32))
    assert length_at(a, 24000) == length_at(b, 24000) == 48000
