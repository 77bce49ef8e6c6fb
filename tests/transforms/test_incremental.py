"""Scheduled refresh: incremental, exactly once, reproducible."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import webdataset as wds

from audio_fixtures import synth_speechlike, write_audio
from audiotok.pipelines import tokenize as job
from audiotok.pipelines import verify
from audiotok.runners import profiles
from audiotok.transforms import dataset, incremental, shards, storage
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.tokenize import TokenizeConfig, stream_descriptions


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
    keys = []
    for row in dataset.shard_rows(str(out)):
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
    rows_v1 = list(dataset.shard_rows(str(out), index1))
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
    entries = dict(dataset.state_entries(str(out), index2))
    assert [uri for uri, e in entries.items() if "deleted" in e] == [str(inp / "f01.flac")]
    assert sum("deleted" not in e for e in entries.values()) == 5 == index2["totals"]["inputs"]
    # Version 1's shards are untouched; readers of the old index still read them.
    for row in rows_v1:
        assert (out / row["url"]).exists()
    assert all(r["url"].startswith("shards/v000001/") or r["url"].startswith("shards/v000002/")
               for r in dataset.shard_rows(str(out), index2))


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
    assert all(r["url"].startswith("shards/v000002/") for r in dataset.shard_rows(str(out), index))  # v1 is all stale
    assert len(live_keys(out)) == index["totals"]["samples"]


def test_two_fresh_runs_are_byte_identical(tmp_path, monkeypatch):
    """Whatever the runner's share of the work looks like: the second run spreads one input per
    element, deals all shard groups to one writer and writes what the shards hold a line per file."""
    inp = tmp_path / "in"
    make_corpus(inp, 6)
    run(config(inp, tmp_path / "a", shards=shards.ShardConfig(max_samples=4, files_per_bucket=2)))
    monkeypatch.setattr(incremental, "SELECT_BATCH_INPUTS", 1)
    monkeypatch.setattr(shards, "SHARD_WRITERS", 1)
    monkeypatch.setattr(shards, "PRODUCED_LINES_PER_FILE", 1)
    run(config(inp, tmp_path / "b", shards=shards.ShardConfig(max_samples=4, files_per_bucket=2)))
    a, b = sha_tree(tmp_path / "a"), sha_tree(tmp_path / "b")
    assert a == b and any(name.endswith(".tar") for name in a)


def test_writer_failing_first_attempt_then_rerun(tmp_path, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 4)
    real_add = shards.ShardWriter.add_encoded
    calls = {"n": 0}

    def failing_add(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker lost")
        return real_add(self, *args)

    monkeypatch.setattr(shards.ShardWriter, "add_encoded", failing_add)
    with pytest.raises(Exception, match="worker lost"):
        run(config(inp, out, shards=shards.ShardConfig(max_samples=1)))
    assert not (out / "index.json").exists()
    monkeypatch.setattr(shards.ShardWriter, "add_encoded", real_add)
    index, _, _ = run(config(inp, out, shards=shards.ShardConfig(max_samples=1)))
    keys = live_keys(out)
    assert len(keys) == len(set(keys)) == index["totals"]["samples"] == 1 + 2 + 2 + 2
    assert not (out / "_tmp").exists()
    on_disk = {str(p.relative_to(out)) for p in (out / "shards").rglob("*.tar")}
    assert on_disk == {r["url"] for r in dataset.shard_rows(str(out), index)}


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
    assert on_disk == {r["url"] for r in dataset.shard_rows(str(out), index)}


def test_existing_dataset_needs_a_flag(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 1)
    run(config(inp, out))
    with pytest.raises(SystemExit, match="--incremental"):
        run(config(inp, out))


def test_join_finish_and_live_rows_pure():
    from audiotok.transforms.records import AudioRef

    def select(ref, entry):
        return incremental.needs_processing(ref, entry, "fp")

    def lines(refs):
        return [incremental.ref_line(r) for r in sorted(refs, key=lambda r: dataset.order_key(r.uri))]

    unmatched = {"uri": "/c/missing/*", "reason": "read_error", "message": "the pattern matches no file",
                 "stage": "match"}
    first = incremental.join_part(lines([AudioRef("/c/a", 1, "m1"), AudioRef("/c/b", 1, "m1")]), [], select, 1,
                                  "fp", 0, 1, None, [unmatched])
    assert [r.uri for r in sorted(first.selected, key=lambda r: r.uri)] == ["/c/a", "/c/b"] and first.changed
    assert first.publish == [unmatched]  # new: published
    produced = incremental.produced_by_uri([("s/v1/0.tar", "aaaa", {"uri": "/c/a", "samples": 2, "audio_s": 2.0,
                                                                     "tokens": {"x": 20}}),
                                            ("s/v1/0.tar", "bbbb", {"uri": "/c/b", "samples": 1, "audio_s": 1.0,
                                                                     "tokens": {"x": 10}})])
    state1, summary1, stale1 = incremental.finish_part(first.draft, produced, {"/c/b": [{"reason": "empty"}]}, 1)
    assert summary1["inputs"] == 2 and summary1["samples"] == 3 and stale1 == []
    assert summary1["failures_by_reason"] == {"empty": 1, "read_error": 1}  # b's, and the pattern's (no input)
    entries = {json.loads(line)["uri"]: json.loads(line) for line in state1}
    assert entries["/c/b"]["failures"] == 1 and entries["/c/b"]["reasons"] == {"empty": 1}
    assert "reasons" not in entries["/c/a"] and entries["/c/missing/*"]["unlisted"]["run"] == 1

    # b is deleted, a unchanged, c new and listed twice; the pattern still matches nothing.
    second = incremental.join_part(lines([AudioRef("/c/a", 1, "m1"), AudioRef("/c/c", 5, "m"),
                                          AudioRef("/c/./c", 5, "m")]), state1, select, 2, "fp", 0, 1, None,
                                   [unmatched])
    assert [r.uri for r in second.selected] == ["/c/c"] and second.publish == []  # the same dead letter: carried
    assert second.counters == {"inputs_unchanged": 1, "inputs_new": 1, "inputs_deleted": 1, "inputs_duplicate": 1}
    state2, summary2, stale2 = incremental.finish_part(second.draft, {}, {}, 2)
    assert stale2 == [("s/v1/0.tar", ("bbbb",), 1)]
    assert summary2["inputs"] == 2 and summary2["deleted"] == 1 and summary2["samples"] == 2
    assert summary2["failures_by_reason"] == {"read_error": 1}  # b's dead letter left with b
    rows_v1 = [{"url": "s/v1/0.tar", "samples": 3, "bytes": 10, "audio_s": 3.0, "tokens": {"x": 30}}]
    rows = incremental.live_shards(rows_v1, [], [{"shards": {s: n}, "sources": list(src)} for s, src, n in stale2])
    assert rows[0]["excluded_sources"] == ["bbbb"] and rows[0]["live_samples"] == 2
    assert dataset.is_live("x-aaaa-000", rows[0]) and not dataset.is_live("x-bbbb-000", rows[0])

    # Nothing changed: nothing selected, nothing published, the part is not rewritten.
    third = incremental.join_part(lines([AudioRef("/c/a", 1, "m1"), AudioRef("/c/c", 5, "m")]), state2, select, 3,
                                  "fp", 0, 1, incremental.Previous(2, 2, 2, 1, ("state/v000002/state-00000.jsonl",)),
                                  [unmatched])
    assert not third.changed and not third.selected and third.reuse == "state/v000002/state-00000.jsonl"

    # a changed, but its storage was unavailable: its previous entry stays, marked pending; the
    # samples it gave this run are not live.
    fourth = incremental.join_part(lines([AudioRef("/c/a", 2, "m2"), AudioRef("/c/c", 5, "m")]), state2, select, 4,
                                   "fp", 0, 1, None)
    made = incremental.produced_by_uri([("s/v4/0.tar", "aaaa", {"uri": "/c/a", "samples": 1, "audio_s": 1.0,
                                                                 "tokens": {"x": 10}})])
    state4, summary4, stale4 = incremental.finish_part(
        fourth.draft, made, {"/c/a": [{"reason": "read_error", "transient": True}]}, 4)
    a4 = json.loads(next(line for line in state4 if json.loads(line)["uri"] == "/c/a"))
    assert a4["size"] == 1 and a4["samples"] == 2 and a4["pending"] == {"run": 4, "reasons": {"read_error": 1}}
    assert stale4 == [("s/v4/0.tar", ("aaaa",), 1)] and summary4["failures_by_reason"] == {"read_error": 1}
    assert dataset.failure_is_live(4, a4, 4) and not dataset.failure_is_live(1, a4, 4)
    a = json.loads(next(line for line in state2 if json.loads(line)["uri"] == "/c/a"))
    assert incremental.needs_processing(AudioRef("/c/a", 2, "m1"), a, "fp") == "changed"
    assert incremental.needs_processing(AudioRef("/c/a", 1, "m1"), a, "fp2") == "settings"
    assert incremental.needs_processing(AudioRef("/c/a", 1, "m1"), a, "fp") is None


def test_parts_follow_the_corpus_but_a_refresh_keeps_them():
    assert incremental.choose_parts(0) == incremental.choose_parts(9) == 1
    assert incremental.choose_parts(10 ** 6) == 32 and incremental.choose_parts(10 ** 7) == 256
    assert incremental.choose_parts(10 ** 6, previous_parts=16) == 16  # near enough: no re-partitioning
    assert incremental.choose_parts(10 ** 7, previous_parts=1) == 256


def test_runs_split_into_parts_by_slot(tmp_path):
    from audiotok.transforms.records import AudioRef

    refs = [AudioRef(f"/c/{i:05d}.flac", i, f"m{i}") for i in range(500)]
    run = incremental.write_run(str(tmp_path / "run.jsonl"), "listed", [(r.uri, incremental.ref_line(r)) for r in refs])
    assert run.count == 500 and run.size == (tmp_path / "run.jsonl").stat().st_size
    for parts in (1, 3, 8):
        seen = []
        for part, start, end in run.ranges(parts):
            got = [incremental.ref_from_line(line) for line in incremental.read_lines(run.url, start, end)]
            assert {dataset.part_of(dataset.slot_of(r.uri), parts) for r in got} == {part}
            assert got == sorted(got, key=lambda r: dataset.order_key(r.uri))
            seen += got
        assert sorted(seen, key=lambda r: r.uri) == refs


def test_selected_inputs_travel_as_ranges_of_a_file(tmp_path, monkeypatch):
    """The runner spreads ranges of a file of the selected inputs, never the inputs themselves:
    batches of SELECT_BATCH_INPUTS, or fewer where their audio reaches SELECT_BATCH_BYTES."""
    from audiotok.transforms.records import AudioRef

    monkeypatch.setattr(incremental, "SELECT_BATCH_BYTES", 1000)
    refs = [AudioRef(f"/c/{i:03d}.flac", 950 if i == 40 else 10, f"m{i}", {"id": f"x{i}"} if i % 7 else {})
            for i in range(75)]
    data, batches = incremental.batch_lines(refs)
    url = str(tmp_path / "selected.jsonl")
    storage.write_bytes(url, data)
    got = [incremental.read_batch((url, start, end)) for start, end in batches]
    assert [len(b) for b in got] == [32, 9, 32, 2]  # the 41st input takes the audio past 1000 bytes
    assert [r for b in got for r in b] == refs
    assert batches[0][0] == 0 and batches[-1][1] == len(data)
    assert incremental.batch_lines([]) == (b"", [])


def test_the_join_reads_the_same_input_whatever_order_the_runs_arrive_in():
    """A file matched by a pattern and named by a manifest line is listed twice (under two URIs
    naming one file); runners deliver the listers' runs in any order (Flink did not follow the
    in-process one): the manifest's entry is read, whatever the order."""
    from audiotok.transforms.records import AudioRef

    pattern = [incremental.ref_line(AudioRef("/c/a.flac", 10, "m1"), (1, 0, 0, 0)),
               incremental.ref_line(AudioRef("/c/b.flac", 5, "m2"), (1, 0, 0, 0))]
    manifest = [incremental.ref_line(AudioRef("/c/./a.flac", None, None, {"id": "x"}), (0, 0, 0, 1))]
    runs = [sorted(lines, key=lambda line: dataset.order_key(incremental.uri_of_line(line)))
            for lines in (pattern, manifest)]
    chosen = []
    for order in (runs, runs[::-1]):
        decisions = list(incremental.merge_inputs(incremental.merge_keyed(*order), [],
                                                  lambda ref, entry: "new"))
        chosen.append([(d.ref.uri, dict(d.ref.meta), d.duplicates) for d in decisions])
    assert chosen[0] == chosen[1]
    assert sorted(chosen[0]) == [("/c/./a.flac", {"id": "x"}, 1), ("/c/b.flac", {}, 0)]


def test_compact_rewrites_live_samples_only(tmp_path):
    from audiotok.pipelines import compact

    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 4)
    run(config(inp, out, shards=shards.ShardConfig(max_samples=2)))
    (inp / "f00.flac").unlink()
    write_audio(inp / "f03.flac", synth_speechlike(1.1, 16000, seed=33), 16000, "flac")
    run(config(inp, out, incremental=True, shards=shards.ShardConfig(max_samples=2)))
    before = sorted(live_keys(out))
    assert any(r.get("excluded_sources") for r in dataset.shard_rows(str(out)))
    index = compact.compact(str(out), shards.ShardConfig(max_samples=100))
    assert sorted(live_keys(out)) == before
    [row] = dataset.shard_rows(str(out), index)
    assert index["totals"]["shards"] == 1 and not row.get("excluded_sources")
    assert index["totals"]["samples"] == len(before) == row["samples"]
    # A refresh after compaction still knows where every input's samples are.
    (inp / "f01.flac").unlink()
    run(config(inp, out, incremental=True, shards=shards.ShardConfig(max_samples=2)))
    assert sorted(live_keys(out)) == [k for k in before if not k.startswith("f01-")]


V1_DATASET = Path(__file__).resolve().parents[1] / "data" / "v1_dataset"
V1_STREAM_FINGERPRINT = b"9ed2546012a3614b"  # the logmel[n_mels=8] stream's when it was written


def v1_copy(tmp_path: Path) -> tuple[Path, Path, job.JobConfig]:
    """tests/data/v1_dataset (index version 1) copied under ``tmp_path``, with its inputs; the
    job config it was written with."""
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(V1_DATASET / "in", inp)
    shutil.copytree(V1_DATASET / "out", out)
    cfg = config(inp, out, specs="logmel[n_mels=8]", shards=shards.ShardConfig(max_samples=2), incremental=True)
    fingerprint = incremental.settings_fingerprint(job.settings(cfg))
    # The stream's fingerprint in the samples and the index: the running version's (same length).
    stream = stream_descriptions(cfg.tokenize.tokenizers())["logmel"]["fingerprint"].encode()
    for path in [out / "index.json", *(out / "shards").rglob("*.tar")]:
        path.write_bytes(path.read_bytes().replace(V1_STREAM_FINGERPRINT, stream))
    for path in [*(out / "state").glob("*.json"), *(out / "failures").rglob("*.jsonl")]:
        text = path.read_text().replace("@ROOT@", str(tmp_path)).replace("@FINGERPRINT@", fingerprint)
        if path.suffix == ".json":
            state = json.loads(text)
            for uri, entry in state["inputs"].items():
                if entry["version"] == "@MTIME@" and os.path.exists(uri):
                    entry["version"] = storage.version_marker(storage.filesystem(uri)[0].info(uri))
            text = json.dumps(state, indent=1, sort_keys=True)
        path.write_text(text)
    return inp, out, cfg


def test_a_dataset_of_the_first_format_refreshes_into_parts(tmp_path):
    inp, out, cfg = v1_copy(tmp_path)
    old = dataset.read_index(str(out))
    assert old["version"] == 1 and "shards" in old and old["state"] == "state/state-v000002.json"
    old_keys = sorted(live_keys(out))
    index, counters, _ = run(cfg)
    # Nothing changed but the format: nothing is decoded, the same samples are live.
    assert counters.get("files_ok", 0) == 0 and counters.get("inputs_unchanged") == 5
    assert index["version"] == dataset.INDEX_VERSION and index["dataset_version"] == 3
    assert "shards" not in index and "state" not in index and index["layout"]["parts"] == 1
    assert sorted(live_keys(out)) == old_keys
    for field in ("samples", "audio_s", "tokens", "inputs", "deleted_inputs", "failures", "failures_by_reason"):
        assert index["totals"][field] == old["totals"][field], field
    assert index["totals"]["failures_by_reason"] == {"unsupported_format": 1}  # bad.wav's, of version 1
    entries = dict(dataset.state_entries(str(out), index))
    assert entries[str(inp / "bad.wav")]["reasons"] == {"unsupported_format": 1}
    assert entries[str(inp / "f03.flac")] == {"deleted": 2}
    report = verify.verify_dataset(str(out))
    assert report.ok(), verify.format_report(report)
    # From now on a refresh that changes nothing writes nothing.
    before = sha_tree(out)
    index, counters, _ = run(cfg)
    assert index["dataset_version"] == 3 and counters.get("files_ok", 0) == 0 and sha_tree(out) == before


def test_a_dataset_of_the_first_format_refreshes_with_changes(tmp_path):
    inp, out, cfg = v1_copy(tmp_path)
    old_keys = set(live_keys(out))
    write_audio(inp / "f00.flac", synth_speechlike(1.6, 16000, seed=40), 16000, "flac")  # changed
    (inp / "f02.flac").unlink()                                                          # deleted
    write_audio(inp / "f06.flac", synth_speechlike(1.1, 16000, seed=6), 16000, "flac")  # new
    index, counters, _ = run(cfg)
    assert counters["files_ok"] == 2 and counters.get("inputs_unchanged") == 3  # f01, f05, bad.wav
    keys = live_keys(out)
    assert len(keys) == len(set(keys)) == index["totals"]["samples"]
    kept = {k for k in old_keys if not k.startswith(("f00-", "f02-"))}
    assert kept <= set(keys) and not {k for k in keys if k.startswith("f02-")}
    assert sum(k.startswith("f00-") for k in keys) == 2 and any(k.startswith("f06-") for k in keys)
    assert index["totals"]["inputs"] == 5 and index["totals"]["deleted_inputs"] == 2
    report = verify.verify_dataset(str(out))
    assert report.ok(), verify.format_report(report)


@pytest.mark.parametrize("targets", [(2, 1000), (1000, 1)])
def test_a_refresh_that_repartitions_keeps_every_input(tmp_path, monkeypatch, targets):
    """The number of parts follows the corpus: a refresh that changes it rewrites every part,
    reading the previous parts by their slots, and loses nothing."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 6)
    monkeypatch.setattr(incremental, "TARGET_INPUTS_PER_PART", targets[0])
    index1, _, _ = run(config(inp, out))
    keys1 = sorted(live_keys(out))
    (inp / "f02.flac").unlink()
    write_audio(inp / "f08.flac", synth_speechlike(1.2, 16000, seed=8), 16000, "flac")
    monkeypatch.setattr(incremental, "TARGET_INPUTS_PER_PART", targets[1])
    index2, counters, _ = run(config(inp, out, incremental=True))
    assert index1["layout"]["parts"] != index2["layout"]["parts"]
    assert counters["files_ok"] == 1 and counters.get("inputs_unchanged") == 5
    keys2 = sorted(live_keys(out))
    assert keys2 == sorted([k for k in keys1 if not k.startswith("f02-")] +
                           [k for k in keys2 if k.startswith("f08-")]) and any(k.startswith("f08-") for k in keys2)
    assert index2["totals"]["inputs"] == 6 and index2["totals"]["deleted_inputs"] == 1
    assert verify.verify_dataset(str(out)).ok()
    before = sha_tree(out)
    index3, counters, _ = run(config(inp, out, incremental=True))
    assert index3["dataset_version"] == 2 and sha_tree(out) == before and counters.get("inputs_unchanged") == 6
