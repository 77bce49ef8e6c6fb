"""Fixed windows at their edges, and sample keys."""

from __future__ import annotations

import numpy as np
import pytest

from audiotok.transforms import segment
from audiotok.transforms.records import AudioRef, Decoded
from audiotok.transforms.segment import SegmentConfig, fixed_windows
from audiotok.transforms.dataset import check_key


def test_exact_multiple_has_no_tail():
    assert fixed_windows(60 * 100, 100, SegmentConfig(30, 1)) == [(0, 3000), (3000, 6000)]


def test_tail_kept_when_long_enough():
    assert fixed_windows(6150, 100, SegmentConfig(30, 1)) == [(0, 3000), (3000, 6000), (6000, 6150)]


def test_tail_dropped_when_short():
    assert fixed_windows(6050, 100, SegmentConfig(30, 1)) == [(0, 3000), (3000, 6000)]


def test_tail_exactly_min_is_kept():
    assert fixed_windows(6100, 100, SegmentConfig(30, 1)) == [(0, 3000), (3000, 6000), (6000, 6100)]


def test_short_file_is_one_segment_or_none():
    assert fixed_windows(500, 100, SegmentConfig(30, 1)) == [(0, 500)]
    assert fixed_windows(50, 100, SegmentConfig(30, 1)) == []
    assert fixed_windows(0, 100, SegmentConfig(30, 0)) == []


def test_windows_cover_without_overlap():
    bounds = fixed_windows(123457, 16000, SegmentConfig(2.5, 0))
    assert bounds[0][0] == 0 and bounds[-1][1] == 123457
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


@pytest.mark.parametrize("kwargs", [{"segment_s": 0}, {"segment_s": 5, "min_segment_s": 6},
                                    {"segment_s": 5, "min_segment_s": -1}])
def test_bad_config_names_the_value(kwargs):
    with pytest.raises(ValueError, match="Found"):
        SegmentConfig(**kwargs)


def test_cut_segments_remember_source_and_position():
    ref = AudioRef(uri="gs://b/dir/talk.flac")
    decoded = Decoded(ref, np.arange(16000 * 5, dtype=np.float32), 16000, 44100, 2, "flac")
    segs = list(segment.cut_segments(decoded, SegmentConfig(2, 0.5)))
    assert [(s.start_s, s.end_s) for s in segs] == [(0, 2), (2, 4), (4, 5)]
    assert all(s.source is ref and s.sample_rate == 16000 for s in segs)
    assert segs[1].audio[0] == 32000
    assert segs[0].source_info == {"sample_rate": 44100, "channels": 2, "format": "flac"}
    assert len({s.key for s in segs}) == 3


@pytest.mark.parametrize("uri", [
    "/data/a.b.c.wav", "/data/with space.wav", "/data/../../etc/passwd", "s3://b/x/y/z.flac",
    "/data/" + "n" * 300 + ".wav", "/data/caf\udce9.wav", "/data/日本語.wav", "/data/.hidden", "/", "gs://b/a/",
])
def test_keys_are_safe(uri):
    key = segment.segment_key(AudioRef(uri=uri), 12.5)
    check_key(key)
    assert "." not in key and "/" not in key and len(key) <= 80
    assert key.endswith("000012500")


def test_keys_tell_apart_same_name_in_different_folders():
    a = segment.segment_key(AudioRef(uri="/x/a/clip.wav"), 0)
    b = segment.segment_key(AudioRef(uri="/x/b/clip.wav"), 0)
    assert a != b and a.startswith("clip-") and b.startswith("clip-")


def test_manifest_id_names_the_key():
    key = segment.segment_key(AudioRef(uri="/x/a.wav", meta={"id": "spk1/utt 7"}), 0)
    assert key.startswith("spk1_utt_7-")


def test_check_key_rejects_unsafe():
    for bad in ["", "a.b", "../x", "a/b", "a b", "x" * 201]:
        with pytest.raises(ValueError):
            check_key(bad)
