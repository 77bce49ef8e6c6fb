"""Every model tokenizer family through the main job (Beam, in-process), in one mixed run.

Tiny random-weight models of the real architectures, saved as checkpoint folders, go through
``audiotok tokenize`` exactly as users' checkpoints do: codecs (EnCodec 24/48 kHz, DAC, Mimi,
SNAC), SSL k-means units (HuBERT, and wav2vec2 run-length deduplicated: their codebooks fitted
on the fly from the input), SSL embeddings (WavLM), next to logmel. The registry's other names
(``dac-24k``, ``snac-44k``, ``hubert-emb``, ...) are presets of these same adapters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
wds = pytest.importorskip("webdataset")

import tiny_models  # noqa: E402
from audio_fixtures import synth_speechlike, write_audio  # noqa: E402

from audiotok.pipelines import cli, verify  # noqa: E402
from audiotok.transforms import dataset, lm  # noqa: E402
from audiotok.transforms.tokenizers import registry  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-job")
    models = root / "models"
    specs = [
        f"encodec-24k[model={tiny_models.save_encodec(models / 'encodec')}]",
        f"encodec-48k[model={tiny_models.save_encodec48(models / 'encodec48')}]",
        f"dac-16k[model={tiny_models.save_dac(models / 'dac', spread=0.1)},num_codebooks=4]",
        f"mimi[model={tiny_models.save_mimi(models / 'mimi')}]",
        f"hubert-l9-km500[model={tiny_models.save_ssl(models / 'hubert', 'hubert')},layer=2,k=8]",
        f"wav2vec2-kmeans[model={tiny_models.save_ssl(models / 'w2v', 'wav2vec2')},layer=1,k=8,dedup=true]",
        f"wavlm-emb[model={tiny_models.save_ssl(models / 'wavlm', 'wavlm', layer_norm=True)},layer=2]",
        "logmel",
    ]
    try:
        import snac  # noqa: F401

        specs.append(f"snac-24k[model={tiny_models.save_snac(models / 'snac')}]")
    except ImportError:
        pass
    corpus = root / "in"
    write_audio(corpus / "a.wav", synth_speechlike(2.6, 16000, seed=1), 16000, "wav")
    write_audio(corpus / "b.flac", synth_speechlike(1.3, 44100, channels=2, seed=2), 44100, "flac")
    write_audio(corpus / "c.ogg", synth_speechlike(3.1, 24000, seed=3), 24000, "ogg")
    out = root / "out"
    threads = torch.get_num_threads()
    try:
        code = cli.main(["tokenize", "--input", f"{corpus}/*", "--output", str(out), "--tokenizer", ",".join(specs),
                         "--segment-s", "2", "--min-segment-s", "0.5", "--kmeans-max-frames", "5000"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    index = json.loads((out / "index.json").read_text())
    urls = [str(out / row["url"]) for row in dataset.shard_rows(str(out), index)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    return specs, out, index, samples


def test_every_stream_is_in_every_sample_with_its_declared_shape(run):
    specs, out, index, samples = run
    tokenizers = registry.create_all(",".join(specs))
    expected = {spec.name: (tok, spec) for tok in tokenizers for spec in tok.streams}
    assert set(index["streams"]) == set(expected)
    assert len(samples) == 5 and index["totals"]["failures"] == 0  # 2 + 1 + 2 windows
    for sample in samples:
        meta = sample["json"]
        assert set(meta["streams"]) == set(expected)
        for name, (tok, spec) in expected.items():
            array = sample[f"{name}.npy"]
            n = round(meta["duration_s"] * tok.sample_rate)
            if not getattr(tok.config, "dedup", False):  # deduplicated units are fewer than the frames
                frames = tok.stream_num_frames(spec, n)
                assert array.shape[-1 if spec.kind == "codes" else 0] == frames, (name, array.shape, frames)
            assert str(array.dtype) == meta["streams"][name]["dtype"]
            if spec.codebook_size:
                assert array.min() >= 0 and array.max() < spec.codebook_size, name
            if spec.kind == "vectors":
                assert np.isfinite(array).all()
        units, durations = sample["wav2vec2-kmeans.npy"], sample["wav2vec2-kmeans-durations.npy"]
        w2v, w2v_spec = expected["wav2vec2-kmeans"]
        frames = w2v.stream_num_frames(w2v_spec, round(meta["duration_s"] * 16000))
        assert units.shape == durations.shape and (durations > 0).all() and durations.sum() == frames
        assert (np.diff(units.astype(int)) != 0).all()  # run-length deduplicated


def test_weights_reach_the_fingerprints_and_the_codebooks_were_fitted(run):
    specs, out, index, samples = run
    streams = index["streams"]
    for name in ("encodec-24k", "dac-16k", "mimi", "hubert-l9-km500", "wavlm-emb"):
        assert streams[name]["weights"], name
    books = sorted(p.name for p in (out / "codebooks").iterdir())
    assert len(books) == 2 and any("hubert" in b for b in books) and any("wav2vec2" in b for b in books)


def test_the_dataset_verifies_and_has_a_vocabulary_for_every_discrete_stream(run):
    specs, out, index, samples = run
    assert verify.verify_dataset(str(out)).problems == []
    vocab = lm.read_vocab(str(out))
    in_vocab = {s.name for s in vocab.streams}
    assert in_vocab == {name for name, spec in index["streams"].items() if spec.get("codebook_size")}
    assert {"wavlm-emb", "logmel", "wav2vec2-kmeans-durations"} <= set(vocab.not_in_vocab)
