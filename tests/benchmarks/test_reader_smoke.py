"""benchmarks/reader.py on a small dataset: every row runs, the figures are consistent, the bucket counts add up."""

from __future__ import annotations

import json

from benchmarks import reader as bench


def test_quick_run_reports_every_row_with_consistent_figures(tmp_path):
    report = bench.measure(tmp_path, samples=12, repeats=1, warmup=False)
    json.loads(json.dumps(report))  # what --json writes
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == ["stock lm units", "lm units", "lm units (split)", "stock lm codec+units", "lm codec+units",
                          "lm codec+units (split)", "samples units", "samples codec+logmel+units",
                          "samples codec+logmel+units (split)"]
    for r in report["rows"]:
        assert r["tokens"] > 0 and r["wall_s"] > 0 and r["tokens_per_s"] > 0, r
    # the same tokens whatever reads them, and whatever the layout
    assert rows["stock lm units"]["tokens"] == rows["lm units"]["tokens"] == rows["lm units (split)"]["tokens"]
    assert rows["stock lm codec+units"]["tokens"] == rows["lm codec+units (split)"]["tokens"]
    totals = report["dataset"]["tokens"]
    assert rows["samples codec+logmel+units"]["tokens"] == sum(totals.values())
    assert rows["samples codec+logmel+units (split)"]["tokens"] == sum(totals.values())
    assert rows["lm units"]["tokens"] == totals["units"] + 3 * 12  # <|bos|>, the separator, <|eos|>
    d = report["dataset"]
    # from a bucket, interleaved shards are fetched whole; the discrete set alone when vectors are apart
    assert rows["lm units"]["bucket_bytes"] >= 0.9 * d["shard_bytes"]
    assert d["split_bytes"]["discrete"] <= rows["lm units (split)"]["bucket_bytes"] < 0.2 * d["shard_bytes"]
    assert rows["lm units"]["vs_stock"] > 0 and rows["samples units"]["vs_stock"] is None
    assert "lm units (split)" in bench.format_table(report)


def test_main_quick_writes_the_json(tmp_path, capsys):
    assert bench.main(["--quick", "--samples", "6", "--json", str(tmp_path / "r.json")]) == 0
    assert "stock lm units" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["dataset"]["samples"] == 6
