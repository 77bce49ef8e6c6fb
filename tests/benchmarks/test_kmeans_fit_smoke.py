"""benchmarks/kmeans_fit.py on small cases: every method fits in its own process, and the figures add up."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")

from benchmarks import kmeans_fit as bench  # noqa: E402


def test_every_method_fits_the_same_frames_and_is_compared_with_scikit_learn(tmp_path):
    report = bench.measure(tmp_path, ["ssl"], list(bench.METHODS), quick=True, frames=600)
    json.loads(json.dumps(report))  # what --json writes
    (case,) = report["cases"]
    assert (case["frames"], case["dim"], case["k"]) == (600, 768, 20)
    rows = {r["method"]: r for r in case["rows"]}
    assert list(rows) == list(bench.METHODS)
    for r in rows.values():
        assert r["fitted"] and not r["stopped"] and r["wall_s"] > 0 and r["peak_mb"] >= r["loaded_mb"] > 0, r
        assert r["inertia"] > 0 and 0.9 < r["vs_sklearn"] < 1.2, r
    assert rows["sklearn-kmeans"]["vs_sklearn"] == 1.0 and rows["hand-written"]["speedup"] == 1.0
    centroids = np.load(tmp_path / "ssl-audiotok.npy")
    assert centroids.shape == (20, 768) and bench.inertia(np.load(tmp_path / "ssl.npy"), centroids) == \
        pytest.approx(rows["audiotok"]["inertia"])
    assert "sklearn-kmeans" in bench.format_table(report)


def test_the_hand_written_fit_stops_at_its_budget_and_says_so(tmp_path):
    report = bench.measure(tmp_path, ["mfcc"], ["audiotok", "hand-written"], quick=True, frames=400, budget_s=0)
    rows = {r["method"]: r for r in report["cases"][0]["rows"]}
    assert rows["hand-written"]["stopped"] == "seeding" and rows["hand-written"]["inertia"] is None
    assert rows["audiotok"]["inertia"] > 0 and rows["audiotok"]["vs_sklearn"] is None
    assert "stopped in seeding" in bench.format_table(report)


def test_unknown_case_or_method_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--methods", "nope"])
    assert "unknown ['nope']; known: audiotok" in capsys.readouterr().err
