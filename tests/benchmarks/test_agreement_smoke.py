"""benchmarks/agreement.py on tiny checkpoints: the comparisons count what differs and where."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from audio_fixtures import synth_speechlike  # noqa: E402

from benchmarks import agreement  # noqa: E402
from audiotok.transforms.tokenizers import registry  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compare_places_differences_by_their_distance_to_the_nearest_anchor():
    a = np.zeros((2, 20), np.int64)
    b = a.copy()
    b[1, 3] = 1   # 2 frames from the seam at 5
    b[0, 12] = 1  # 7 frames from it, 8 from the end anchor at 20
    d = agreement.compare(a, b, [5, 20])
    assert (d.codes, d.equal, d.frames, d.distance, d.far) == (40, 38, [3, 12], [2, 7], 1)
    assert d.fraction_equal == pytest.approx(0.95)
    assert agreement.compare(a[0], a[0], []).fraction_equal == 1.0


def test_batch_lengths_fit_and_pair_up():
    lengths = agreement.batch_lengths(40 * 16000, 16000, pairs=True)
    assert sum(lengths) <= 40 * 16000 and all(2 * 16000 <= n <= 7 * 16000 for n in lengths)
    assert lengths[::2] == lengths[1::2]


def test_comparisons_run_on_a_tiny_codec(tmp_path):
    spec = f"encodec-24k[model={tiny_models.save_encodec(tmp_path / 'encodec')}"
    whole = registry.create(f"{spec},chunk_s=3600,overlap_s=1]").load()
    chunked = registry.create(f"{spec},chunk_s=1.5,overlap_s=0.5]").load()
    audio = synth_speechlike(6.0, 24000, seed=3)[0]
    c = agreement.chunked_vs_whole(whole, chunked, audio)
    assert c.codes == 8 * 450 and 0.5 < c.fraction_equal <= 1.0
    assert len(c.far_latent_rel) == c.far and all(x >= 0 for x in c.far_latent_rel)
    b = agreement.batched_vs_single(whole, audio)
    assert b.codes > 0 and b.fraction_equal == 1.0  # the tiny EnCodec is causal: padding changes nothing
    margin = agreement.code_margin(whole, agreement.latents(whole, audio)[10], np.array([1, 2]), np.array([1, 3]))
    assert margin is not None and margin >= 0
    t = agreement.threads_vs_one(whole, audio)
    assert t.codes == b.codes and 0.9 < t.fraction_equal <= 1.0
    row = {"tokenizer": "encodec-24k", "chunked": c.summary(), "batched": b.summary(), "threads": t.summary()}
    assert "| encodec-24k |" in agreement.table([row])
