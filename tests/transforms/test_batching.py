"""Batching by seconds of audio and by length: LengthBatcher alone, then the Tokenize step under Beam."""

from __future__ import annotations

import dataclasses
import uuid
from typing import ClassVar, Sequence

import apache_beam as beam
import numpy as np
import pytest

import tiny_models
from audio_fixtures import synth_speechlike
from audiotok.transforms import metrics
from audiotok.transforms.records import AudioRef, Segment
from audiotok.transforms.tokenize import (DEFAULT_BUFFER_BATCHES, LengthBatcher, TokenizeConfig, TokenizeSegments, padding_of,
                                 plan_batches)
from audiotok.transforms.tokenizers import base, registry
from audiotok.transforms.tokenizers.base import StreamSpec, Tokenizer, TokenizerConfig

RUNNER = "FnApiRunner"
RATE = 16000


def lengths_s(kind: str, n: int, seed: int) -> np.ndarray:
    """Segment durations: ``uniform`` over 1-30 s, or ``skewed`` (70% full 30 s windows, the
    rest file tails spread over 1-30 s, as fixed-window segmentation makes them)."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(1.0, 30.0, n)
    return spread if kind == "uniform" else np.where(rng.random(n) < 0.7, 30.0, spread)


def arrival_order_batches(lengths: Sequence[int], max_samples: int, max_items: int) -> list[list[int]]:
    """Plain batching (BatchElements by padded size): consecutive items, in arrival order."""
    batches, current = [], []
    for n in lengths:
        if current and (len(current) >= max_items or max(*current, n) * (len(current) + 1) > max_samples):
            batches.append(current)
            current = []
        current.append(n)
    return batches + [current] if current else batches


def padding_fraction(batches: Sequence[Sequence[int]]) -> float:
    padding, padded = map(sum, zip(*(padding_of(b) for b in batches)))
    return padding / padded


def run_batcher(lengths: Sequence[int], max_s: float, max_items: int, buffer_s: float,
                same_length_only: bool = False) -> tuple[list[list[int]], int]:
    """Feeds ``lengths`` (samples) through a LengthBatcher; returns (batches of lengths, most held)."""
    batcher = LengthBatcher(int(max_s * RATE), max_items, int(buffer_s * RATE), same_length_only)
    batches, most_held = [], 0
    for n in lengths:
        batches += batcher.add(n, n)
        most_held = max(most_held, batcher.held_samples)
    return batches + batcher.flush(), most_held


@pytest.mark.parametrize("same_length_only", [False, True])
def test_batches_respect_limits_and_hold_at_most_the_buffer(same_length_only):
    # Lengths on a coarse grid so that identical lengths occur.
    lengths = [int(round(s * 4)) * RATE // 4 for s in lengths_s("uniform", 400, seed=1)]
    batches, most_held = run_batcher(lengths, max_s=60, max_items=8, buffer_s=300,
                                     same_length_only=same_length_only)
    assert sorted(n for b in batches for n in b) == sorted(lengths)
    assert most_held <= 300 * RATE
    for b in batches:
        assert 1 <= len(b) <= 8
        assert max(b) * len(b) <= 60 * RATE
        if same_length_only:
            assert len(set(b)) == 1
    assert max(len(b) for b in batches) == (5 if same_length_only else 8)


def test_a_segment_longer_than_a_batch_goes_alone():
    batches, _ = run_batcher([10 * RATE, 90 * RATE, 10 * RATE], max_s=60, max_items=8, buffer_s=0)
    assert sorted(map(sorted, batches)) == [[10 * RATE], [10 * RATE], [90 * RATE]]


@pytest.mark.parametrize("kind,most", [("uniform", 0.045), ("skewed", 0.02)])
def test_bucketing_lowers_padding_against_plain_batching(kind, most):
    lengths = [int(s * RATE) for s in lengths_s(kind, 2000, seed=0)]
    plain = padding_fraction(arrival_order_batches(lengths, 240 * RATE, 64))
    bucketed, _ = run_batcher(lengths, max_s=240, max_items=64, buffer_s=DEFAULT_BUFFER_BATCHES * 240)
    # Everything in memory: the bound bucketing approaches as the buffer grows.
    everything = [[lengths[i] for i in b] for b in plan_batches(lengths, RATE, 240, 64)]
    assert padding_fraction(everything) <= padding_fraction(bucketed) <= most < plain / 3
    # Bucketed batches are nearly full: little padding is not bought with many small batches.
    assert len(bucketed) <= 1.1 * len(everything)


# ------------------------------------------------------------------------------ under Beam


@dataclasses.dataclass(frozen=True)
class RecordingConfig(TokenizerConfig):
    pass


class SignUnitsTokenizer(Tokenizer):
    """Units int16 [T] at 100 Hz from the audio alone, no model: the sign of each 10 ms mean
    (padding-invariant). Test tokenizers add what they record or inject."""

    version = "1"
    family = base.SSL_KMEANS

    @property
    def sample_rate(self) -> int:
        return RATE

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        return (StreamSpec(self.name, base.UNITS, 100.0, "int16", codebook_size=2, frame0_center_s=0.005),)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // 160

    def units(self, audio: np.ndarray) -> np.ndarray:
        t = self.num_frames(len(audio))
        return (audio[:t * 160].reshape(t, 160).mean(1) > 0).astype(np.int16)


@registry.register("test-batching-recorder")
class RecordingTokenizer(SignUnitsTokenizer):
    """Remembers every batch's lengths."""

    name = "test-batching-recorder"
    config_class = RecordingConfig
    batches: ClassVar[list[list[int]]] = []

    def _encode_batch(self, audios):
        RecordingTokenizer.batches.append([len(a) for a in audios])
        return [{self.name: self.units(a)} for a in audios]


@dataclasses.dataclass(frozen=True)
class SegmentRecipe:
    """A segment described in a few bytes: pipelines create recipes, not audio (``beam.Create``
    pickles and bz2-compresses its elements into the job graph)."""

    index: int
    duration_s: float
    rate: int = RATE
    speech: bool = False

    def segment(self) -> Segment:
        n = int(round(self.duration_s * self.rate))
        if self.speech:
            audio = synth_speechlike(n / self.rate, self.rate, seed=self.index)[0][:n]
        else:
            audio = (0.1 * np.random.default_rng(self.index).standard_normal(n)).astype(np.float32)
        return Segment(f"seg{self.index:04d}", AudioRef(f"mem://file{self.index}.wav"), 0.0, n / self.rate,
                       self.rate, audio)


def recipes(durations_s: Sequence[float], rate: int = RATE, speech: bool = False) -> list[SegmentRecipe]:
    return [SegmentRecipe(i, float(d), rate, speech) for i, d in enumerate(durations_s)]


_SINK: dict[tuple[str, str], list] = {}


def _keep(element, run: str, name: str) -> None:
    _SINK.setdefault((run, name), []).append(element)  # the in-process runner shares this module


def run_tokenize(segments: Sequence[SegmentRecipe], config: TokenizeConfig) -> tuple[list, list, dict[str, int]]:
    """Runs TokenizeSegments over ``segments`` in this process; returns (samples, failures,
    the audiotok counters)."""
    run = uuid.uuid4().hex
    p = beam.Pipeline(runner=RUNNER)
    made = p | beam.Create(segments, reshuffle=False) | "MakeSegments" >> beam.Map(SegmentRecipe.segment)
    out = made | TokenizeSegments(config)
    for name in ("samples", "failures"):
        _ = getattr(out, name) | f"Keep{name}" >> beam.Map(_keep, run, name)
    result = p.run()
    result.wait_until_finish()
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(metrics.NAMESPACE))
    counters = {c.key.metric.name: c.committed for c in query["counters"]}
    return _SINK.pop((run, "samples"), []), _SINK.pop((run, "failures"), []), counters


def test_pipeline_batches_respect_the_seconds_limit_and_count_padding():
    RecordingTokenizer.batches.clear()
    segments = recipes(lengths_s("skewed", 60, seed=3) / 3)  # 0.3-10 s
    config = TokenizeConfig(specs="test-batching-recorder", batch_max_s=20, batch_max_items=16, device="cpu")
    samples, fails, counters = run_tokenize(segments, config)
    assert not fails and sorted(s.key for s in samples) == [f"seg{i:04d}" for i in range(60)]
    sizes = RecordingTokenizer.batches
    assert sum(len(b) for b in sizes) == 60 and len(sizes) > 1
    for b in sizes:
        assert len(b) <= 16 and (max(b) * len(b) <= 20 * RATE or len(b) == 1)
    padding, padded = map(sum, zip(*(padding_of(b) for b in sizes)))
    assert (counters["padding_samples"], counters["batched_samples"]) == (padding, padded)
    assert padding / padded < 0.05


@pytest.fixture
def one_torch_thread():
    """Tiny models are slower with two intra-op threads than with one, badly so on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_batched_tokens_equal_unbatched(tmp_path, one_torch_thread):
    """Codes from the pipeline (segments of mixed lengths padded together) equal codes of
    each segment encoded alone, for a causal codec (EnCodec 24 kHz, tiny random weights)."""
    model = tiny_models.save_encodec(tmp_path / "encodec")
    spec = f"encodec-24k[model={model}]"
    segments = recipes([0.5, 1.3, 0.7, 1.3, 1.1, 0.4], rate=24000, speech=True)
    config = TokenizeConfig(specs=spec, batch_max_s=4, batch_max_items=8, device="cpu")
    samples, fails, _ = run_tokenize(segments, config)
    assert not fails and len(samples) == len(segments)
    alone = registry.create(spec).load("cpu")
    by_key = {s.key: s for s in samples}
    for seg in (r.segment() for r in segments):
        expected = alone.encode(seg.audio)["encodec-24k"]
        got = by_key[seg.key].streams["encodec-24k"]
        assert got.dtype == np.int16 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
