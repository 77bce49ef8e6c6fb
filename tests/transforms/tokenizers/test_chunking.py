"""Overlapping chunks and stitching (transforms/tokenizers/chunking.py): pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from audiotok.transforms.tokenizers import chunking


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 1001, 4321, 10_000])
def test_kept_parts_tile_the_segment_on_the_grid(n):
    chunks = chunking.plan_chunks(n, chunk=1000, overlap=300, align=50)
    assert chunks[0].start == 0 and chunks[0].keep_start == 0 and chunks[-1].end == n and chunks[-1].keep_end == n
    for a, b in zip(chunks, chunks[1:]):
        assert a.keep_end == b.keep_start and a.keep_end % 50 == 0 and b.start % 50 == 0
        assert b.start < a.keep_end < a.end  # the seam lies inside the overlap
    assert all(c.length <= 1000 for c in chunks)
    if n <= 1000:
        assert len(chunks) == 1


def _frames_of(start: int, length: int, hop: int, field: int) -> np.ndarray:
    """A fake model: the global index of each frame a chunk yields (frames of ``field`` samples every ``hop``)."""
    count = 0 if length < field else (length - field) // hop + 1
    return start // hop + np.arange(count)


@pytest.mark.parametrize("field", [320, 400])  # codec-like (field = hop) and HuBERT-like (400-sample frames)
@pytest.mark.parametrize("n", [16_000, 40_123, 96_000])
def test_stitching_gives_each_global_frame_once_in_order(n, field):
    hop = 320
    chunks = chunking.plan_chunks(n, chunk=16_000, overlap=3_200, align=hop)
    pieces = [_frames_of(c.start, c.length, hop, field) for c in chunks]
    total = len(_frames_of(0, n, hop, field))
    np.testing.assert_array_equal(chunking.stitch(pieces, chunks, hop, total), np.arange(total))


def test_multi_rate_streams_stitch_on_a_common_grid():
    chunks = chunking.plan_chunks(50_000, chunk=8192, overlap=2048, align=2048)
    for hop in (512, 1024, 2048):  # SNAC: each stream's hop divides the alignment
        pieces = [c.start // hop + np.arange(-(-c.length // hop)) for c in chunks]
        np.testing.assert_array_equal(chunking.stitch(pieces, chunks, hop, -(-50_000 // hop)),
                                      np.arange(-(-50_000 // hop)))


def test_stitch_along_another_axis_and_bad_input():
    chunks = chunking.plan_chunks(3000, chunk=1000, overlap=200, align=100)
    pieces = [np.stack([c.start // 100 + np.arange(c.length // 100)] * 2) for c in chunks]
    assert chunking.stitch(pieces, chunks, 100, 30).shape == (2, 30)
    with pytest.raises(ValueError, match="pieces for"):
        chunking.stitch(pieces[:1], chunks, 100, 30)
    with pytest.raises(ValueError, match="were needed"):
        chunking.stitch([p[:, :2] for p in pieces], chunks, 100, 30)


def test_plans_that_make_no_progress_are_refused():
    with pytest.raises(ValueError, match="no progress"):
        chunking.plan_chunks(10_000, chunk=1000, overlap=1000, align=100)
    with pytest.raises(ValueError, match="no progress"):
        chunking.plan_chunks(10_000, chunk=150, overlap=0, align=100)


def test_seam_frames():
    chunks = chunking.plan_chunks(3000, chunk=1000, overlap=200, align=100)
    seams = chunking.seam_frames(chunks, 100, radius=1)
    assert set(seams) == {f for c in chunks[:-1] for f in (c.keep_end // 100 - 1, c.keep_end // 100)}


def test_forward_groups():
    widths = [300, 100, 300, 200, 100]
    assert chunking.forward_groups(widths, same_width_only=True, max_samples=10_000) == [[0, 2], [3], [1, 4]]
    assert chunking.forward_groups(widths, same_width_only=False, max_samples=10_000) == [[0, 2, 3, 1, 4]]
    assert chunking.forward_groups(widths, same_width_only=False, max_samples=600) == [[0, 2], [3, 1, 4]]
    assert chunking.forward_groups([5000], same_width_only=False, max_samples=600) == [[0]]
    assert chunking.forward_groups([], same_width_only=False, max_samples=600) == []
