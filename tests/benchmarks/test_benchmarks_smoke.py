"""benchmarks/throughput.py on a three-file corpus: every figure is positive and both outputs load back."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lhotse")

from benchmarks import throughput  # noqa: E402

# One file Lhotse opens in each of two formats, and the M4A that its default backends cannot open.
FILES = ("en/a/us_0001.wav", "en/c/long_0001.mp3", "en/b/gb_0003.m4a")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, example_corpus):
    root = tmp_path_factory.mktemp("bench-src")
    throughput.build_corpus(example_corpus, root / "copy", 1, keep=lambda rel: rel in FILES)
    return root / "copy"


def test_build_corpus_copies_every_kept_file_per_copy(example_corpus, tmp_path):
    files = throughput.build_corpus(example_corpus, tmp_path / "c", 3, keep=lambda rel: rel.endswith(".wav"))
    assert len(files) == 3 * 2
    assert [f.relative_to(tmp_path / "c").parts[0] for f in files[::2]] == ["copy-0000", "copy-0001", "copy-0002"]
    original = example_corpus / "en" / "a" / "us_0001.wav"
    assert (tmp_path / "c" / "copy-0002" / "en" / "a" / "us_0001.wav").read_bytes() == original.read_bytes()
    with pytest.raises(ValueError, match="copies"):
        throughput.build_corpus(example_corpus, tmp_path / "d", 0)


def test_measure_reports_positive_figures_and_outputs_load_back(small_corpus, tmp_path):
    rows = ["lhotse e2e (common)", "audiotok e2e (all)", "lhotse decode (common)", "audiotok decode (common)",
            "audiotok decode (all)"]
    report = throughput.measure(tmp_path / "work", copies=1, warmup=False, source=small_corpus, rows=rows)
    json.loads(json.dumps(report))  # what --json writes
    by_label = {f"{r['name']} ({r['file_set']})": r for r in report["rows"]}
    assert list(by_label) == rows
    for row in report["rows"]:
        assert row["files"] > 0 and row["audio_s"] > 0 and row["wall_s"] > 0 and row["x_realtime"] > 0, row
    # Both sides decode the same audio: durations agree to MP3 padding.
    assert by_label["lhotse decode (common)"]["audio_s"] == pytest.approx(
        by_label["audiotok decode (common)"]["audio_s"], abs=0.2)
    assert by_label["audiotok e2e (all)"]["files"] == len(FILES)
    assert by_label["audiotok decode (all)"]["files"] == len(FILES)
    lhotse_files = by_label["lhotse e2e (common)"]["files"]
    assert lhotse_files == report["corpus"]["files_common"]
    assert lhotse_files + by_label["lhotse e2e (common)"]["failed"] == len(FILES)
    assert by_label["lhotse e2e (common)"]["ratio_vs_lhotse"] == 1.0
    assert by_label["audiotok decode (all)"]["ratio_vs_lhotse"] > 0
    # The Shar loads back through CutSet.from_shar with one [T, 80] array per cut written;
    # 36.4 s of MP3 makes two 30 s windows.
    shar = report["checks"]["lhotse e2e (common)"]
    assert shar["cuts_loaded"] == by_label["lhotse e2e (common)"]["samples"] >= lhotse_files + 1
    assert shar["frames_loaded"] > 0
    ours = report["checks"]["audiotok e2e (all)"]
    assert ours["samples"] == by_label["audiotok e2e (all)"]["samples"] == len(FILES) + 1
    assert "audiotok e2e (all)" in throughput.format_table(report)


def test_unknown_row_is_refused_with_the_known_ones(small_corpus, tmp_path):
    with pytest.raises(throughput.UnknownRowError, match="known: .*audiotok e2e \\(all\\)"):
        throughput.measure(tmp_path / "work", copies=1, warmup=False, source=small_corpus, rows=["nope (all)"])
