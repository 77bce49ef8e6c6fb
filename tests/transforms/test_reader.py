"""The reader (transforms/reader.py): samples back as written, splits across nodes and workers, packed rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dataset_fixtures as fx
from audiotok.pipelines import inspect as inspect_cli
from audiotok.transforms import dataset, lm, reader

torch = pytest.importorskip("torch")


def _dataset(tmp_path, n=7, max_samples=2, seed=3):
    samples = fx.synthetic_samples(n, seed=seed)
    out = tmp_path / "ds"
    index = fx.write_dataset(out, samples, max_samples=max_samples)
    return str(out), samples, index


def test_read_samples_gives_back_what_was_written(tmp_path):
    out, samples, index = _dataset(tmp_path)
    assert index["totals"]["shards"] == 4
    got = list(reader.read_samples(out))
    assert [s.key for s in got] == sorted(s.key for s in samples)  # shards follow key order
    by_key = {s.key: s for s in samples}
    for s in got:
        want = by_key[s.key]
        assert s.meta == json.loads(json.dumps(want.meta))
        assert s.url.endswith(".tar") and s.url.startswith(out)
        assert set(s.streams) == {"codec", "units", "fbank"}
        for name, array in want.streams.items():
            assert s.streams[name].dtype == array.dtype
            np.testing.assert_array_equal(s.streams[name], array)
    assert s.streams["codec"].shape[0] == 4


def test_stream_selection_and_fsspec_urls(tmp_path):
    out, samples, _ = _dataset(tmp_path)
    got = list(reader.read_samples("file://" + out, streams=["units"]))
    assert len(got) == len(samples)
    assert all(set(s.streams) == {"units"} for s in got)
    with pytest.raises(reader.ShardFormatError, match="no stream 'nope'"):
        list(reader.read_samples(out, streams=["nope"]))
    with pytest.raises(ValueError, match="refusing"):
        reader.sample_dataset("pipe:cat x")


def test_declared_shape_is_enforced(tmp_path):
    out, _, index = _dataset(tmp_path, n=1)
    shard = tmp_path / "ds" / next(dataset.shard_rows(str(tmp_path / "ds"), index))["url"]
    members = fx.read_members(shard)
    meta = json.loads(members[0][1])
    meta["streams"]["units"]["shape"] = [1]
    members[0] = (members[0][0], json.dumps(meta).encode())
    fx.write_members(shard, members)
    expected = f"stream 'units' is int16.*declares int16\\[1\\].*key {meta['key']}"
    with pytest.raises(reader.ShardFormatError, match=expected):
        list(reader.read_samples(out))


def test_dataloader_workers_read_each_sample_once(tmp_path):
    out, samples, _ = _dataset(tmp_path)
    ds = reader.sample_dataset(out, streams=["units"])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s.key for s in loader]
    assert sorted(keys) == sorted(s.key for s in samples)


def test_nodes_get_disjoint_shards_that_cover_the_dataset(tmp_path, monkeypatch):
    out, samples, _ = _dataset(tmp_path)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([s.key for s in reader.sample_dataset(out, streams=["units"], shuffle_shards=True, seed=5)])
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(s.key for s in samples)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    a = [s.key for s in reader.sample_dataset(out, streams=["units"], shuffle_shards=True, seed=5)]
    b = [s.key for s in reader.sample_dataset(out, streams=["units"], shuffle_shards=True, seed=5)]
    assert a == b and sorted(a) == sorted(s.key for s in samples)


def test_lm_rows_unpack_to_the_samples_codes(tmp_path):
    out, samples, index = _dataset(tmp_path)
    lm.write_vocab(out, index)
    config = lm.SequenceConfig(("units", "codec"), pattern=lm.DELAY)
    ds = reader.lm_dataset(out, config, context_len=256)
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batches = list(loader)
    assert batches[0]["tokens"].shape == (3, 256) and batches[0]["tokens"].dtype == torch.int64
    rows = [lm.PackedRow(b["tokens"][i].numpy(), b["document_ids"][i].numpy(), b["positions"][i].numpy())
            for b in batches for i in range(b["tokens"].shape[0])]
    docs = lm.unpack_rows(rows)
    vocab = lm.read_vocab(out)
    by_key = {s.key: s for s in samples}
    assert len(docs) == len(samples)
    for key, doc in zip(sorted(by_key), docs):
        streams = lm.document_to_streams(doc, vocab, config)
        np.testing.assert_array_equal(streams["codec"], by_key[key].streams["codec"])
        np.testing.assert_array_equal(streams["units"], by_key[key].streams["units"])
    b = batches[0]
    keep = b["targets"][0] != -100
    assert torch.equal(b["targets"][0][:-1][keep[:-1]], b["tokens"][0][1:][keep[:-1]])
    with pytest.raises(ValueError, match="fbank"):
        reader.lm_dataset(out, lm.SequenceConfig(("fbank",)), context_len=16)


def test_superseded_samples_are_skipped(tmp_path):
    out, samples, index = _dataset(tmp_path)
    gone = samples[2].key
    index = fx.exclude_source(out, index, gone)
    keys = [s.key for s in reader.read_samples(out)]
    assert gone not in keys and len(keys) == len(samples) - 1
    assert gone not in [s.key for s in reader.sample_dataset(out, streams=["units"])]


def test_inspect_prints_the_summary_and_a_decoded_sample(tmp_path, capsys):
    out, samples, index = _dataset(tmp_path)
    lm.write_vocab(out, index)
    assert inspect_cli.main([out, "--key", samples[1].key, "--tokens", "5", "--pattern", "delay"]) == 0
    text = capsys.readouterr().out
    codes = samples[1].streams["codec"]
    assert f"{len(samples)} samples" in text and "codec: codes int16 [4, T] at 75 Hz, codebook_size 1024" in text
    assert f"sample {samples[1].key}" in text
    assert "codebook 3: " + " ".join(str(v) for v in codes[3, :5]) + " ..." in text
    assert "<|bos|> <|stream:codec|> codec:k0:" in text and "<|empty|>" in text
    assert inspect_cli.main([out, "--key", "nope"]) == 1


def _tar_bytes(members, fmt):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            if data is None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Counting:
    """A file that counts the bytes read through it; optionally not seekable."""

    def __init__(self, data: bytes, seekable: bool = True):
        import io

        self._f = io.BytesIO(data)
        self._seekable = seekable
        self.bytes_read = 0

    def seekable(self):
        return self._seekable

    def read(self, n=-1):
        data = self._f.read(n)
        self.bytes_read += len(data)
        return data

    def readinto(self, buf):
        n = self._f.readinto(buf)
        self.bytes_read += n
        return n

    def seek(self, offset, whence=0):
        assert self._seekable
        return self._f.seek(offset, whence)


@pytest.mark.parametrize("fmt", ["USTAR_FORMAT", "PAX_FORMAT", "GNU_FORMAT"])
@pytest.mark.parametrize("seekable", [True, False])
def test_tar_members_reads_what_tarfile_writes_and_skips_what_it_is_told(fmt, seekable):
    import tarfile

    long_dir = "d" * 120 + "/é"  # ustar needs its prefix field, pax and GNU their long-name records
    members = [("a.json", b"{}"), ("a.big.npy", bytes(5000)), ("sub", None), (f"{long_dir}/b.json", b"[1]"),
               ("b.big.npy", b"x" * 513), ("empty.txt", b"")]
    data = _tar_bytes(members, getattr(tarfile, fmt))
    f = _Counting(data, seekable)
    got = list(reader.tar_members(f, "mem.tar"))
    assert [(n, bytes(d)) for n, d in got] == [(n, d) for n, d in members if d is not None]
    f = _Counting(data, seekable)
    got = list(reader.tar_members(f, "mem.tar", keep=lambda name: not name.endswith(".npy")))
    assert [(n, None if d is None else bytes(d)) for n, d in got] == [
        (n, None if n.endswith(".npy") else d) for n, d in members if d is not None]
    if seekable:  # skipped members are seeked over, not read
        assert f.bytes_read < len(data) - 5000


def test_tar_members_refuses_damaged_archives():
    import tarfile

    data = bytearray(_tar_bytes([("a.json", b"{}" * 400)], tarfile.USTAR_FORMAT))
    with pytest.raises(reader.ShardFormatError, match="cut short inside member a.json.*shard cut.tar"):
        list(reader.tar_members(_Counting(bytes(data[:700])), "cut.tar"))
    data[10] ^= 1
    with pytest.raises(reader.ShardFormatError, match="checksum.*shard bad.tar"):
        list(reader.tar_members(_Counting(bytes(data)), "bad.tar"))
    with pytest.raises(reader.ShardFormatError, match="not a tar archive"):
        list(reader.tar_members(_Counting(b"PK\x03\x04" + bytes(600)), "zip.tar"))


@pytest.mark.parametrize("array", [
    np.arange(7, dtype=np.int16), np.zeros((4, 0), np.int16), np.ones((3, 5), np.float16), np.array(3, np.int64),
    np.arange(6, dtype=">i4").reshape(2, 3), np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
    np.array([True, False])])
def test_npy_array_equals_np_load_and_is_writable(array):
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)  # Fortran order and 0-d headers included
    for data in (bytearray(buf.getvalue()), buf.getvalue()):
        got = reader.npy_array(data)
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
    got = reader.npy_array(bytearray(buf.getvalue()))
    got[...] = 0  # a trainer may write into what it reads


def test_units_only_reading_skips_the_other_members(tmp_path, monkeypatch):
    out, samples, index = _dataset(tmp_path, n=6, max_samples=6)
    shard = tmp_path / "ds" / index["shards"][0]["url"]
    read = []
    real_open = reader.storage.open_input

    import contextlib

    @contextlib.contextmanager
    def counting_open(url):
        with real_open(url) as f:
            counted = _Counting(f.read())
            yield counted
            if str(url).endswith(".tar"):  # not the index and its rows parts
                read.append(counted.bytes_read)

    monkeypatch.setattr(reader.storage, "open_input", counting_open)
    lm.write_vocab(out, index)
    rows = list(reader.lm_dataset(out, lm.SequenceConfig(("units",)), context_len=64, split=False))
    assert rows
    wanted = sum(len(d) for name, d in fx.read_members(shard) if name.endswith(".units.npy"))
    # the units' bytes and one header block per member; no KEY.json, codec or fbank bytes
    assert wanted <= read[0] <= wanted + 512 * 4 * len(samples) + 1024
    got = [s.key for s in reader.sample_dataset(out, streams=["units"], split=False)]
    assert got == sorted(s.key for s in samples)


def test_a_sample_without_a_wanted_member_is_an_error_not_a_gap(tmp_path):
    out, samples, index = _dataset(tmp_path, n=3, max_samples=3)
    shard = tmp_path / "ds" / index["shards"][0]["url"]
    original = fx.read_members(shard)
    fx.write_members(shard, [(n, d) for n, d in original if n != f"{samples[1].key}.units.npy"])
    lm.write_vocab(out, index)
    with pytest.raises(reader.ShardFormatError, match=f"no stream 'units'; it has: codec, fbank.*key {samples[1].key}"):
        list(reader.lm_dataset(out, lm.SequenceConfig(("units",)), context_len=64, split=False))
    assert original[-1][0].startswith(samples[2].key)
    fx.write_members(shard, original + [(f"{samples[2].key}.json", b"{}")])
    with pytest.raises(reader.ShardFormatError, match="appears twice"):
        list(reader.read_samples(out))
