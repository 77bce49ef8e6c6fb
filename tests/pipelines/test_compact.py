"""``audiotok compact`` keeps a dataset's layout (vector streams in a shard set of their own or not)."""

from __future__ import annotations

import numpy as np

import dataset_fixtures as fx
from audiotok.pipelines import compact, gc, verify
from audiotok.transforms import dataset, lm, reader, shards


def _content(out):
    return [(s.key, s.meta, {n: a.tolist() for n, a in s.streams.items()}) for s in reader.read_samples(str(out))]


def test_compact_keeps_the_vector_shard_set_unless_told_and_gc_keeps_what_is_live(tmp_path):
    out = tmp_path / "ds"
    index = fx.write_dataset(out, fx.synthetic_samples(7, seed=5), max_samples=2, separate_vectors=True)
    lm.write_vocab(str(out), index)
    before = _content(out)
    after = compact.compact(str(out))
    (row,) = dataset.shard_rows(str(out), after)
    assert row["vectors_url"] == "shards/v000002/vectors-000000-0000.tar"
    assert _content(out) == before and verify.verify_dataset(str(out)).ok(strict=False)
    removed = gc.collect_garbage(str(out), older_than_s=0)
    assert "shards/v000001/vectors-000000-0000.tar" in removed and not any(r.startswith("shards/v000002") for r in removed)
    assert _content(out) == before

    after = compact.compact(str(out), shards.ShardConfig(separate_vectors=False))
    assert "vectors_url" not in next(dataset.shard_rows(str(out), after)) and _content(out) == before
    assert verify.verify_dataset(str(out)).ok()
    assert compact.main([str(out), "--separate-vectors"]) == 0
    (row,) = dataset.shard_rows(str(out))
    assert row["vectors_url"] == "shards/v000004/vectors-000000-0000.tar" and _content(out) == before
    fbank = [s.streams["fbank"] for s in reader.read_samples(str(out), streams=["fbank"])]
    assert len(fbank) == 7 and all(a.dtype == np.float16 for a in fbank)
