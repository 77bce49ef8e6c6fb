"""The input policy: limits, statistics block by block, repairs and verdicts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from audiotok.transforms import failures, policy
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.policy import DecodeConfig, Repair, SampleStats


def test_limits():
    cfg = DecodeConfig(max_duration_s=1.0, max_channels=2, min_sample_rate=8000)
    policy.apply_policy(np.zeros((1, 8000), np.float32) + 0.1, 8000, cfg)
    cases = {
        failures.TOO_LONG: (np.zeros((1, 16001), np.float32), 8000),
        failures.TOO_MANY_CHANNELS: (np.zeros((3, 100), np.float32), 8000),
        failures.BAD_SAMPLE_RATE: (np.zeros((1, 100), np.float32), 4000),
        failures.NON_FINITE: (np.array([[0.0, np.nan]], np.float32), 8000),
        failures.EMPTY: (np.zeros((1, 0), np.float32), 8000),
    }
    for reason, (samples, rate) in cases.items():
        with pytest.raises(AudiotokError) as e:
            policy.apply_policy(samples, rate, cfg)
        assert e.value.reason == reason


def test_statistics_do_not_depend_on_the_blocks():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (2, 100_000)).astype(np.float32)
    x[0, 123] = np.nan
    x[1, 99_999] = 2.5
    whole = policy.sample_stats(x)
    for size in (1, 777, 50_000, 1 << 20):
        assert policy.sample_stats(x[:, i:i + size] for i in range(0, x.shape[1], size)) == whole
    assert not whole.finite and whole.peak == 2.5 and whole.total == x.size
    assert whole.clipped == np.count_nonzero(np.abs(np.nan_to_num(x)) >= policy.CLIP_LEVEL)


@pytest.mark.parametrize("knobs, reason, notes", [
    ({}, failures.NON_FINITE, None),
    ({"non_finite": "zero"}, None, ("non_finite_zeroed", "out_of_range_scaled")),
    ({"non_finite": "zero", "out_of_range": "clip"}, None, ("non_finite_zeroed", "out_of_range_clipped")),
    ({"non_finite": "zero", "out_of_range": "reject"}, failures.OUT_OF_RANGE, None),
])
def test_repairs_are_decided_from_the_statistics(knobs, reason, notes):
    stats = SampleStats(finite=False, peak=2.5, clipped=3, total=100)
    config = DecodeConfig(**knobs)
    if reason:
        with pytest.raises(AudiotokError) as e:
            policy.decide_repair(stats, config)
        assert e.value.reason == reason
        return
    repair = policy.decide_repair(stats, config)
    assert repair.notes == notes
    block = np.array([[np.nan, 2.5, -1.25, 0.5]], np.float32)
    out = repair.apply(block.copy())
    if repair.scale is not None:
        np.testing.assert_array_equal(out, np.array([[0.0, 1.0, -0.5, 0.2]], np.float32))
        assert policy.repaired_stats(stats, repair) is None  # scaling moves samples: scan again
    else:
        np.testing.assert_array_equal(out, [[0.0, 1.0, -1.0, 0.5]])
        assert policy.repaired_stats(stats, repair) == SampleStats(True, 1.0, 3, 100)
    assert Repair.from_json(repair.to_json()) == repair


def test_verdicts_on_silence_and_clipping():
    silent = SampleStats(True, 1e-4, 0, 1000)
    assert policy.judge(silent, DecodeConfig()) == ("silent",)
    with pytest.raises(AudiotokError) as e:
        policy.judge(silent, DecodeConfig(silence="reject"))
    assert e.value.reason == failures.SILENT
    clipped = SampleStats(True, 1.0, 50, 1000)
    assert policy.judge(clipped, DecodeConfig()) == ("clipped",)
    with pytest.raises(AudiotokError) as e:
        policy.judge(clipped, DecodeConfig(clipping="reject"))
    assert e.value.reason == failures.CLIPPED


def test_repairs_from_a_decoder_process_are_checked():
    good = Repair(True, 0.4, False, ("non_finite_zeroed", "out_of_range_scaled")).to_json()
    for bad in ({"scale": 2.0}, {"scale": "0.4"}, {"clip": 1}, {"notes": ["../x"]}, {"extra": 1}):
        with pytest.raises(ValueError):
            Repair.from_json({**good, **bad})


def test_statistics_pass_is_needed_only_where_statistics_decide():
    default = DecodeConfig()
    assert not policy.needs_statistics(default, bounded=True)  # PCM, FLAC: nothing to judge
    assert policy.needs_statistics(default, bounded=False)  # float WAV, lossy codecs: NaN, peaks
    per_sample = dataclasses.replace(default, non_finite="zero", out_of_range="clip")
    assert not policy.needs_statistics(per_sample, bounded=False)
    assert policy.needs_statistics(dataclasses.replace(default, silence="reject"), bounded=True)
    assert policy.needs_statistics(dataclasses.replace(default, clipping="reject"), bounded=True)
