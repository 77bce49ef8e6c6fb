"""Every benchmark runs in a quick mode (CI keeps them from rotting): throughput.py on two copies
of three example files, with every row, and the other scripts' own ``--quick`` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import throughput

ROOT = Path(__file__).resolve().parents[2]
# One file Lhotse opens in each of two formats, and the M4A that its default backends cannot open.
FILES = ("en/a/us_0001.wav", "en/c/long_0001.mp3", "en/b/gb_0003.m4a")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, example_corpus):
    root = tmp_path_factory.mktemp("bench-src")
    throughput.build_corpus(example_corpus, root / "copy", 1, keep=lambda rel: rel in FILES)
    return root / "copy" / "copy-0000"  # the example corpus's layout: en/a/us_0001.wav, ...


def test_build_corpus_copies_every_kept_file_per_copy(example_corpus, tmp_path):
    files = throughput.build_corpus(example_corpus, tmp_path / "c", 3, keep=lambda rel: rel.endswith(".wav"))
    assert len(files) == 3 * 2
    assert [f.relative_to(tmp_path / "c").parts[0] for f in files[::2]] == ["copy-0000", "copy-0001", "copy-0002"]
    original = example_corpus / "en" / "a" / "us_0001.wav"
    assert (tmp_path / "c" / "copy-0002" / "en" / "a" / "us_0001.wav").read_bytes() == original.read_bytes()
    with pytest.raises(ValueError, match="copies"):
        throughput.build_corpus(example_corpus, tmp_path / "d", 0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_row_runs_and_its_output_loads_back(small_corpus, tmp_path):
    pytest.importorskip("lhotse")
    report = throughput.measure(tmp_path / "work", copies=2, warmup=False, source=small_corpus, workers=2)
    json.loads(json.dumps(report))  # what --json writes
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows)[:2] == ["lhotse e2e", "audiotok e2e"]
    assert {"audiotok e2e, one file", "bare decode loop", "audiotok decode stage"} <= set(rows)
    for row in rows.values():
        assert row["wall_s"] > 0 and row["x_realtime"] > 0, row
    assert report["corpus"]["files"] == 4 and report["corpus"]["left_out"] == ["en/b/gb_0003.m4a"]
    assert rows["audiotok e2e"]["ratio"] > 0 and rows["audiotok decode stage"]["baseline"] == "bare decode loop"
    # The outputs load back: Lhotse's Shar through CutSet.from_shar, ours through the index and a shard;
    # 36.4 s of MP3 makes two 30 s windows, so each copy gives 3 samples.
    assert rows["lhotse e2e"]["output"]["samples"] == rows["audiotok e2e"]["output"]["samples"] == 6
    if "audiotok e2e, 2 workers" in rows:  # two CPUs to run them on
        assert rows["audiotok e2e, 2 workers"]["baseline"] == "audiotok e2e, 1 worker, 1 core"
        assert rows["audiotok e2e, 2 threads"]["baseline"] == "audiotok e2e, 1 thread, 1 core"
        assert rows["audiotok e2e, 2 workers"]["output"]["samples"] == rows["audiotok e2e, 2 threads"]["output"][
            "samples"] == 6
    assert "audiotok decode stage" in throughput.format_table(report)


def test_unknown_row_is_refused_with_the_known_ones(small_corpus, tmp_path):
    with pytest.raises(throughput.UnknownRowError, match="known: .*audiotok e2e"):
        throughput.measure(tmp_path / "work", copies=1, warmup=False, lhotse=False, source=small_corpus,
                           rows=["nope"])


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("script", ["long_file.py", "vad_borders.py", "local_memory.py"])
def test_the_other_benchmarks_run_in_their_quick_mode(script, tmp_path):
    flags = {"long_file.py": ["--quick", "--json", str(tmp_path / "out.json")], "vad_borders.py": [],
             "local_memory.py": ["--quick", "--json", str(tmp_path / "out.json")]}[script]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
