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
    assert list(rows)[:3] == ["lhotse e2e", "lhotse e2e (small corpus)", "audiotok e2e"]
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
    # Each e2e row has its twin on the small corpus (one copy), and a steady-state entry from the pair
    small = report["corpus"]["small"]
    assert (small["copies"], small["files"]) == (1, 2) and abs(small["audio_s"] * 2 - report["corpus"]["audio_s"]) < 0.2
    assert rows["audiotok e2e (small corpus)"]["output"]["samples"] == 3
    steady = {e["name"]: e for e in report["steady_state"]}
    assert {"lhotse e2e", "audiotok e2e"} <= set(steady) and "audiotok e2e, one file" not in steady
    assert steady["audiotok e2e"]["baseline"] == "lhotse e2e"
    assert "steady state" in throughput.format_table(report)


def test_steady_state_is_the_marginal_rate_of_two_corpus_sizes():
    """The fixed cost of a run cancels out: 100 s of audio in 3 s and 20 s in 1 s is 40x real
    time at the margin, 0.5 s fixed; a baseline at 20x gives a ratio of 2."""
    def row(name, baseline, audio_s, wall_s):
        return throughput.Row(name, baseline, audio_s, walls=[wall_s + 1.0, wall_s])  # the fastest round counts
    rows = [row("base", None, 100.0, 5.5), row("base" + throughput.SMALL, None, 20.0, 1.5),
            row("fast", "base", 100.0, 3.0), row("fast" + throughput.SMALL, "base" + throughput.SMALL, 20.0, 1.0),
            row("alone", None, 10.0, 1.0),
            row("flat", "base", 100.0, 2.0), row("flat" + throughput.SMALL, None, 20.0, 2.0)]
    steady = {e["name"]: e for e in throughput.steady_state(rows)}
    assert set(steady) == {"base", "fast", "flat"}
    assert steady["base"] == {"name": "base", "baseline": None, "marginal_x_realtime": 20.0, "fixed_s": 0.5,
                              "ratio": None}
    assert steady["fast"] == {"name": "fast", "baseline": "base", "marginal_x_realtime": 40.0, "fixed_s": 0.5,
                              "ratio": 2.0}
    assert steady["flat"]["marginal_x_realtime"] is None  # no extra time for the extra audio: no figure


def test_small_corpus_is_a_quarter_of_the_copies():
    assert [throughput.small_copies(n) for n in (1, 2, 3, 4, 110)] == [0, 1, 1, 1, 27]


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
