"""SSL tokenizers (HuBERT, WavLM, wav2vec2): k-means units and embeddings, on tiny random-weight
checkpoints of the real architectures (2 layers, 32 dims, the real 320-sample front end)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import tiny_models  # noqa: E402
from audio_fixtures import synth_speechlike  # noqa: E402

from audiotok.pipelines import fit_kmeans  # noqa: E402
from audiotok.transforms.records import AudioRef, Segment  # noqa: E402
from audiotok.transforms.tokenize import tokenize_batch  # noqa: E402
from audiotok.transforms.tokenizers import chunking, registry, ssl, weights  # noqa: E402

SECONDS = (1.37, 0.61, 1.0)

# WavLM's attention hands torch a float mask with a bool padding mask (transformers' business).
pytestmark = [pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl")
    return {
        "hubert": tiny_models.save_ssl(root / "hubert", "hubert"),  # base-like: group norm front end
        "hubert-large": tiny_models.save_ssl(root / "hubert-large", "hubert", layer_norm=True),
        "wavlm-large": tiny_models.save_ssl(root / "wavlm-large", "wavlm", layer_norm=True),
        "wav2vec2": tiny_models.save_ssl(root / "wav2vec2", "wav2vec2", safetensors=False),
    }


_cache: dict = {}


def tok(spec: str):
    if spec not in _cache:
        _cache[spec] = registry.create(spec).load()
    return _cache[spec]


def speech(seconds=SECONDS, seed=0):
    return [synth_speechlike(s, 16000, seed=seed + i)[0] for i, s in enumerate(seconds)]


@pytest.fixture(scope="module")
def codebook(folders, tmp_path_factory):
    """A k=16 codebook fitted by fit-kmeans' own code on the tiny HuBERT-large's layer 2."""
    return _fit(f"hubert-kmeans[model={folders['hubert-large']},layer=2,k=16]",
                tmp_path_factory.mktemp("km") / "km16.safetensors")


def _fit(spec: str, output) -> str:
    config = fit_kmeans.FitConfig(spec=spec, output=str(output))  # accepts it: an SSL tokenizer is a KMeansTokenizer
    features = config.tokenizer().features(speech((2.0, 2.0, 2.0), seed=10))
    sampled = [rf for i, f in enumerate(features) for rf in fit_kmeans.sample_frames(f"seg{i}", f, 100, 0)]
    return fit_kmeans.write_codebook(sampled, config)


@pytest.mark.parametrize("kind", ["hubert", "hubert-large", "wavlm-large", "wav2vec2"])
def test_embeddings_shape_and_rate(folders, kind):
    name = {"hubert": "hubert-emb", "hubert-large": "hubert-emb", "wavlm-large": "wavlm-emb",
            "wav2vec2": "wav2vec2-emb"}[kind]
    t = tok(f"{name}[model={folders[kind]},layer=2]")
    assert t.sample_rate == 16000 and t.streams[0].frame_rate_hz == 50.0 and t.streams[0].dim == 32
    for audio, out in zip(speech(), t.encode_batch(speech())):
        assert out[name].shape == (t.num_frames(len(audio)), 32) and out[name].dtype == np.float16
    assert t.num_frames(16000) == 49 and t.num_frames(399) == 0
    assert t.encode(np.zeros(300, np.float32))[name].shape == (0, 32)


def test_units_from_a_codebook_fitted_by_fit_kmeans(folders, codebook):
    t = tok(f"hubert-kmeans[model={folders['hubert-large']},layer=2,k=16,codebook={codebook}]")
    out = t.encode_batch(speech())
    for audio, o in zip(speech(), out):
        units = o["hubert-kmeans"]
        assert units.dtype == np.int16 and units.shape == (t.num_frames(len(audio)),)
        assert 0 <= units.min() and units.max() < 16
    assert len(np.unique(np.concatenate([o["hubert-kmeans"] for o in out]))) > 4
    assert t.weights_identity().startswith("sha256:") and "+codebook-sha256:" in t.weights_identity()
    dedup = tok(f"hubert-kmeans[model={folders['hubert-large']},layer=2,k=16,codebook={codebook},dedup=true]")
    d = dedup.encode(speech()[0])
    assert int(d["hubert-kmeans-durations"].sum()) == len(out[0]["hubert-kmeans"])
    np.testing.assert_array_equal(np.repeat(d["hubert-kmeans"], d["hubert-kmeans-durations"]), out[0]["hubert-kmeans"])


def test_codebook_follows_the_weights_not_their_location(folders, codebook, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(folders["hubert-large"], moved)
    t = registry.create(f"hubert-kmeans[model={moved},layer=2,k=16,codebook={codebook}]")
    assert t.codebook.k == 16  # same files elsewhere: same features, the codebook is accepted
    other = tiny_models.save_ssl(tmp_path / "other", "hubert", layer_norm=True, seed=1)
    with pytest.raises(ValueError, match="fitted on other features"):
        _ = registry.create(f"hubert-kmeans[model={other},layer=2,k=16,codebook={codebook}]").codebook
    with pytest.raises(ValueError, match="fitted on other features"):
        _ = registry.create(f"hubert-kmeans[model={folders['hubert-large']},layer=1,k=16,codebook={codebook}]").codebook


def test_declared_invariance(folders):
    assert not tok(f"hubert-emb[model={folders['hubert']},layer=2]").padding_invariant  # group norm over time
    assert tok(f"hubert-emb[model={folders['hubert-large']},layer=2]").padding_invariant
    assert tok(f"wavlm-emb[model={folders['wavlm-large']},layer=2]").padding_invariant
    assert not registry.create("hubert-l9-km500").padding_invariant  # hubert-base-ls960, without loading it


@pytest.mark.parametrize("kind", ["hubert-large", "wavlm-large"])
def test_padded_batch_equals_one_at_a_time(folders, codebook, kind, monkeypatch):
    """Layer-norm front ends + attention masks: a padded batch gives each segment's units bit
    for bit, and its vectors to float16 rounding."""
    name = "hubert-emb" if kind == "hubert-large" else "wavlm-emb"
    emb = tok(f"{name}[model={folders[kind]},layer=2]")
    monkeypatch.setattr(chunking, "BATCH_ON_CPU", True)
    forwards = []
    original = emb.backbone._model.forward
    monkeypatch.setattr(emb.backbone._model, "forward", lambda x, **kw: forwards.append(x.shape) or original(x, **kw))
    batched = emb.encode_batch(speech())
    assert len(forwards) == 1 and forwards[0][0] == len(SECONDS)
    monkeypatch.setattr(emb.backbone._model, "forward", original)
    for audio, out in zip(speech(), batched):
        single = emb.encode(audio)[name].astype(np.float32)
        np.testing.assert_allclose(out[name].astype(np.float32), single, atol=2e-3 * max(1.0, np.abs(single).max()))
    if kind == "hubert-large":
        units = tok(f"hubert-kmeans[model={folders[kind]},layer=2,k=16,codebook={codebook}]")
        for audio, out in zip(speech(), units.encode_batch(speech())):
            np.testing.assert_array_equal(out["hubert-kmeans"], units.encode(audio)["hubert-kmeans"])


def test_padding_changes_features_of_models_declared_not_invariant(folders, monkeypatch):
    """The base models' group norm spans the padded time axis: padding changes every frame, so
    they declare ``padding_invariant = False`` and batch only equal lengths (then exact)."""
    name = "hubert-emb"
    t = tok(f"{name}[model={folders['hubert']},layer=2]")
    monkeypatch.setattr(chunking, "BATCH_ON_CPU", True)
    items = speech((1.4, 0.6, 0.6))
    single = [t.encode(a)[name] for a in items]
    for s, b in zip(single, t.encode_batch(items)):  # the two 0.6 s segments share a batch
        np.testing.assert_allclose(b[name].astype(np.float32), s.astype(np.float32), atol=2e-3)
    monkeypatch.setattr(ssl.SSLBackbone, "padding_invariant", property(lambda self: True))
    padded = t.encode_batch(items)
    assert np.abs(padded[1][name].astype(np.float32) - single[1].astype(np.float32)).max() > 0.05


def test_layer_is_the_transformer_layer_output(folders):
    """layer=L is hidden_states[L] of the whole model (fairseq's output_layer): pre-norm models
    never apply the encoder's final layer norm."""
    import transformers

    audio = torch.from_numpy(speech((1.0,))[0])[None]
    for kind in ("hubert", "hubert-large"):
        full = transformers.HubertModel.from_pretrained(str(folders[kind])).eval()
        with torch.inference_mode():
            hidden = full(audio, output_hidden_states=True).hidden_states
        for layer in (1, 2):
            ours = registry.create(f"hubert-emb[model={folders[kind]},layer={layer}]").load().backbone.features(
                [audio[0].numpy()])[0]
            np.testing.assert_allclose(ours, hidden[layer][0].numpy(), atol=1e-5, err_msg=f"{kind} layer {layer}")


def test_long_inputs_are_chunked_and_stitched(folders, codebook, record_property):
    spec = f"hubert-kmeans[model={folders['hubert-large']},layer=2,k=16,codebook={codebook}"
    whole, chunked = tok(spec + "]"), tok(spec + ",chunk_s=1.5,overlap_s=0.5]")
    audio = synth_speechlike(4.3, 16000, seed=3)[0]
    a, b = chunked.encode(audio)["hubert-kmeans"], whole.encode(audio)["hubert-kmeans"]
    assert a.shape == b.shape == (chunked.num_frames(len(audio)),)
    plan = chunking.plan_chunks(len(audio), 24000, 8000, 320)
    far = np.ones(len(a), bool)
    far[chunking.seam_frames(plan, 320, radius=12)] = False
    # A bidirectional transformer sees the whole chunk: context changes frames everywhere a little.
    record_property("units_agreement_far_from_seams", float((a == b)[far].mean()))
    assert (a == b)[far].mean() >= 0.8


def test_options_are_checked(folders):
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        registry.create(f"hubert-emb[model={folders['hubert']},layer=3]")
    with pytest.raises(ValueError, match="is a 'wavlm' checkpoint"):
        registry.create(f"hubert-emb[model={folders['wavlm-large']}]")
    with pytest.raises(ValueError, match="overlap_s must be >="):
        registry.create(f"hubert-emb[model={folders['hubert']},layer=1,overlap_s=0.001]")
    with pytest.raises(ValueError, match="k must be"):
        registry.create(f"hubert-kmeans[model={folders['hubert']},layer=1,k=1]")


def test_checkpoint_needing_pickle_is_refused_at_load(folders, tmp_path):
    import argparse

    folder = tmp_path / "unsafe"
    shutil.copytree(folders["wav2vec2"], folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "training_args": argparse.Namespace(lr=1e-4)}, folder / "pytorch_model.bin")
    with pytest.raises(weights.UnsafeCheckpointError, match="needs pickle"):
        registry.create(f"wav2vec2-emb[model={folder},layer=1]").load()


def test_mixed_streams_in_one_batch(folders, codebook, tmp_path):
    """units + codec codes + log-mel for the same segments, each at its own rate."""
    encodec = tiny_models.save_encodec(tmp_path / "encodec")
    tokenizers = registry.create_all(
        f"hubert-l9-km500[model={folders['hubert-large']},layer=2,k=16,codebook={codebook}],"
        f"encodec-24k[model={encodec}],logmel")
    for t in tokenizers:
        t.load()
    rate = max(t.sample_rate for t in tokenizers)
    segments = [Segment(key=f"seg-{i}", source=AudioRef(f"mem://{i}.wav"), start_s=0.0, end_s=s, sample_rate=rate,
                        audio=synth_speechlike(s, rate, seed=i)[0]) for i, s in enumerate((1.2, 0.8))]
    samples = tokenize_batch(tokenizers, segments)
    for sample, seg in zip(samples, segments):
        assert set(sample.streams) == {"hubert-l9-km500", "encodec-24k", "logmel"}, sample
        assert sample.streams["encodec-24k"].shape == (8, -(-len(seg.audio) // 320))
        assert sample.streams["hubert-l9-km500"].shape[0] == tokenizers[0].num_frames(round(seg.duration_s * 16000))
        assert sample.meta["streams"]["encodec-24k"]["weights"].startswith("sha256:")
