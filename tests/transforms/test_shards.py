"""Sample encoding, shard rolling by count and by bytes, finalize and the index."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds

from audiotok.transforms import dataset, shards
from audiotok.transforms.failures import Failure
from audiotok.transforms.records import AudioRef, Sample
from audiotok.transforms.shards import ShardConfig, ShardWriter

SPECS = {"units": {"kind": "units"}, "mel": {"kind": "vectors"}}


def make_sample(i: int, frames: int = 50) -> Sample:
    rng = np.random.default_rng(i)
    return Sample(
        key=f"clip{i:03d}-{i:010x}-000000000",
        meta={"key": f"clip{i:03d}", "duration_s": frames / 100, "source": {"uri": f"/in/clip{i:03d}.wav"}},
        streams={"units": rng.integers(0, 100, frames).astype(np.int16),
                 "mel": rng.standard_normal((frames, 8)).astype(np.float16)},
    )


def write_all(tmp_path, samples, config):
    temp = str(tmp_path / "tmp")
    written = []
    with ShardWriter(temp, config, SPECS) as w:
        for s in samples:
            written += w.add(s)
        written += w.close()
    return written


def test_encode_sample_members():
    members = dataset.encode_sample(make_sample(1))
    names = [n for n, _ in members]
    key = make_sample(1).key
    assert names == [f"{key}.json", f"{key}.mel.npy", f"{key}.units.npy"]
    assert np.load(io.BytesIO(members[2][1])).dtype == np.int16


def test_rolls_by_count(tmp_path):
    written = write_all(tmp_path, [make_sample(i) for i in range(10)], ShardConfig(max_samples=4))
    assert [w.samples for w in written] == [4, 4, 2]
    for w in written:
        assert os.path.getsize(w.temp_url) == w.bytes  # the index's byte counts are exact
        assert w.tokens == {"units": 50 * w.samples, "mel": 50 * w.samples}


def test_rolls_by_bytes(tmp_path):
    one = sum(dataset.member_tar_bytes(len(d)) for _, d in dataset.encode_sample(make_sample(0)))
    written = write_all(tmp_path, [make_sample(i) for i in range(7)], ShardConfig(max_samples=100,
                                                                                     max_bytes=3 * one + 100))
    assert [w.samples for w in written] == [3, 3, 1]
    assert all(w.bytes <= 3 * one + 100 + 2 * 512 + tarfile.RECORDSIZE for w in written)


def test_oversized_sample_gets_own_shard(tmp_path):
    written = write_all(tmp_path, [make_sample(0, 10), make_sample(1, 5000), make_sample(2, 10)],
                        ShardConfig(max_samples=100, max_bytes=4096))
    assert [w.samples for w in written] == [1, 1, 1]


def test_tar_is_reproducible_and_safe(tmp_path):
    a = write_all(tmp_path / "a", [make_sample(i) for i in range(3)], ShardConfig())
    b = write_all(tmp_path / "b", [make_sample(i) for i in range(3)], ShardConfig())
    assert open(a[0].temp_url, "rb").read() == open(b[0].temp_url, "rb").read()
    with tarfile.open(a[0].temp_url) as tar:
        for member in tar.getmembers():
            assert member.mtime == 0 and member.isreg()
            tarfile.data_filter(member, str(tmp_path))  # raises on anything unsafe


@pytest.mark.parametrize("names", [
    ["clip-0.json", "clip-0.units.npy"],
    ["a" * 60 + "/" + "b" * 90 + ".npy", "sprecher/äöü-ß.json"],  # the ustar prefix field; UTF-8 names
    ["empty.npy"],
])
def test_shard_bytes_are_what_tarfile_writes(tmp_path, names):
    """The shard writer makes its headers itself (without tarfile's copy of each TarInfo): the
    bytes must stay those of tarfile's stream mode, which stock readers and older shards share."""
    rng = np.random.default_rng(len(names))
    members = [(n, rng.integers(0, 256, size=0 if n == "empty.npy" else int(rng.integers(1, 3000)),
                                dtype=np.uint8).tobytes()) for n in names]
    temp = shards._TempTar(str(tmp_path))
    temp.add(members)
    size = temp.close()
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            tar.addfile(shards._tarinfo(name, len(data)), io.BytesIO(data))
    ours = open(temp.url, "rb").read()
    assert ours == expected.getvalue() and size == len(ours)
    with tarfile.open(temp.url) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == members


def test_finalize_names_index_and_cleans(tmp_path):
    out = str(tmp_path / "out")
    temp = os.path.join(out, "_tmp", "run1")
    with ShardWriter(temp, ShardConfig(max_samples=2), SPECS) as w:
        written = [x for i in range(5) for x in w.add(make_sample(4 - i))] + w.close()
    fail = Failure("u", "empty", "no bytes", stage="decode")
    refs = [AudioRef(f"/in/clip{i:03d}.wav") for i in range(5)] + [AudioRef("u")]
    index = shards.finalize(out, temp, written, {"streams": SPECS}, shards.RunPlan(),
                            listed=refs, selected=[r.uri for r in refs], failures=[fail])
    rows = list(dataset.shard_rows(out, index))
    assert [s["url"] for s in rows] == ["shards/v000001/shard-000000-0000.tar",
                                        "shards/v000001/shard-000000-0001.tar",
                                        "shards/v000001/shard-000000-0002.tar"]
    assert index["totals"]["samples"] == 5 and index["totals"]["failures"] == 1
    assert index["totals"]["failures_by_reason"] == {"empty": 1}
    [failure_row] = dataset.failure_rows(out, index)
    assert failure_row["records"] == 1 and json.loads(open(os.path.join(out, failure_row["url"])).read())["uri"] == "u"
    assert not os.path.exists(temp)
    assert json.load(open(os.path.join(out, "index.json"))) == index
    assert set(index) == {"format", "version", "dataset_version", "streams", "totals", "layout"}  # rows: in parts
    # Shards are named in key order, whatever order the writers finished in.
    first_keys = [next(iter(wds.WebDataset(os.path.join(out, s["url"]), shardshuffle=False)))["__key__"]
                  for s in rows]
    assert first_keys == sorted(first_keys)
    keys = [s["__key__"] for s in wds.WebDataset([os.path.join(out, s["url"]) for s in rows], shardshuffle=False)]
    assert sorted(keys) == sorted(make_sample(i).key for i in range(5))


def test_abort_removes_partial_shard(tmp_path):
    temp = str(tmp_path / "tmp")
    with pytest.raises(RuntimeError):
        with ShardWriter(temp, ShardConfig(), SPECS) as w:
            w.add(make_sample(0))
            raise RuntimeError("worker died")
    assert os.listdir(temp) == []


@pytest.mark.parametrize("value", [0, -1])
def test_config_checks(value):
    with pytest.raises(ValueError, match="Found"):
        ShardConfig(max_samples=value)


@pytest.mark.parametrize("per_file", [2, 1000])
def test_spilled_samples_make_the_shards_the_writer_makes(tmp_path, monkeypatch, per_file):
    """Samples reach the bucket writers through spill files (tokens never sit in the runner): the
    shards are the bytes a writer makes from the samples sorted by key."""
    monkeypatch.setattr(shards, "SPILL_SAMPLES_PER_FILE", per_file)
    monkeypatch.setattr(shards, "PRODUCED_LINES_PER_FILE", per_file)
    samples = [make_sample(i) for i in (3, 1, 4, 0, 2)]  # in arrival order
    temp, out = str(tmp_path / "tmp"), str(tmp_path / "out")
    spill = shards._SpillFn(temp, SPECS, files_per_bucket=100)
    spill.start_bundle()
    sections = [e for s in samples for e in spill.process(s, len(samples))]
    sections += [wv.value for wv in spill.finish_bundle()]
    assert {bucket for bucket, _ in sections} == {0}  # 5 inputs, 100 per bucket
    assert len({url for _, (url, _, _) in sections}) == (3 if per_file == 2 else 1)
    writer = shards._WriteBucketFn(out, temp, shards.RunPlan(version=1), ShardConfig(max_samples=2), SPECS)
    writer.start_bundle()
    outputs = list(writer.process((0, [section for _, section in sections]), 1))
    outputs += [o for o in writer.finish_bundle()]
    rows = [o.value[1] for o in outputs if o.tag == "rows"]
    assert [r["url"] for r in rows] == [f"shards/v000001/shard-000000-{i:04d}.tar" for i in range(3)]
    direct = write_all(tmp_path / "direct", sorted(samples, key=lambda s: s.key), ShardConfig(max_samples=2))
    for row, w in zip(rows, direct):
        assert open(os.path.join(out, row["url"]), "rb").read() == open(w.temp_url, "rb").read()
        assert (row["samples"], row["bytes"], row["tokens"]) == (w.samples, w.bytes, dict(w.tokens))
    # What the shards hold goes to files too (every per_file lines, and at the end of the bundle)
    produced = [getattr(o.value, "value", o.value) for o in outputs if o.tag == "produced"]
    assert {part for part, _ in produced} == {0}
    assert len({url for _, (url, _, _) in produced}) == 1  # one bucket: written after it, whatever the limit
    contributions = shards.contributions_of(shards.section_lines(section for _, section in produced))
    assert sorted(stats["uri"] for _, _, stats in contributions) == sorted(s.meta["source"]["uri"] for s in samples)


def test_the_runner_carries_one_section_per_state_part_and_file_of_what_shards_hold(tmp_path, monkeypatch):
    """The shard writers put what their shards hold (an entry per input, for the state) into
    files, one section per state part: the runner carries a range per part and file, not an
    element per shard and part, however many inputs and shards a bundle wrote."""
    monkeypatch.setattr(shards, "PRODUCED_LINES_PER_FILE", 6)
    samples = [make_sample(i) for i in range(12)]
    temp, out, parts = str(tmp_path / "tmp"), str(tmp_path / "out"), 4
    spill = shards._SpillFn(temp, SPECS, files_per_bucket=6)
    spill.start_bundle()
    sections = []
    for s in samples:
        sections += list(spill.process(s, len(samples)))
    sections += [wv.value for wv in spill.finish_bundle()]
    by_writer: dict[int, list] = {}
    for writer, section in sections:
        by_writer.setdefault(writer, []).append(section)
    assert len(by_writer) == 2  # two shard groups of 6 inputs
    writer = shards._WriteBucketFn(out, temp, shards.RunPlan(version=1), ShardConfig(max_samples=1), SPECS)
    writer.start_bundle()
    outputs = [o for w in sorted(by_writer) for o in writer.process((w, by_writer[w]), parts)]
    outputs += list(writer.finish_bundle())
    assert sum(o.tag == "rows" for o in outputs) == 12  # a shard per sample
    produced = [getattr(o.value, "value", o.value) for o in outputs if o.tag == "produced"]
    files = {url for _, (url, _, _) in produced}
    assert len(files) == 2  # 12 lines: written after the first bucket reached 6, and at the end
    assert len(produced) <= parts * len(files) < 12
    wanted = {dataset.part_of(dataset.order_key(s.meta["source"]["uri"])[0], parts) for s in samples}
    assert {part for part, _ in produced} == wanted
    for part in wanted:
        got = shards.contributions_of(shards.section_lines(sorted(sec for p, sec in produced if p == part)))
        assert sorted(stats["uri"] for _, _, stats in got) == sorted(
            s.meta["source"]["uri"] for s in samples
            if dataset.part_of(dataset.order_key(s.meta["source"]["uri"])[0], parts) == part)


def _stock(urls):
    return {s["__key__"]: s for s in wds.WebDataset([str(u) for u in urls], shardshuffle=False).decode()}


def test_separate_vectors_writes_two_shard_sets_stock_webdataset_reads_each(tmp_path):
    samples = [make_sample(i, frames=20 + i) for i in range(5)]
    out = tmp_path / "out"
    written = write_all(tmp_path, samples, ShardConfig(max_samples=3, separate_vectors=True))
    index = shards.finalize(str(out), str(tmp_path / "tmp"), written, {"streams": SPECS})
    rows = list(dataset.shard_rows(str(out), index))
    assert [(r["url"], r["vectors_url"]) for r in rows] == [
        ("shards/v000001/shard-000000-0000.tar", "shards/v000001/vectors-000000-0000.tar"),
        ("shards/v000001/shard-000000-0001.tar", "shards/v000001/vectors-000000-0001.tar")]
    for r in rows:
        assert r["bytes"] == os.path.getsize(out / r["url"]) and r["vectors_bytes"] == os.path.getsize(out / r["vectors_url"])
    assert index["totals"]["bytes"] == sum(r["bytes"] + r["vectors_bytes"] for r in rows)
    assert dataset.referenced_files(str(out), index) >= {r["vectors_url"] for r in rows}
    with tarfile.open(out / rows[0]["url"]) as a, tarfile.open(out / rows[0]["vectors_url"]) as b:
        assert [m.name.split(".", 1)[1] for m in a] == ["json", "units.npy"] * 3
        assert [m.name for m in b] == [f"{s.key}.mel.npy" for s in samples[:3]]
    discrete = _stock(out / r["url"] for r in rows)
    vectors = _stock(out / r["vectors_url"] for r in rows)
    assert list(discrete) == list(vectors) == [s.key for s in samples]
    for s in samples:
        np.testing.assert_array_equal(discrete[s.key]["units.npy"], s.streams["units"])
        np.testing.assert_array_equal(vectors[s.key]["mel.npy"], s.streams["mel"])
        assert "mel.npy" not in discrete[s.key] and "json" not in vectors[s.key]


def test_separate_vectors_shards_are_the_same_bytes_on_a_rerun_and_absent_without_vectors(tmp_path):
    samples = [make_sample(i) for i in range(4)]
    files = []
    for run in ("a", "b"):
        written = write_all(tmp_path / run, samples, ShardConfig(max_samples=2, separate_vectors=True))
        index = shards.finalize(str(tmp_path / run / "out"), str(tmp_path / run / "tmp"), written, {"streams": SPECS})
        files.append({r: (tmp_path / run / "out" / r).read_bytes()
                      for row in dataset.shard_rows(str(tmp_path / run / "out"), index)
                      for r in (row["url"], row["vectors_url"])})
    assert files[0] == files[1] and len(files[0]) == 4
    units_only = [Sample(s.key, s.meta, {"units": s.streams["units"]}) for s in samples]
    written = write_all(tmp_path / "c", units_only, ShardConfig(separate_vectors=True))
    assert [w.vectors_temp_url for w in written] == [""]
    index = shards.finalize(str(tmp_path / "c" / "out"), str(tmp_path / "c" / "tmp"), written, {"streams": SPECS})
    assert "vectors_url" not in next(dataset.shard_rows(str(tmp_path / "c" / "out"), index))
    assert sorted(os.listdir(tmp_path / "c" / "out" / "shards" / "v000001")) == ["shard-000000-0000.tar"]
