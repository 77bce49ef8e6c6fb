"""Other libraries read our datasets: Hugging Face ``datasets`` (its webdataset builder) reads the
shards as they are, and Lhotse reads ``audiotok export --format lhotse-shar``.

Expected values come from the tar members themselves (``tarfile`` + ``np.load``), never from
audiotok's reader.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from audiotok.pipelines import export
import dataset_fixtures as fx
from audiotok.transforms import reader


def _members_by_key(out, index) -> dict[str, dict[str, object]]:
    """key -> {"json": dict, "<stream>": array} straight from the tars."""
    samples: dict[str, dict[str, object]] = {}
    for url in reader.shard_urls(str(out), index):
        for name, data in fx.read_members(url):
            key, suffix = name.split(".", 1)
            value = json.loads(data) if suffix == "json" else np.load(io.BytesIO(data), allow_pickle=False)
            samples.setdefault(key, {})[suffix.removesuffix(".npy")] = value
    return samples


def _dataset(tmp_path):
    samples = fx.synthetic_samples(5, seed=21, manifest={"text": "hi there", "speaker": "spk1", "language": "en"})
    out = tmp_path / "ds"
    index = fx.write_dataset(out, samples, max_samples=2)
    return out, index


def test_hugging_face_datasets_loads_the_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    out, index = _dataset(tmp_path)
    ds = datasets.load_dataset("webdataset", data_files={"train": reader.shard_urls(str(out), index)},
                               split="train", cache_dir=str(tmp_path / "hf-cache"))
    expected = _members_by_key(out, index)
    assert ds.num_rows == len(expected) == 5
    assert {"json", "codec.npy", "units.npy", "fbank.npy", "__key__"} <= set(ds.column_names)
    # Stored as they were written: int16 [K, T], int16 [T], float16 [T, D] ...
    assert ds.features["codec.npy"] == datasets.List(datasets.List(datasets.Value("int16")))
    assert ds.features["units.npy"] == datasets.List(datasets.Value("int16"))
    assert ds.features["fbank.npy"] == datasets.List(datasets.List(datasets.Value("float16")))
    # ... though HF's numpy format widens them (int64, float32), losslessly.
    for row in ds.with_format("numpy"):
        want = expected[row["__key__"]]
        meta = row["json"]
        assert meta["key"] == row["__key__"] and meta["text"] == "hi there"
        assert np.asarray(meta["streams"]["codec"]["shape"]).tolist() == list(want["codec"].shape)
        for stream in ("codec", "units", "fbank"):
            got = np.asarray(row[f"{stream}.npy"])
            assert got.shape == want[stream].shape
            np.testing.assert_array_equal(got.astype(want[stream].dtype), want[stream])
            np.testing.assert_array_equal(got, want[stream].astype(got.dtype))
        assert row["codec.npy"].shape[0] == 4  # [K, T] survives


def test_lhotse_reads_the_shar_export(tmp_path, capsys):
    lhotse = pytest.importorskip("lhotse")
    out, index = _dataset(tmp_path)
    shar = tmp_path / "shar"
    assert export.main([str(out), "--format", "lhotse-shar", "-o", str(shar), "--shard-size", "2"]) == 0
    assert "from_shar" in capsys.readouterr().err
    assert sorted(p.name for p in shar.iterdir()) == [
        f"{field}.{i:06d}.{ext}" for field, ext in
        [("codec", "tar"), ("cuts", "jsonl.gz"), ("fbank", "tar"), ("units", "tar")] for i in range(3)]
    expected = _members_by_key(out, index)
    cuts = list(lhotse.CutSet.from_shar(in_dir=str(shar)))
    assert sorted(c.id for c in cuts) == sorted(expected)
    for cut in cuts:
        want = expected[cut.id]
        meta = want["json"]
        assert cut.duration == pytest.approx(meta["duration_s"])
        assert cut.custom["source_uri"] == meta["source"]["uri"]
        assert cut.custom["audiotok_streams"] == {"codec": "codec", "units": "units", "fbank": "fbank"}
        assert cut.supervisions[0].text == "hi there" and cut.supervisions[0].speaker == "spk1"
        assert cut.codec.temporal_dim == 1 and cut.codec.frame_shift == pytest.approx(1 / 75)
        assert cut.units.frame_shift == pytest.approx(1 / 50)
        for stream in ("codec", "units", "fbank"):
            got = cut.load_custom(stream)
            assert got.dtype == want[stream].dtype
            np.testing.assert_array_equal(got, want[stream])


def test_lhotse_field_names():
    assert export.lhotse_field_names(["mfcc-kmeans", "codes"]) == {"mfcc-kmeans": "mfcc_kmeans", "codes": "codes"}
    with pytest.raises(ValueError, match="both become"):
        export.lhotse_field_names(["a-b", "a_b"])
    with pytest.raises(ValueError, match="not allowed"):
        export.lhotse_field_names(["recording"])


def test_lhotse_reads_the_example_run(tmp_path):
    lhotse = pytest.importorskip("lhotse")
    out = fx.example_run()
    export.export_lhotse_shar(out, str(tmp_path / "shar"))
    cuts = list(lhotse.CutSet.from_shar(in_dir=str(tmp_path / "shar")))
    expected = _members_by_key(out, reader.dataset.read_index(out))
    assert len(cuts) == len(expected) > 0
    for cut in cuts:
        units = cut.load_mfcc_kmeans()
        np.testing.assert_array_equal(units, expected[cut.id]["mfcc-kmeans"])
        assert units.max() < 32
