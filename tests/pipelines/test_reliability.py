"""Nothing lost, nothing duplicated: the output under mistakes and races, in this process.

The faults that need other processes (kill -9 at the publish points, a full disk, two runs at
once, a storage server going away, a read-only output) are in tests/pipelines/test_faults.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import webdataset as wds

from audio_fixtures import synth_speechlike, write_audio
from audiotok.pipelines import cli
from audiotok.pipelines import tokenize as job
from audiotok.pipelines import verify
from audiotok.runners import profiles
from audiotok.transforms import dataset, lease, shards, storage
from audiotok.transforms.match import MatchConfig
from audiotok.transforms.segment import SegmentConfig
from audiotok.transforms.tokenize import TokenizeConfig


def make_corpus(root: Path, n: int, seed: int = 0) -> list[Path]:
    paths = []
    for i in range(n):
        paths.append(write_audio(root / f"f{i:02d}.flac", synth_speechlike(1.0 + 0.3 * i, 16000, seed=seed + i),
                                 16000, "flac"))
    return paths


def config(inp: Path | str, out: Path, patterns: tuple[str, ...] | None = None, **kw) -> job.JobConfig:
    match = kw.pop("match", None) or MatchConfig(patterns=patterns or (f"{inp}/*",))
    return job.JobConfig(output=str(out), match=match, segment=SegmentConfig(segment_s=1.0, min_segment_s=0.2),
                         tokenize=TokenizeConfig(specs="logmel[n_mels=16]"), **kw)


def run(cfg: job.JobConfig):
    return job.run(cfg, profiles.pipeline_options("direct", []))


def sha_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def live_keys(out: Path) -> list[str]:
    keys = []
    for row in dataset.shard_rows(str(out)):
        for sample in wds.WebDataset(str(out / row["url"]), shardshuffle=False):
            if dataset.is_live(sample["__key__"], row):
                keys.append(sample["__key__"])
    return keys


def assert_verifies(out: Path) -> None:
    report = verify.verify_dataset(str(out))
    assert report.ok(), verify.format_report(report)


# ------------------------------------------------------------------ the output is only ever an audiotok dataset


def user_folder(root: Path) -> Path:
    """A folder of someone's files, with names like the ones audiotok writes."""
    files = {"README.md": "my notes", "stats.json": "{}", "vocab.json": "{}", "index.html": "<p>",
             "shards/v000001/photo-2019.jpg": "jpeg", "shards/2020/b.tar": "tar", "state/state-v000003.json": "{}",
             "failures/v000002/x.jsonl": "{}", "card/plot1.png": "png", "_tmp/0123456789abcdef0123456789abcdef": "x"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--incremental"]])
def test_a_folder_that_is_not_a_dataset_is_refused_whatever_the_flags(tmp_path, capsys, flags):
    inp, out = tmp_path / "in", user_folder(tmp_path / "mine")
    make_corpus(inp, 1)
    before = sha_tree(out)
    with pytest.raises(SystemExit) as e:
        cli.main(["tokenize", "--input", f"{inp}/*", "--output", str(out), "--tokenizer", "logmel[n_mels=16]", *flags])
    message = str(e.value.code)
    assert "neither empty nor an audiotok dataset" in message and "README.md" in message and "\n" not in message
    assert sha_tree(out) == before  # nothing written, nothing removed


def test_an_output_that_is_a_file_is_refused(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out.tar"
    make_corpus(inp, 1)
    out.write_bytes(b"not a folder")
    with pytest.raises(SystemExit, match="is a file"):
        run(config(inp, out))
    assert out.read_bytes() == b"not a folder"


def test_a_dataset_is_marked_first_and_an_empty_folder_is_accepted(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 2)
    out.mkdir()
    run(config(inp, out))
    assert dataset.is_marker((out / dataset.MARKER_NAME).read_bytes())
    assert not (out / lease.LEASE_NAME).exists()  # released
    (out / dataset.MARKER_NAME).unlink()  # a dataset written before markers existed is still one
    index, counters, _ = run(config(inp, out, incremental=True))
    assert (out / dataset.MARKER_NAME).exists() and counters.get("inputs_unchanged") == 2


def test_leftovers_are_cleaned_by_name_and_nothing_else(tmp_path):
    """Clean-up of an interrupted run removes the versions the index does not reach and temp
    files; a file someone put beside them stays."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 2)
    run(config(inp, out))
    extra = {"shards/notes.txt": "mine", "shards/v2-backup/x.tar": "mine", "state/state-v000001.json.bak": "mine"}
    leftovers = ["shards/v000002/shard-000000-0000.tar", "failures/v000003/failures-00000.jsonl",
                 "state/v000002/state-00000.jsonl", "index/v000002/rows-00000.json", "state/state-v000002.json",
                 "_tmp/0123456789abcdef0123456789abcdef/x.tar", ".index.json.tmp-0123456789ab"]
    for rel, text in extra.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    for rel in leftovers:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("left over")
    write_audio(inp / "f09.flac", synth_speechlike(1.2, 16000, seed=9), 16000, "flac")
    run(config(inp, out, incremental=True))
    for rel, text in extra.items():
        assert (out / rel).read_text() == text
    for rel in leftovers:
        assert not (out / rel).exists() or (out / rel).read_bytes() != b"left over", rel
    assert_verifies(out)


# ------------------------------------------------------------------ up-front checks


@pytest.mark.parametrize("where", ["inside", "around"])
def test_an_output_overlapping_an_input_is_refused(tmp_path, where):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 1)
    if where == "inside":
        out, pattern = corpus / "tokens", f"{corpus}/**/*"
    else:
        out, pattern = tmp_path, f"{corpus}/*"
    with pytest.raises(SystemExit, match="overlap"):
        run(config(corpus, out, patterns=(pattern,)))
    assert not (corpus / "tokens").exists()


def test_a_second_writer_is_refused_before_it_plans(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 1)
    run(config(inp, out))
    other = lease.Lease(str(out), command="tokenize").acquire()
    before = sha_tree(out)
    code = cli.main(["tokenize", "--input", f"{inp}/*", "--output", str(out), "--tokenizer", "logmel[n_mels=16]",
                     "--segment-s", "1", "--min-segment-s", "0.2", "--incremental"])
    assert code == job.EXIT_BUSY
    assert "being written by another run" in capsys.readouterr().err
    assert sha_tree(out) == before
    other.release()


def test_a_publish_over_an_index_that_changed_is_refused(tmp_path):
    """Compare-and-swap on the index: a run that planned from version 1 publishes nothing once
    another run published version 2, and renames nothing into place."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 2)
    run(config(inp, out))
    stale_generation = storage.generation(str(out / "index.json"))
    write_audio(inp / "f05.flac", synth_speechlike(1.2, 16000, seed=5), 16000, "flac")
    run(config(inp, out, incremental=True))
    live = sha_tree(out)
    temp = str(out / "_tmp" / "late")
    writer = shards.ShardWriter(temp, shards.ShardConfig())
    plan = shards.RunPlan(version=2, index_generation=stale_generation)
    with pytest.raises(shards.IndexChanged, match="another run published"):
        shards.finalize(str(out), temp, writer.close(), {"streams": {}}, plan)
    assert sha_tree(out) == live
    assert_verifies(out)


# ------------------------------------------------------------------ every input once


def test_an_input_listed_twice_is_read_once(tmp_path, capsys):
    """Overlapping patterns and repeated manifest lines: the first occurrence is read, the rest
    counted; keys stay unique, the card and verify meet no duplicate."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 3)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in [
        {"uri": str(inp / "f01.flac")}, {"uri": str(inp / "f01.flac"), "text": "again"},
        {"uri": "in/./f02.flac"}, {"uri": f"file://{inp}/f02.flac"}]) + "\n")
    code = cli.main(["tokenize", "--input", f"{inp}/*", "--input", f"{inp}/f0[01].flac", "--manifest", str(manifest),
                     "--output", str(out), "--tokenizer", "logmel[n_mels=16]", "--segment-s", "1",
                     "--min-segment-s", "0.2"])
    assert code == 0
    assert "6 listed more than once (read once)" in capsys.readouterr().err
    keys = live_keys(out)
    assert len(keys) == len(set(keys)) == 1 + 2 + 2  # 1.0 s, 1.3 s, 1.6 s in 1 s segments
    metas = {json.loads(s["json"])["source"]["uri"]: json.loads(s["json"]) for s in wds.WebDataset(
        [str(out / r["url"]) for r in dataset.shard_rows(str(out))], shardshuffle=False)}
    # Manifests come first, line by line; then the patterns (a manifest's relative URI is made absolute).
    assert set(metas) == {f"{inp}/f00.flac", f"{inp}/f01.flac", f"{inp}/f02.flac"}
    assert "text" not in metas[f"{inp}/f01.flac"]
    assert (out / "README.md").exists()
    assert_verifies(out)


def test_inputs_whose_keys_would_collide_are_told_apart(tmp_path, monkeypatch):
    """Two files with the same stem whose 40-bit source hashes collide (forced here): the first
    is read, the second is a key_collision dead letter; no key is written twice."""
    from audiotok.transforms import segment

    inp, out = tmp_path / "in", tmp_path / "out"
    write_audio(inp / "a" / "x.flac", synth_speechlike(1.2, 16000, seed=1), 16000, "flac")
    write_audio(inp / "b" / "x.flac", synth_speechlike(1.2, 16000, seed=2), 16000, "flac")
    write_audio(inp / "b" / "y.flac", synth_speechlike(1.2, 16000, seed=3), 16000, "flac")
    monkeypatch.setattr(segment, "source_hash", lambda ref: "0123456789")
    index, _, _ = run(config(inp, out, patterns=(f"{inp}/**/*",)))
    assert index["totals"]["failures_by_reason"] == {"key_collision": 1}
    keys = live_keys(out)
    assert len(keys) == len(set(keys)) == 4
    record = json.loads((out / next(dataset.failure_rows(str(out), index))["url"]).read_text())
    assert record["uri"] == f"{inp}/b/x.flac" and f"{inp}/a/x.flac" in record["message"]
    assert_verifies(out)


@pytest.mark.timeout(300)
def test_a_fifo_is_refused_when_listed_and_never_opened(tmp_path):
    """A named pipe among the inputs (by pattern, by manifest, through a symlink) is a
    not_a_file dead letter; opening it would have blocked the job forever."""
    import os

    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 2)
    os.mkfifo(inp / "y.wav")
    os.symlink(inp / "y.wav", inp / "z.wav")
    os.mkfifo(tmp_path / "piped.wav")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": str(tmp_path / "piped.wav")}) + "\n")
    index, counters, _ = run(config(inp, out, match=MatchConfig(patterns=(f"{inp}/*",), manifests=(str(manifest),))))
    assert counters["files_ok"] == 2
    assert index["totals"]["failures_by_reason"] == {"not_a_file": 3}
    records = [json.loads(line) for row in dataset.failure_rows(str(out), index)
               for line in (out / row["url"]).read_text().splitlines()]
    assert sorted(r["uri"].rsplit("/", 1)[1] for r in records) == ["piped.wav", "y.wav", "z.wav"]
    assert all("FIFO" in r["message"] and r["stage"] == "match" for r in records)
    assert_verifies(out)


# ------------------------------------------------------------------ refreshes that change nothing


def test_a_refresh_with_nothing_new_publishes_nothing_and_carries_failures(tmp_path):
    """Dead letters that name no input (a pattern matching nothing, a bad manifest line, a bad
    file name) and those of unchanged inputs are carried, not repeated; a refresh that finds
    nothing new writes nothing."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 2)
    (inp / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(200)))
    write_audio(inp / "a::b.flac", synth_speechlike(1.0, 16000, seed=5), 16000, "flac")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": str(inp / "f00.flac")}) + "\nnot json\n")
    cfg = dict(match=MatchConfig(patterns=(f"{inp}/*", f"{tmp_path}/missing/*"), manifests=(str(manifest),)),
               max_failure_fraction=1.0)
    first, _, _ = run(config(inp, out, **cfg))
    expected = {"bad_manifest": 1, "bad_name": 1, "read_error": 1}
    by_reason = first["totals"]["failures_by_reason"]
    assert by_reason.pop("unsupported_format", 0) + by_reason.pop("decode_error", 0) + by_reason.pop(
        "truncated", 0) == 1 and by_reason == expected
    before = sha_tree(out)
    index, counters, _ = run(config(inp, out, incremental=True, **cfg))
    assert index["dataset_version"] == 1 and sha_tree(out) == before
    write_audio(inp / "f05.flac", synth_speechlike(1.2, 16000, seed=55), 16000, "flac")
    index, counters, _ = run(config(inp, out, incremental=True, **cfg))
    assert index["dataset_version"] == 2 and counters["files_ok"] == 1
    assert index["totals"]["failures"] == first["totals"]["failures"]  # carried, counted once
    new_rows = [r for r in dataset.failure_rows(str(out), index) if r["url"].startswith("failures/v000002/")]
    assert new_rows == []  # nothing to repeat
    assert_verifies(out)
    (tmp_path / "missing").mkdir()  # the pattern matches now: its dead letter no longer counts
    write_audio(tmp_path / "missing" / "m.flac", synth_speechlike(1.2, 16000, seed=56), 16000, "flac")
    index, counters, _ = run(config(inp, out, incremental=True, **cfg))
    assert index["dataset_version"] == 3 and "read_error" not in index["totals"]["failures_by_reason"]
    assert index["totals"]["failures"] == first["totals"]["failures"] - 1
    assert_verifies(out)


# ------------------------------------------------------------------ --overwrite, and old versions' files


def read_all(out: Path, index: dict) -> int:
    """Reads every sample an index names (as a trainer holding that index would)."""
    urls = [str(out / row["url"]) for row in dataset.shard_rows(str(out), index)]
    return sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))


def test_overwrite_writes_the_new_version_first_and_old_readers_keep_reading(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 3)
    old_index, _, _ = run(config(inp, out))
    old_samples = read_all(out, old_index)
    new_inp = tmp_path / "in2"
    make_corpus(new_inp, 2, seed=20)
    new_index, _, _ = run(config(new_inp, out, overwrite=True))
    assert new_index["dataset_version"] == 2 and new_index["totals"]["inputs"] == 2
    assert all(r["url"].startswith("shards/v000002/") for r in dataset.shard_rows(str(out), new_index))
    assert read_all(out, old_index) == old_samples  # the replaced version is still whole
    assert_verifies(out)
    retired = json.loads((out / dataset.retired_path(2)).read_text())["retired"]
    assert sorted(retired) == sorted(dataset.referenced_files(str(out), old_index))
    assert cli.main(["gc", str(out)]) == 0  # within the grace period: nothing goes
    assert all((out / rel).exists() for rel in retired)
    assert cli.main(["gc", str(out), "--older-than", "0", "--dry-run"]) == 0
    assert all((out / rel).exists() for rel in retired)
    assert cli.main(["gc", str(out), "--older-than", "0"]) == 0
    assert not any((out / rel).exists() for rel in retired) and not (out / dataset.retired_path(2)).exists()
    assert not (out / "shards" / "v000001").exists()
    report = verify.verify_dataset(str(out))
    assert report.ok(strict=True), verify.format_report(report, strict=True)  # no file left that no index names
    assert read_all(out, new_index) == new_index["totals"]["samples"]


def test_refreshes_retire_superseded_files_and_gc_keeps_what_is_live(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 3)
    shard_cfg = shards.ShardConfig(max_samples=2, files_per_bucket=1)
    run(config(inp, out, shards=shard_cfg, gc_grace_s=0))
    (inp / "f00.flac").unlink()  # its shard's samples are all superseded
    index, _, _ = run(config(inp, out, incremental=True, shards=shard_cfg, gc_grace_s=0))
    assert_verifies(out)
    on_disk = {str(p.relative_to(out)) for p in (out / "shards").rglob("*.tar")}
    assert on_disk == {r["url"] for r in dataset.shard_rows(str(out), index)}  # grace 0: the retired shard went
    assert sorted(p.name for p in (out / "state").iterdir()) == ["v000002"]
    assert len(live_keys(out)) == index["totals"]["samples"]
