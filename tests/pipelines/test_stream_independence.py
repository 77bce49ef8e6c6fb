"""A stream's tokens depend on the audio and its own settings only: not on the tokenizers that
share the run, checked through the main job as a trainer would check it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
wds = pytest.importorskip("webdataset")

import tiny_models  # noqa: E402
from audio_fixtures import synth_speechlike, write_audio  # noqa: E402

from audiotok.pipelines import cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every rate a registered tokenizer takes, and one (22.05 kHz) that none does.
SOURCE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)


@pytest.fixture(scope="module")
def mixed_rate_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed-rates")
    for i, rate in enumerate(SOURCE_RATES):
        fmt = "flac" if i % 2 else "wav"
        write_audio(root / f"r{rate}.{fmt}", synth_speechlike(2.3 + 0.1 * i, rate, seed=i), rate, fmt)
    return root


def run_job(corpus, out, specs: str) -> dict[str, dict[str, np.ndarray]]:
    """Runs ``audiotok tokenize``; returns key -> member name -> array."""
    code = cli.main(["tokenize", "--input", f"{corpus}/*", "--output", str(out), "--tokenizer", specs,
                     "--segment-s", "1", "--min-segment-s", "0.2"])
    assert code == 0
    index = json.loads((out / "index.json").read_text())
    urls = [str(out / row["url"]) for row in index["shards"]]
    return {s["__key__"]: {k: v for k, v in s.items() if k.endswith(".npy")}
            for s in wds.WebDataset(urls, shardshuffle=False).decode()}


def test_logmel_is_byte_identical_with_a_24k_companion(mixed_rate_corpus, tmp_path):
    """A 24 kHz codec in the run used to send 16 kHz audio through 24 kHz before logmel."""
    encodec = tiny_models.save_encodec(tmp_path / "encodec")
    alone = run_job(mixed_rate_corpus, tmp_path / "alone", "logmel")
    mixed = run_job(mixed_rate_corpus, tmp_path / "mixed", f"logmel,encodec-24k[model={encodec}]")
    assert set(alone) == set(mixed) and len(alone) == 3 * len(SOURCE_RATES)
    for key, streams in alone.items():
        assert mixed[key]["logmel.npy"].tobytes() == streams["logmel.npy"].tobytes(), key
        assert "encodec-24k.npy" in mixed[key]
