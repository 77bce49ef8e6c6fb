"""The dataset card (transforms/card.py, pipelines/card.py): stats, plots, README."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from audiotok.pipelines import card as card_cli
import dataset_fixtures as fx
from audiotok.transforms import card, dataset, lm, reader
from audiotok.transforms.failures import Failure

SVG = "{http://www.w3.org/2000/svg}"


def _svg(data: bytes) -> ET.Element:
    """The parsed SVG document (a well-formed one, or ParseError)."""
    root = ET.fromstring(data)
    assert root.tag == f"{SVG}svg"
    return root


def _marks(root: ET.Element) -> list[ET.Element]:
    """The filled shapes drawn (bars, heat maps), the white background left out."""
    return [e for e in root.iter() if (e.tag == f"{SVG}rect" and e.get("fill") not in ("white", "none"))
            or e.tag == f"{SVG}image"]


def test_sources_are_first_folders_below_the_input_root():
    uris = ["gs://b/corpus/en/a/x.wav", "gs://b/corpus/en/a/deep/y.wav", "gs://b/corpus/en/b/z.wav",
            "gs://b/corpus/en/top.wav"]
    root = card.common_root(uris)
    assert "/".join(root) == "gs://b/corpus/en"
    assert [card.source_of(u, root) for u in uris] == ["a", "a", "b", card.ROOT_SOURCE]
    assert card.source_of("/d/one.wav", card.common_root(["/d/one.wav"])) == card.ROOT_SOURCE


def test_thousands_of_sources_plot_as_the_largest_and_one_remainder_bar():
    rows = {f"folder{i:04d}": {"samples": 1 + i % 3, "audio_s": 3000.0 - i, "hours": 0.0} for i in range(2000)}
    top = card.top_rows(rows)
    assert len(top) == card.MAX_PLOTTED_SOURCES and list(top)[:3] == ["folder0000", "folder0001", "folder0002"]
    rest = top[f"{2000 - card.MAX_PLOTTED_SOURCES + 1} others (all in stats.json)"]
    assert rest["samples"] + sum(r["samples"] for n, r in top.items() if n.startswith("folder")) == \
        sum(r["samples"] for r in rows.values())
    assert card.top_rows(dict(list(rows.items())[:5])) == {n: rows[n] for n in list(rows)[:5]}
    root = _svg(card._plot_sources({"sources": {"by_source": rows, "root": "/data"}}))
    assert float(root.get("height")) < 1200  # 20 bars; all 2000 made a 70,000-pixel-tall figure
    assert len(_marks(root)) == 2 * card.MAX_PLOTTED_SOURCES  # audio and samples: one bar per row each
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "folder0000" in texts and f"{2000 - card.MAX_PLOTTED_SOURCES + 1} others (all in stats.json)" in texts


def test_codebook_usage_entropy_and_dead_codes():
    uniform = card.codebook_usage(np.full(8, 5))
    assert uniform["entropy_bits"] == pytest.approx(3.0) and uniform["normalized_entropy"] == pytest.approx(1.0)
    assert uniform["perplexity"] == pytest.approx(8.0) and uniform["dead"] == 0
    skewed = card.codebook_usage(np.array([6, 2, 0, 0]))
    expected = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert skewed["entropy_bits"] == pytest.approx(expected, abs=1e-6)
    assert (skewed["used"], skewed["dead"], skewed["dead_codes"]) == (2, 2, [2, 3])
    assert skewed["top_codes"] == [[0, 6], [1, 2]]


def _dataset(tmp_path):
    # Codebook 0 of "codec" only ever uses codes 0..511; the others all 1024 codes.
    probs = np.r_[np.full(512, 1 / 512), np.zeros(512)]
    rng = np.random.default_rng(7)
    samples = []
    for i in range(9):
        s = fx.synthetic_sample(None, round(float(rng.uniform(0.5, 6.0)), 2), rng,
                                uri=f"/data/corpus/src{i % 3}/clip{i:02d}.wav",
                                manifest={"speaker": f"spk{i % 2}", "text": "hello"} if i < 4 else None)
        codes = s.streams["codec"].copy()
        codes[0] = rng.choice(1024, size=codes.shape[1], p=probs)
        s.streams["codec"][...] = codes
        samples.append(s)
    failures = [Failure(uri=f"/data/corpus/src0/bad{i}.wav", reason=r, message="m", stage="decode")
                for i, r in enumerate(["truncated", "truncated", "unsupported_format"])]
    out = tmp_path / "ds"
    index = fx.write_dataset(out, samples, max_samples=4, failures=failures)
    lm.write_vocab(str(out), index)
    return out, index, samples


def test_card_of_a_synthetic_dataset(tmp_path):
    out, index, samples = _dataset(tmp_path)
    stats = card.write_card(str(out))
    on_disk = json.loads((out / card.STATS_NAME).read_text())
    assert on_disk == json.loads(json.dumps(stats))
    assert stats["dataset"]["samples"] == 9 and stats["coverage"]["samples_read"] == 9
    assert stats["sources"]["root"] == "/data/corpus"
    assert {k: v["samples"] for k, v in stats["sources"]["by_source"].items()} == {"src0": 3, "src1": 3, "src2": 3}
    assert {k: v["samples"] for k, v in stats["sources"]["by_speaker"].items()} == {"spk0": 2, "spk1": 2}
    durations = [s.meta["duration_s"] for s in samples]
    assert stats["durations"]["count"] == 9 and stats["durations"]["max_s"] == pytest.approx(max(durations))
    assert sum(stats["durations"]["histogram"]["counts"]) == 9
    codec = stats["streams"]["codec"]
    assert codec["tokens"] == index["totals"]["tokens"]["codec"]
    cb0 = codec["codebooks"][0]
    assert cb0["dead"] >= 512 and cb0["used"] <= 512
    assert len(cb0["dead_codes"]) == card.MAX_LISTED_DEAD_CODES and min(cb0["dead_codes"]) >= 0
    assert all(cb["dead"] < 100 for cb in codec["codebooks"][1:])
    assert codec["codebooks"][0]["entropy_bits"] <= 9.0 + 1e-6  # at most log2(512)
    assert "codebooks" not in stats["streams"]["fbank"]
    assert stats["failures"]["by_reason"] == {"truncated": 2, "unsupported_format": 1}
    warnings = card.dead_code_warnings(stats)
    assert warnings and warnings[0].startswith("codec codebook 0:")

    plots = sorted(p.name for p in (out / card.PLOTS_DIR).iterdir())
    assert plots == ["codebooks-codec.svg", "codebooks-units.svg", "durations.svg", "failures.svg", "sources.svg",
                     "tokens.svg"]
    for name in plots:
        root = _svg((out / card.PLOTS_DIR / name).read_bytes())
        assert float(root.get("height")) > 100 and float(root.get("width")) > 400
        assert _marks(root)  # not a blank canvas
    codec = _svg((out / card.PLOTS_DIR / "codebooks-codec.svg").read_bytes())
    assert [e.tag for e in _marks(codec)].count(f"{SVG}image") == 1  # 4 codebooks: a heat map
    failures = [t.text for t in _svg((out / card.PLOTS_DIR / "failures.svg").read_bytes()).iter(f"{SVG}text")]
    assert "truncated" in failures and "unsupported_format" in failures
    again = card.render_plots(stats, card.dataset_stats(index, reader.read_samples(str(out)))[1])
    assert all(again[n] == (out / card.PLOTS_DIR / n).read_bytes() for n in plots)  # same stats, same bytes

    readme = (out / card.README_NAME).read_text()
    for heading in ("## Streams", "## LM vocabulary", "## Sources", "## Segment durations", "## Codebook usage",
                    "## Failures"):
        assert heading in readme
    for name in plots:
        assert f"]({card.PLOTS_DIR}/{name})" in readme
    assert "codec codebook 0:" in readme and "| `unsupported_format` |" not in readme
    assert "| truncated | 2 |" in readme
    assert "`<\\|bos\\|>`" in readme  # pipes escaped inside table cells


def test_card_command_regenerates_from_some_shards(tmp_path, capsys):
    out, index, _ = _dataset(tmp_path)
    (out / lm.VOCAB_NAME).unlink()
    (out / card.PLOTS_DIR).mkdir()
    (out / card.PLOTS_DIR / "codebooks-gone.svg").write_bytes(b"a plot of a stream a previous run had")
    (out / card.PLOTS_DIR / "sources.png").write_bytes(b"a plot of a card before plots were SVG")
    (out / card.PLOTS_DIR / "mine.png").write_bytes(b"a file the card never listed")
    (out / card.STATS_NAME).write_text(json.dumps({"plots": [f"{card.PLOTS_DIR}/codebooks-gone.svg",
                                                             f"{card.PLOTS_DIR}/sources.png"]}))
    assert card_cli.main([str(out), "--max-shards", "1"]) == 0
    assert (out / lm.VOCAB_NAME).exists()
    assert not (out / card.PLOTS_DIR / "codebooks-gone.svg").exists()  # the previous card's, gone
    assert not (out / card.PLOTS_DIR / "sources.png").exists()
    assert (out / card.PLOTS_DIR / "mine.png").exists()  # not the card's: left alone
    stats = json.loads((out / card.STATS_NAME).read_text())
    assert stats["coverage"] == {"shards_read": 1, "shards_total": 3, "samples_read": 4}
    assert stats["dataset"]["samples"] == 9  # totals stay exact
    assert "from 1 of 3 shards" in (out / card.README_NAME).read_text()
    assert card.pick_shards(10, 3) == [0, 4, 9] and card.pick_shards(2, 5) == [0, 1]
    assert card_cli.main([str(tmp_path / "nothing")]) == 1


def test_stats_are_deterministic(tmp_path):
    out, index, _ = _dataset(tmp_path)
    first, usage = card.dataset_stats(index, reader.read_samples(str(out)))
    again, usage_again = card.dataset_stats(index, reader.read_samples(str(out)))
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert usage["codec"].shape == (4, 1024) and (usage["codec"] == usage_again["codec"]).all()
    assert usage["codec"].sum() == index["totals"]["tokens"]["codec"]


def test_the_example_run_has_a_card():
    out = fx.example_run()
    from pathlib import Path

    out = Path(out)
    stats = json.loads((out / card.STATS_NAME).read_text())
    index = dataset.read_index(str(out))
    assert stats["dataset"]["samples"] == index["totals"]["samples"] == len(list(reader.read_samples(str(out))))
    assert set(stats["sources"]["by_source"]) == {"a", "b"}
    units = stats["streams"]["mfcc-kmeans"]["codebooks"][0]
    assert units["size"] == 32 and units["tokens"] == index["totals"]["tokens"]["mfcc-kmeans"]
    assert 0 < units["entropy_bits"] <= 5.0
    for rel in stats["plots"]:  # every plot draws something, "no failures" its text
        root = _svg((out / rel).read_bytes())
        assert _marks(root) or [t.text for t in root.iter(f"{SVG}text")] == ["no failures", "Failures by reason (0 in all)"]
    assert "## Codebook usage" in (out / card.README_NAME).read_text()


def test_a_dataset_whose_inputs_all_failed(tmp_path):
    out = tmp_path / "ds"
    fx.write_dataset(out, [], failures=[Failure(uri="/data/a.wav", reason="empty", message="0 bytes", stage="decode")])
    stats = card.write_card(str(out))
    assert stats["dataset"]["samples"] == 0 and stats["failures"]["by_reason"] == {"empty": 1}
    assert sorted(stats["plots"]) == ["card/durations.svg", "card/failures.svg", "card/sources.svg", "card/tokens.svg"]
    assert card.dead_code_warnings(stats) == []  # nothing read, nothing flagged
    assert list(reader.read_samples(str(out))) == []
