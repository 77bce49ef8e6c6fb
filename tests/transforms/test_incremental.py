"""Scheduled refresh: incremental, exactly once, reproducible."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import webdataset as wds

from audio_fixtures import synth_speechlike, write_audio
from audiotok.pipelines import tokenize as job
from audiotok.runners import profiles
from audiotok.transforms import dataset, incremental, shards, storage
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.tokenize import TokenizeConfig


def make_corpus(root: Path, n: int, seed: int = 0) -> None:
    for i in range(n):
        write_audio(root / f"f{i:02d}.flac", synth_speechlike(1.0 + 0.3 * i, 16000, seed=seed + i), 16000, "flac")


def config(inp: Path, out: Path, specs: str = "logmel[n_mels=16]", **kw) -> job.JobConfig:
    return job.JobConfig(output=str(out), match=MatchConfig(patterns=(f"{inp}/*",)),
                         segment=SegmentConfig(segment_s=1.0, min_segment_s=0.2),
                         tokenize=TokenizeConfig(specs=specs), **kw)


def run(cfg: job.JobConfig):
    return job.run(cfg, profiles.pipeline_options("direct", []))


def live_keys(out: Path) -> list[str]:
    index = json.loads((out / "index.json").read_text())
    keys = []
    for row in index["shards"]:
        for sample in wds.WebDataset(str(out / row["url"]), shardshuffle=False):
            if dataset.is_live(sample["__key__"], row):
                keys.append(sample["__key__"])
    return keys


def sha_tree(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_refresh_processes_only_new_and_changed(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 5)
    index1, counters, _ = run(config(inp, out))
    assert counters["files_ok"] == 5 and index1["dataset_version"] == 1
    keys1 = live_keys(out)
    deleted_keys = {k for k in keys1 if k.startswith("f01-")}
    changed_keys = {k for k in keys1 if k.startswith("f02-")}
    assert deleted_keys and changed_keys

    (inp / "f01.flac").unlink()
    write_audio(inp / "f02.flac", synth_speechlike(2.5, 16000, seed=99), 16000, "flac")  # changed (longer)
    write_audio(inp / "f07.flac", synth_speechlike(1.2, 16000, seed=7), 16000, "flac")  # new
    index2, counters, _ = run(config(inp, out, incremental=True))

    assert counters["files_ok"] == 2  # exactly the new and the changed file were decoded
    assert counters.get("inputs_unchanged") == 3 and counters.get("inputs_new") == 1
    assert counters.get("inputs_changed") == 1
    assert index2["dataset_version"] == 2
    keys2 = live_keys(out)
    assert len(keys2) == len(set(keys2))  # every live key once
    assert not deleted_keys & set(keys2)
    assert sum(k.startswith("f02-") for k in keys2) == 3  # 2.5 s -> 1 + 1 + 0.5
    assert any(k.startswith("f07-") for k in keys2)
    assert index2["totals"]["samples"] == len(keys2)
    state = json.loads((out / index2["state"]).read_text())
    assert "f01.flac" in "".join(state["deleted"]) and len(state["inputs"]) == 5
    # Version 1's shards are untouched; readers of the old index still read them.
    old = json.loads(json.dumps(index1))
    for row in old["shards"]:
        assert (out / row["url"]).exists()
    assert all(r["url"].startswith("shards/v000001/") or r["url"].startswith("shards/v000002/")
               for r in index2["shards"])


def test_rerun_with_nothing_changed_writes_nothing(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 3)
    run(config(inp, out))
    before = sha_tree(out)
    index, counters, _ = run(config(inp, out, incremental=True))
    assert counters.get("files_ok", 0) == 0 and counters.get("inputs_unchanged") == 3
    assert index["dataset_version"] == 1
    assert sha_tree(out) == before


def test_settings_change_retokenizes_everything(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 3)
    run(config(inp, out))
    index, counters, _ = run(config(inp, out, specs="logmel[n_mels=20]", incremental=True))
    assert counters["files_ok"] == 3 and counters.get("inputs_settings") == 3
    assert all(r["url"].startswith("shards/v000002/") for r in index["shards"])  # v1 is all stale
    assert len(live_keys(out)) == index["totals"]["samples"]


def test_two_fresh_runs_are_byte_identical(tmp_path):
    inp = tmp_path / "in"
    make_corpus(inp, 6)
    run(config(inp, tmp_path / "a", shards=shards.ShardConfig(max_samples=4, files_per_bucket=2)))
    run(config(inp, tmp_path / "b", shards=shards.ShardConfig(max_samples=4, files_per_bucket=2)))
    a, b = sha_tree(tmp_path / "a"), sha_tree(tmp_path / "b")
    assert a == b and any(name.endswith(".tar") for name in a)


def test_writer_failing_first_attempt_then_rerun(tmp_path, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 4)
    real_add = shards.ShardWriter.add
    calls = {"n": 0}

    def failing_add(self, sample):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker lost")
        return real_add(self, sample)

    monkeypatch.setattr(shards.ShardWriter, "add", failing_add)
    with pytest.raises(Exception, match="worker lost"):
        run(config(inp, out, shards=shards.ShardConfig(max_samples=1)))
    assert not (out / "index.json").exists()
    monkeypatch.setattr(shards.ShardWriter, "add", real_add)
    index, _, _ = run(config(inp, out, shards=shards.ShardConfig(max_samples=1)))
    keys = live_keys(out)
    assert len(keys) == len(set(keys)) == index["totals"]["samples"] == 1 + 2 + 2 + 2
    assert not (out / "_tmp").exists()
    on_disk = {str(p.relative_to(out)) for p in (out / "shards").rglob("*.tar")}
    assert on_disk == {r["url"] for r in index["shards"]}


def test_crash_before_publishing_then_rerun(tmp_path, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 3)
    run(config(inp, out))
    write_audio(inp / "f09.flac", synth_speechlike(1.5, 16000, seed=9), 16000, "flac")
    real_write = storage.write_atomic

    def crash_on_index(url, data, **kw):
        if url.endswith("index.json"):
            raise OSError("killed")
        return real_write(url, data, **kw)

    monkeypatch.setattr(storage, "write_atomic", crash_on_index)
    with pytest.raises(Exception, match="killed"):
        run(config(inp, out, incremental=True))
    assert (out / "shards" / "v000002").exists()  # renamed, but never published
    assert json.loads((out / "index.json").read_text())["dataset_version"] == 1
    monkeypatch.setattr(storage, "write_atomic", real_write)
    index, counters, _ = run(config(inp, out, incremental=True))
    assert counters["files_ok"] == 1 and index["dataset_version"] == 2
    keys = live_keys(out)
    assert len(keys) == len(set(keys)) == index["totals"]["samples"]
    on_disk = {str(p.relative_to(out)) for p in (out / "shards").rglob("*.tar")}
    assert on_disk == {r["url"] for r in index["shards"]}


def test_existing_dataset_needs_a_flag(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 1)
    run(config(inp, out))
    with pytest.raises(SystemExit, match="--incremental"):
        run(config(inp, out))


def test_next_state_and_live_rows_pure():
    from audiotok.transforms.records import AudioRef

    prev, _ = incremental.next_state(
        incremental.empty_state(), 1, "fp", [AudioRef("a", 1, "m1"), AudioRef("b", 1, "m1")], ["a", "b"],
        {"s/v1/0.tar": {"aaaa": {"uri": "a", "samples": 2, "audio_s": 2.0, "tokens": {"x": 20}},
                        "bbbb": {"uri": "b", "samples": 1, "audio_s": 1.0, "tokens": {"x": 10}}}}, {})
    rows_v1 = [{"url": "s/v1/0.tar", "samples": 3, "bytes": 10, "audio_s": 3.0, "tokens": {"x": 30}}]
    state, stale = incremental.next_state(prev, 2, "fp", [AudioRef("a", 1, "m1")], [], {}, {})
    assert list(state["inputs"]) == ["a"] and list(state["deleted"]) == ["b"]
    rows = incremental.live_shards(rows_v1, [], stale)
    assert rows[0]["excluded_sources"] == ["bbbb"] and rows[0]["live_samples"] == 2
    assert dataset.is_live("x-aaaa-000", rows[0]) and not dataset.is_live("x-bbbb-000", rows[0])
    assert incremental.live_totals(state, rows)["samples"] == 2
    assert incremental.needs_processing(AudioRef("a", 2, "m1"), prev["inputs"]["a"], "fp") == "changed"
    assert incremental.needs_processing(AudioRef("a", 1, "m1"), prev["inputs"]["a"], "fp2") == "settings"
    assert incremental.needs_processing(AudioRef("a", 1, "m1"), prev["inputs"]["a"], "fp") is None


def test_next_state_is_the_same_whatever_order_the_references_arrive_in():
    """A file matched by a pattern and named by a manifest line is listed twice under one URI;
    runners deliver the listing in any order (Flink did not follow the in-process one)."""
    from audiotok.transforms.records import AudioRef

    listed = [AudioRef("a", 10, "m1"), AudioRef("a", None, None, {"id": "x"}), AudioRef("b", 5, "m2")]
    states = [incremental.next_state(incremental.empty_state(), 1, "fp", order, ["a", "b"], {}, {})[0]
              for order in (listed, listed[::-1], [listed[1], listed[2], listed[0]])]
    assert states[0] == states[1] == states[2]
    assert states[0]["inputs"]["a"]["size"] == 10


def test_compact_rewrites_live_samples_only(tmp_path):
    from audiotok.pipelines import compact

    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 4)
    run(config(inp, out, shards=shards.ShardConfig(max_samples=2)))
    (inp / "f00.flac").unlink()
    write_audio(inp / "f03.flac", synth_speechlike(1.1, 16000, seed=33), 16000, "flac")
    run(config(inp, out, incremental=True, shards=shards.ShardConfig(max_samples=2)))
    before = sorted(live_keys(out))
    before_index = json.loads((out / "index.json").read_text())
    assert any(r.get("excluded_sources") for r in before_index["shards"])
    index = compact.compact(str(out), shards.ShardConfig(max_samples=100))
    assert sorted(live_keys(out)) == before
    assert index["totals"]["shards"] == 1 and not index["shards"][0].get("excluded_sources")
    assert index["totals"]["samples"] == len(before) == index["shards"][0]["samples"]
    # A refresh after compaction still knows where every input's samples are.
    (inp / "f01.flac").unlink()
    run(config(inp, out, incremental=True, shards=shards.ShardConfig(max_samples=2)))
    assert sorted(live_keys(out)) == [k for k in before if not k.startswith("f01-")]
