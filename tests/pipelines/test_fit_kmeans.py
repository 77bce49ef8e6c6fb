"""The k-means fitting pipeline: deterministic sample, codebook file, usable by the tokenizer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from audio_fixtures import synth_speechlike, write_audio
from audiotok.pipelines import cli, fit_kmeans
from audiotok.transforms.tokenizers import kmeans, registry

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus(tmp_path):
    for i in range(3):
        write_audio(tmp_path / "in" / f"c{i}.wav", synth_speechlike(2.0, 16000, seed=10 + i), 16000, "wav")
    return tmp_path / "in"


def test_fit_kmeans_cli_writes_a_deterministic_codebook(corpus, tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        argv = ["fit-kmeans", "--input", f"{corpus}/*", "--tokenizer", "mfcc-kmeans[k=12]", "--output", str(out),
                "--max-frames", "500", "--frames-per-segment", "200"]
        assert cli.main(argv) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    book = kmeans.Codebook.from_bytes(outs[0])
    assert book.k == 12 and book.dim == 39 and book.metadata["n_frames"] == "500"
    assert book.metadata["tokenizer"] == "mfcc-kmeans"
    assert "k=12" in capsys.readouterr().out
    tok = registry.create(f"mfcc-kmeans[k=12,codebook={tmp_path / 'a.safetensors'}]")
    units = tok.encode(synth_speechlike(1.0, 16000, seed=1)[0])["mfcc-kmeans"]
    assert units.shape == (100,) and len(np.unique(units)) > 1


def test_frame_sample_is_stable_and_bounded():
    feats = np.arange(40, dtype=np.float32).reshape(20, 2)
    a = fit_kmeans.sample_frames("key-1", feats, 5, seed=0)
    assert [r for r, _ in a] == [r for r, _ in fit_kmeans.sample_frames("key-1", feats, 5, seed=0)]
    assert len(a) == 5 and [r for r, _ in a] != [r for r, _ in fit_kmeans.sample_frames("key-2", feats, 5, seed=0)]


def test_fit_needs_a_kmeans_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="not a k-means tokenizer"):
        fit_kmeans.FitConfig(spec="logmel", output=str(tmp_path / "x.safetensors"))


def test_too_few_frames_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(Exception, match="only .* frames"):
        cli.main(["fit-kmeans", "--input", f"{corpus}/c0.wav", "--tokenizer", "mfcc-kmeans[k=50]",
                  "--output", str(tmp_path / "x.safetensors"), "--max-frames", "60", "--frames-per-segment", "1"])


def test_python_dash_m_entry_points(corpus, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "audiotok.pipelines.tokenize", "--input", f"{corpus}/*", "--output", str(out),
                           "--tokenizer", "logmel"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 samples" in proc.stderr and (out / "index.json").exists()
