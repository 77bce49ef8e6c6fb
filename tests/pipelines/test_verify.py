"""``audiotok verify`` (pipelines/verify.py): a clean dataset passes; each kind of damage is caught and named."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest

from audiotok.pipelines import verify
import dataset_fixtures as fx
from audiotok.transforms import dataset, lm
from audiotok.transforms.failures import Failure


def _dataset(tmp_path, n=6, max_samples=3, **kwargs):
    out = tmp_path / "ds"
    failures = [Failure(uri="/data/corpus/src0/bad.wav", reason="truncated", message="ends early", stage="decode")]
    index = fx.write_dataset(out, fx.synthetic_samples(n, seed=11, **kwargs), max_samples=max_samples,
                             failures=failures)
    lm.write_vocab(str(out), index)
    return out, index


def _key(members, i: int) -> str:
    """The key of the i-th sample of a shard (three members each: json, codec, fbank, units)."""
    return members[4 * i][0].split(".")[0]


def _codes(report: verify.Report) -> set[str]:
    return {p.code for p in report.errors()}


def _rewrite_index(out, index) -> None:
    fx.write_flat_index(out, index)


def _shard(out, index, i=0):
    return out / index["shards"][i]["url"]


def _sync_index_bytes(out, index) -> None:
    """Makes the index agree with the shards' sizes again, so that one damage is tested at a time."""
    for row in index["shards"]:
        row["bytes"] = os.path.getsize(out / row["url"])
    index["totals"]["bytes"] = sum(r["bytes"] for r in index["shards"])
    _rewrite_index(out, index)


def test_a_clean_dataset_passes(tmp_path, capsys):
    out, index = _dataset(tmp_path)
    report = verify.verify_dataset(str(out))
    assert report.problems == [] and report.ok()
    assert (report.shards, report.samples) == (2, 6)
    assert verify.main([str(out)]) == 0
    assert "OK" in capsys.readouterr().out


def test_truncated_shard(tmp_path, capsys):
    out, index = _dataset(tmp_path)
    shard = _shard(out, index, 1)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    report = verify.verify_dataset(str(out))
    assert {verify.TAR_CORRUPT, verify.SIZE_MISMATCH, verify.INDEX_MISMATCH} <= _codes(report)
    assert {p.where for p in report.problems} == {index["shards"][1]["url"], dataset.INDEX_NAME}
    assert verify.main([str(out)]) == 1
    printed = capsys.readouterr().out
    assert "problem(s)" in printed and "tar_corrupt: shards/v000001/shard-000000-0001.tar" in printed


def test_corrupt_header_in_the_middle_of_a_shard(tmp_path):
    out, index = _dataset(tmp_path)
    shard = _shard(out, index, 0)
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        second = tar.getmembers()[1]  # tarfile would otherwise stop quietly here, as at an archive's end
    data[second.offset:second.offset + 100] = b"\xff" * 100
    shard.write_bytes(bytes(data))
    report = verify.verify_dataset(str(out))
    assert verify.TAR_CORRUPT in _codes(report)
    assert any("after byte" in p.message for p in report.problems)


def test_corrupt_array_payload(tmp_path):
    out, index = _dataset(tmp_path, n=3)
    shard = _shard(out, index, 0)
    members = fx.read_members(shard)
    name, data = members[1]  # the first sample's codec.npy
    members[1] = (name, b"\x93NUMPY garbage" + data[14:])
    fx.write_members(shard, members)
    _sync_index_bytes(out, index)
    problems = verify.verify_dataset(str(out)).errors()
    # Its codec tokens no longer count, hence the token mismatches as well.
    assert [(p.code, p.key) for p in problems if p.code != verify.INDEX_MISMATCH] == [
        (verify.BAD_ARRAY, _key(members, 0))]


def test_duplicated_key_across_shards(tmp_path, capsys):
    out, index = _dataset(tmp_path)
    first = fx.read_members(_shard(out, index, 0))
    second = fx.read_members(_shard(out, index, 1))
    dup = first[:4]
    fx.write_members(_shard(out, index, 1), second + dup)
    # The index agrees: the duplicate is counted everywhere, so that only the key is wrong.
    meta = json.loads(dup[0][1])
    counts = dataset.count_tokens({n.split(".")[1]: np.load(io.BytesIO(d)) for n, d in dup[1:]}, index["streams"])
    row, totals = index["shards"][1], index["totals"]
    row["samples"] += 1
    row["live_samples"] += 1
    row["audio_s"] = round(row["audio_s"] + meta["duration_s"], 6)
    row["tokens"] = {k: v + counts[k] for k, v in row["tokens"].items()}
    totals["samples"] += 1
    totals["audio_s"] = round(totals["audio_s"] + meta["duration_s"], 3)
    totals["tokens"] = {k: v + counts[k] for k, v in totals["tokens"].items()}
    _sync_index_bytes(out, index)
    key = _key(first, 0)
    problems = verify.verify_dataset(str(out)).errors()
    assert [(p.code, p.key, p.where) for p in problems] == [
        (verify.DUPLICATE_KEY, key, "shards/v000001/shard-000000-0001.tar")]
    assert "also in shards/v000001/shard-000000-0000.tar" in problems[0].message
    assert verify.main([str(out)]) == 1
    assert (f"duplicate_key: shards/v000001/shard-000000-0001.tar key={key}: also in shards/v000001/shard-000000-0000.tar"
            in capsys.readouterr().out)


def test_duplicated_key_within_a_shard_and_split_samples(tmp_path):
    out, index = _dataset(tmp_path)
    members = fx.read_members(_shard(out, index, 0))
    # s000's members again at the end (a duplicate), and s001's json moved after s002 (split).
    s001_json = members[4]
    shuffled = members[:4] + members[5:] + [s001_json] + members[:4]
    fx.write_members(_shard(out, index, 0), shuffled)
    codes = [p.code for p in verify.verify_dataset(str(out)).errors()]
    assert verify.DUPLICATE_KEY in codes and verify.SPLIT_SAMPLE in codes


@pytest.mark.parametrize("lie", ["samples", "live_samples", "bytes", "audio_s", "tokens", "totals", "extra_row",
                                 "left_out"])
def test_an_index_that_lies(tmp_path, lie):
    out, index = _dataset(tmp_path)
    row, totals = index["shards"][0], index["totals"]
    if lie == "samples":
        row["samples"] += 1
    elif lie == "live_samples":  # a sample too many, everywhere the index counts it
        row["samples"] += 1
        row["live_samples"] += 1
        totals["samples"] += 1
    elif lie == "bytes":
        row["bytes"] += 512
        totals["bytes"] += 512
    elif lie == "audio_s":
        row["audio_s"] += 1.0
    elif lie == "tokens":
        row["tokens"]["units"] += 7
    elif lie == "totals":
        totals["tokens"]["codec"] -= 1
        totals["audio_s"] += 0.5
    elif lie == "extra_row":
        index["shards"].append({**row, "url": "shards/v000001/shard-000000-0009.tar"})
    elif lie == "left_out":  # a shard the index forgets, totals adjusted to match the rows
        index["shards"] = index["shards"][:1]
        totals.update(shards=1, samples=row["samples"], bytes=row["bytes"])
    _rewrite_index(out, index)
    report = verify.verify_dataset(str(out))
    codes = _codes(report)
    expected = {"samples": {verify.INDEX_MISMATCH}, "live_samples": {verify.INDEX_MISMATCH},
                "bytes": {verify.SIZE_MISMATCH}, "audio_s": {verify.INDEX_MISMATCH},
                "tokens": {verify.INDEX_MISMATCH}, "totals": {verify.INDEX_MISMATCH},
                "extra_row": {verify.MISSING_FILE, verify.INDEX_MISMATCH},
                "left_out": {verify.INDEX_MISMATCH}}[lie]
    assert codes == expected, verify.format_report(report)
    if lie == "left_out":
        assert [p.where for p in report.problems if p.code == verify.UNLISTED_SHARD] == [
            "shards/v000001/shard-000000-0001.tar"]
        assert not report.ok(strict=True)


@pytest.mark.parametrize("name,kind", [("/etc/evil.json", "abs"), ("../evil.json", "dotdot"), ("link.json", "sym")])
def test_members_that_fail_the_data_filter(tmp_path, name, kind):
    out, index = _dataset(tmp_path, n=2)
    shard = _shard(out, index, 0)
    members = fx.read_members(shard)
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for n, data in members:
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(name)
        if kind == "sym":
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(b""))
    _sync_index_bytes(out, index)
    problems = verify.verify_dataset(str(out)).errors()
    assert [p.code for p in problems] == [verify.UNSAFE_MEMBER]
    assert "data filter" in problems[0].message


def test_arrays_against_their_declarations_and_specs(tmp_path):
    probs = {"codec": np.r_[np.zeros(1023), 1.0]}  # only code 1023 occurs
    out, index = _dataset(tmp_path, n=3, code_probs=probs)
    shard = _shard(out, index, 0)
    listed = fx.read_members(shard)
    k0, k1, k2 = (_key(listed, i) for i in range(3))
    members = dict(listed)
    codec = np.load(io.BytesIO(members[f"{k0}.codec.npy"]))
    members[f"{k0}.codec.npy"] = dataset.npy_bytes(codec + 1)  # 1024: out of range
    units = np.load(io.BytesIO(members[f"{k1}.units.npy"]))
    members[f"{k1}.units.npy"] = dataset.npy_bytes(units.astype(np.int32))
    meta2 = json.loads(members[f"{k2}.json"])
    del members[f"{k2}.fbank.npy"]
    meta2["streams"]["units"]["shape"] = [3]
    members[f"{k2}.json"] = json.dumps(meta2).encode()
    fx.write_members(shard, list(members.items()))
    _sync_index_bytes(out, index)
    problems = verify.verify_dataset(str(out)).errors()
    got = {(p.code, p.key) for p in problems}
    assert (verify.CODE_OUT_OF_RANGE, k0) in got
    assert (verify.DTYPE_MISMATCH, k1) in got and (verify.SPEC_MISMATCH, k1) in got
    assert (verify.MISSING_MEMBER, k2) in got and (verify.SHAPE_MISMATCH, k2) in got
    assert any("1 code(s) outside [0, 1024)" in p.message for p in problems) is False  # every code is 1024
    assert any("outside [0, 1024) (min 1024, max 1024)" in p.message for p in problems)


def test_failures_and_vocab_against_the_index(tmp_path):
    out, index = _dataset(tmp_path)
    failures = out / index["failures"][0]["url"]
    failures.write_text(failures.read_text() * 2)
    vocab = json.loads((out / lm.VOCAB_NAME).read_text())
    vocab["streams"][0]["offset"] += 1
    (out / lm.VOCAB_NAME).write_text(json.dumps(vocab))
    codes = _codes(verify.verify_dataset(str(out)))
    assert codes == {verify.FAILURES_MISMATCH, verify.VOCAB_MISMATCH}


def test_missing_index(tmp_path, capsys):
    assert verify.main([str(tmp_path)]) == 1
    assert "index_unreadable" in capsys.readouterr().out


def test_the_example_run_verifies():
    out = fx.example_run()
    report = verify.verify_dataset(out)
    assert report.ok(), verify.format_report(report)
    assert report.samples == dataset.read_index(out)["totals"]["samples"] > 0


def test_superseded_samples_do_not_count(tmp_path):
    out, index = _dataset(tmp_path)
    key = _key(fx.read_members(_shard(out, index, 1)), 0)
    index = fx.exclude_source(out, index, key)
    report = verify.verify_dataset(str(out))
    assert report.ok(strict=True), verify.format_report(report)
    assert report.samples == 5
    index["shards"][1]["live_samples"] += 1  # the index forgets one exclusion
    _rewrite_index(out, index)
    assert _codes(verify.verify_dataset(str(out))) == {verify.INDEX_MISMATCH}


def test_a_sample_from_another_tokenizer(tmp_path):
    out, index = _dataset(tmp_path, n=2)
    shard = _shard(out, index, 0)
    members = fx.read_members(shard)
    meta = json.loads(members[0][1])
    meta["streams"]["units"]["fingerprint"] = "0123456789abcdef"
    members[0] = (members[0][0], json.dumps(meta).encode())
    fx.write_members(shard, members)
    _sync_index_bytes(out, index)
    problems = verify.verify_dataset(str(out)).errors()
    assert [(p.code, p.key) for p in problems] == [(verify.FINGERPRINT_MISMATCH, meta["key"])]
    fx.exclude_source(out, json.loads((out / dataset.INDEX_NAME).read_text()), meta["key"])
    assert verify.verify_dataset(str(out)).ok(strict=True)  # superseded samples may be older


def _split_dataset(tmp_path, n=6, max_samples=3):
    out = tmp_path / "ds"
    index = fx.write_dataset(out, fx.synthetic_samples(n, seed=11), max_samples=max_samples, separate_vectors=True)
    lm.write_vocab(str(out), index)
    return out, index


def test_a_dataset_with_a_vector_shard_set_passes_and_its_damage_is_found(tmp_path, capsys):
    out, index = _split_dataset(tmp_path)
    report = verify.verify_dataset(str(out))
    assert report.problems == [] and (report.shards, report.samples) == (2, 6)
    vectors = out / index["shards"][1]["vectors_url"]
    members = fx.read_members(vectors)
    # a sample's vectors moved to the end: out of step with its shard
    fx.write_members(vectors, [*members[1:], members[0]])
    report = verify.verify_dataset(str(out))
    assert {verify.SPLIT_SAMPLE, verify.MISSING_MEMBER} <= _codes(report)
    assert {p.where for p in report.problems if p.code == verify.SPLIT_SAMPLE} == {index["shards"][1]["vectors_url"]}
    # a discrete stream in the vector set; the vector shard missing
    key = members[0][0].split(".")[0]
    fx.write_members(vectors, [members[0], (f"{key}.units.npy", dataset.npy_bytes(np.zeros(3, np.int16))), *members[1:]])
    assert verify.EXTRA_MEMBER in _codes(verify.verify_dataset(str(out)))
    vectors.unlink()
    report = verify.verify_dataset(str(out))
    assert verify.MISSING_FILE in _codes(report)
    assert verify.main([str(out)]) == 1
    assert "missing_file: shards/v000001/vectors-000000-0001.tar" in capsys.readouterr().out


def test_vector_shards_are_listed_not_unlisted(tmp_path):
    out, index = _split_dataset(tmp_path)
    assert verify.verify_dataset(str(out)).ok(strict=True)
    (out / "shards" / "v000001" / "vectors-000000-0009.tar").write_bytes(b"")
    assert {p.code for p in verify.verify_dataset(str(out)).problems} == {verify.UNLISTED_SHARD}
