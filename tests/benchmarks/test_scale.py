"""benchmarks/scale.py in its quick mode (10^4 synthetic inputs): the three scenarios run the real
bookkeeping and report what the README's table shows."""

from __future__ import annotations

import json

from benchmarks import scale


def test_quick_simulation(tmp_path):
    out = tmp_path / "scale.json"
    assert scale.main(["--quick", "--json", str(out), "--workdir", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    by = {r["scenario"]: r for r in report["rows"]}
    n = 10_000
    assert list(by) == ["first", "noop", "changed"] and all(r["inputs"] == n for r in by.values())
    assert by["first"]["published"] and not by["noop"]["published"] and by["changed"]["published"]
    assert by["first"]["counters"]["inputs_new"] == n == by["first"]["totals"]["samples"]
    assert by["noop"]["counters"]["inputs_unchanged"] == n
    assert by["changed"]["counters"]["inputs_changed"] == n // scale.CHANGED_EVERY
    assert by["changed"]["counters"]["inputs_unchanged"] == n - n // scale.CHANGED_EVERY
    assert by["changed"]["totals"] == {"inputs": n, "samples": n, "shards": by["changed"]["totals"]["shards"]}
    # A refresh that changes nothing publishes nothing: no shard, no state part, no index.
    assert not {"rename", "open_output"} & set(by["noop"]["requests"]["output"])
    for row in report["rows"]:
        assert row["wall_s"]["pipeline"] > 0 and row["wall_s"]["steps"], row
        assert 0 < row["peak_rss_mb"]["launcher"] <= row["peak_rss_mb"]["pipeline"] or row["peak_rss_mb"]["pipeline"]
        assert row["state_bytes"] > 0 and 0 < row["index_bytes"] < 8192 and row["rows_bytes"] > 0
        assert row["requests"]["input"]["list"] >= n // scale.LIST_PAGE


def test_the_synthetic_store_lists_like_a_store():
    scale.register()
    from audiotok.transforms import match, storage

    fs, _ = storage.filesystem("synth://n25000/")
    found, work = match.split_pattern("synth://n25000/**")
    urls = sorted([u for u, _ in found] + [u for w in work for u, _ in match.list_prefixes(w)])
    assert len(urls) == 25000 and urls[0] == "synth://n25000/d00000/f00000000.flac"
    assert not found and len(work) == 25  # one lister per folder
    info = fs.info("n25000/d00002/f00002099.flac")
    assert info["size"] > 0 and storage.version_marker(info) == "generation:1"
    scale.SynthFileSystem.revision = 1
    try:
        assert storage.version_marker(fs.info("n25000/d00002/f00002099.flac")) == "generation:2"
        assert storage.version_marker(fs.info("n25000/d00002/f00002098.flac")) == "generation:1"
    finally:
        scale.SynthFileSystem.revision = 0
