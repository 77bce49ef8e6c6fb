"""Listing fans out: a pattern's folders are listed by several workers, a manifest is read in
ranges, and the files and lines found are exactly those one worker reading it all would find."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from audiotok.transforms import failures, match, storage
from audiotok.transforms.match import ListInputs, MatchConfig

RUNNER = "FnApiRunner"


def make_tree(root) -> None:
    """12 folders (some nested three deep), hidden files and folders, files at the top."""
    for d in range(12):
        for f in range(3):
            path = root / f"spk{d:02d}" / f"ch{f}" / f"u{f}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (d + f))
        (root / f"spk{d:02d}" / "notes.txt").write_text("n")
    (root / "spk03" / "ch0" / "deep" / "deeper").mkdir(parents=True)
    (root / "spk03" / "ch0" / "deep" / "deeper" / "x.flac").write_bytes(b"d")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.flac").write_bytes(b"h")
    (root / "top.flac").write_bytes(b"t")


def fanned_out(pattern: str, **kw) -> tuple[list[str], int]:
    found, work = match.split_pattern(pattern, **kw)
    urls = [u for u, _ in found]
    for w in work:
        urls += [u for u, _ in match.list_prefixes(w)]
    return sorted(urls), len(work)


@pytest.mark.parametrize("pattern", ["**", "**/*.flac", "*/*/*.flac", "spk0*/**", "*", "spk1?/ch[01]/*",
                                     "spk03", "top.flac", "nothing/**", "*/ch2/u2.flac"])
def test_fanned_out_listing_finds_what_glob_finds(tmp_path, pattern):
    make_tree(tmp_path)
    url = str(tmp_path / pattern)
    expected = sorted(u for u, _ in storage.list_files(url)) if (
        any(c in pattern for c in "*?[") or (tmp_path / pattern).exists()) else []
    got, _ = fanned_out(url)
    assert got == expected
    got, _ = fanned_out(url, max_listers=3, min_listers=2, levels=1)  # other splits, same files
    assert got == expected


def test_many_folders_are_listed_by_several_workers(tmp_path):
    make_tree(tmp_path)
    _, work = fanned_out(str(tmp_path / "**"))
    assert work > 1
    _, work = fanned_out(str(tmp_path / "**"), max_listers=4)
    assert work == 4  # 12 folders (and .hidden) in four groups


def test_fanned_out_listing_on_an_object_store():
    fs = storage.filesystem("memory://audiotok-fanout/x")[0]
    for d in range(20):
        fs.pipe(f"/audiotok-fanout/c/d{d:02d}/a.flac", b"a")
        fs.pipe(f"/audiotok-fanout/c/d{d:02d}/sub/b.flac", b"b")
    url = "memory://audiotok-fanout/c/**"
    got, work = fanned_out(url)
    assert work > 1 and got == sorted(u for u, _ in storage.list_files(url)) and len(got) == 40
    fs.rm("/audiotok-fanout", recursive=True)


def test_list_inputs_batches_counts_and_unmatched_patterns(tmp_path):
    make_tree(tmp_path)
    config = MatchConfig(patterns=(str(tmp_path / "**"), str(tmp_path / "none-*")))
    with TestPipeline(runner=RUNNER) as p:
        listed = p | ListInputs(config)
        uris = listed["batches"] | beam.Flatten() | beam.FlatMap(lambda b: [r.uri for _, r in b[1]])
        expected = [u for u, _ in storage.list_files(str(tmp_path / "**"))
                    if not match.is_excluded(u, match.DEFAULT_EXCLUDE)]
        assert_that(uris, equal_to(expected))
        assert_that(listed["failures"] | beam.Map(lambda f: (f.uri, f.reason)),
                    equal_to([(str(tmp_path / "none-*"), failures.READ_ERROR)]), label="unmatched")


def test_a_manifest_is_read_in_ranges_with_its_line_numbers(tmp_path, monkeypatch):
    lines = []
    for i in range(40):
        if i in (0, 7, 23, 39):
            lines.append("not json {")
        elif i == 15:
            lines.append("")
        else:
            lines.append(json.dumps({"uri": f"/data/f{i:02d}.wav", "text": "é" * (i % 5)}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines))  # no newline at the end
    monkeypatch.setattr(match, "MANIFEST_SPLIT_BYTES", 97)  # ranges that cut lines anywhere
    assert len(match.manifest_ranges(str(manifest), manifest.stat().st_size, 97)) > 10
    with TestPipeline(runner=RUNNER) as p:
        listed = p | ListInputs(MatchConfig(manifests=(str(manifest),)))
        uris = listed["batches"] | beam.Flatten() | beam.FlatMap(lambda b: [r.uri for _, r in b[1]])
        assert_that(uris, equal_to([f"/data/f{i:02d}.wav" for i in range(40) if i not in (0, 7, 15, 23, 39)]))
        assert_that(listed["failures"] | beam.Map(lambda f: (f.uri, f.reason)),
                    equal_to([(f"{manifest}:{n}", failures.BAD_MANIFEST) for n in (1, 8, 24, 40)]), label="bad")


@pytest.mark.parametrize("split", [1, 5, 64, 10_000])
def test_manifest_ranges_hold_every_line_once(tmp_path, split):
    manifest = tmp_path / "m.jsonl"
    data = b"a\n\nbb\nccc\r\n" * 13 + b"last"
    manifest.write_bytes(data)
    got = []
    with open(manifest, "rb") as f:
        for start, end in match.manifest_ranges(str(manifest), len(data), split):
            got += [raw for _, raw in match.read_manifest_range(f, start, end)]
    with open(manifest, "rb") as f:
        assert got == list(f)
