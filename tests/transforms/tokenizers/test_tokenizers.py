"""The tokenizer contract, the registry, logmel, mfcc-kmeans and k-means."""

from __future__ import annotations

import numpy as np
import pytest

from audio_fixtures import synth_speechlike
from audiotok.transforms.tokenizers import kmeans, registry
from audiotok.transforms.tokenizers.spectral import LogMel, MfccKMeans


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    return synth_speechlike(seconds, 16000, seed=seed)[0]


def fitted_codebook(tmp_path, k: int = 8) -> str:
    tok = registry.create(f"mfcc-kmeans[k={k}]")
    feats = np.concatenate(tok.features([speech(3, s) for s in range(3)]))
    result = kmeans.fit(feats, k, seed=0)
    meta = kmeans.describe_fit(result, len(feats), 0, {"features": tok.feature_fingerprint()})
    path = tmp_path / f"km{k}.safetensors"
    path.write_bytes(kmeans.Codebook(result.centroids, meta).to_bytes())
    return str(path)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'; known: .*logmel.*mfcc-kmeans"):
        registry.create("nope")


def test_spec_parsing():
    assert registry.split_specs("logmel,mfcc-kmeans[k=5,codebook=gs://b/c.st],x") == [
        "logmel", "mfcc-kmeans[k=5,codebook=gs://b/c.st]", "x"]
    assert registry.parse_spec("mfcc-kmeans[k=5, dedup=true]") == ("mfcc-kmeans", {"k": "5", "dedup": "true"})
    for bad in ["a[k=1", "a]", "a[k]", "a,,b"]:
        with pytest.raises(ValueError):
            registry.create_all(bad)


def test_options_are_typed_and_checked():
    tok = registry.create("mfcc-kmeans[k=50,dedup=yes,hop_ms=20]")
    assert tok.config.k == 50 and tok.config.dedup is True and tok.frame_rate_hz == 50
    with pytest.raises(ValueError, match="expects int"):
        registry.create("mfcc-kmeans[k=many]")
    with pytest.raises(ValueError, match="unknown option"):
        registry.create("logmel[colour=red]")
    with pytest.raises(ValueError, match="refusing"):
        registry.create("mfcc-kmeans[codebook=pipe:cat /etc/passwd]")


def test_duplicate_streams_refused():
    with pytest.raises(ValueError, match="produced twice"):
        registry.create_all("logmel,logmel")


@pytest.mark.parametrize("seconds", [1.0, 2.37, 30.0])
def test_logmel_shape_matches_duration(seconds):
    tok = registry.create("logmel")
    out = tok.encode(speech(seconds))["logmel"]
    assert out.dtype == np.float16 and out.shape == (int(seconds * 16000) // 160, 80)
    assert np.isfinite(out).all()
    assert tok.streams[0].frame_rate_hz == 100


def test_logmel_batch_equals_single():
    tok = registry.create("logmel")
    audios = [speech(d, i) for i, d in enumerate([1.0, 2.5, 1.7])]
    batched = tok.encode_batch(audios)
    for audio, got in zip(audios, batched):
        np.testing.assert_array_equal(got["logmel"], tok.encode(audio)["logmel"])


def test_fingerprint_changes_with_config_and_codebook(tmp_path):
    a = registry.create("logmel").fingerprint()
    assert a == registry.create("logmel").fingerprint()
    assert a != registry.create("logmel[n_mels=64]").fingerprint()
    cb8 = fitted_codebook(tmp_path, 8)
    t1 = registry.create(f"mfcc-kmeans[k=8,codebook={cb8}]")
    other = tmp_path / "other.safetensors"
    book = kmeans.Codebook.from_bytes(open(cb8, "rb").read())
    other.write_bytes(kmeans.Codebook(book.centroids + 1, book.metadata).to_bytes())
    t2 = registry.create(f"mfcc-kmeans[k=8,codebook={other}]")
    assert t1.fingerprint() != t2.fingerprint()
    assert t1.describe()["weights"].startswith("codebook-sha256:")


def test_mfcc_kmeans_units(tmp_path):
    tok = registry.create(f"mfcc-kmeans[k=8,codebook={fitted_codebook(tmp_path)}]")
    audios = [speech(2.0, 5), speech(1.23, 6)]
    out = tok.encode_batch(audios)
    for audio, got in zip(audios, out):
        units = got["mfcc-kmeans"]
        assert units.dtype == np.int16 and units.shape == (len(audio) // 160,)
        assert 0 <= units.min() and units.max() < 8
        np.testing.assert_array_equal(units, tok.encode(audio)["mfcc-kmeans"])
    assert len(np.unique(out[0]["mfcc-kmeans"])) > 2


def test_mfcc_kmeans_dedup(tmp_path):
    tok = registry.create(f"mfcc-kmeans[k=8,dedup=true,codebook={fitted_codebook(tmp_path)}]")
    plain = registry.create(f"mfcc-kmeans[k=8,codebook={tok.config.codebook}]")
    audio = speech(2.0, 7)
    got = tok.encode(audio)
    runs, durations = got["mfcc-kmeans"], got["mfcc-kmeans-durations"]
    np.testing.assert_array_equal(np.repeat(runs, durations), plain.encode(audio)["mfcc-kmeans"])
    assert (runs[1:] != runs[:-1]).all()


def test_missing_codebook_is_a_clear_error():
    with pytest.raises(ValueError, match="fit-kmeans"):
        registry.create("mfcc-kmeans").encode(speech(1.0))


def test_codebook_from_other_features_refused(tmp_path):
    path = fitted_codebook(tmp_path, 8)
    with pytest.raises(ValueError, match="other features"):
        registry.create(f"mfcc-kmeans[k=8,cmvn=true,codebook={path}]").encode(speech(1.0))
    with pytest.raises(ValueError, match="k=8"):
        registry.create(f"mfcc-kmeans[k=9,codebook={path}]").encode(speech(1.0))


def test_codebook_file_refuses_non_codebooks(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        kmeans.Codebook.from_bytes(b"\x80\x04pickle")
    from safetensors.numpy import save

    with pytest.raises(ValueError, match="not an audiotok-kmeans"):
        kmeans.Codebook.from_bytes(save({"centroids": np.zeros((2, 2), np.float32)}))


def test_kmeans_recovers_clusters_deterministically():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    labels = rng.integers(0, 4, 2000)
    x = centers[labels] + rng.standard_normal((2000, 2)).astype(np.float32) * 0.5
    a = kmeans.fit(x, 4, seed=1)
    b = kmeans.fit(x, 4, seed=1)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    found = sorted(map(tuple, np.round(a.centroids).astype(int)))
    assert found == [(0, 0), (0, 10), (10, 0), (10, 10)]
    assigned = kmeans.assign(x, a.centroids)
    # Same partition as the true labels (up to renaming).
    assert len(set(zip(labels.tolist(), assigned.tolist()))) == 4


def test_kmeans_needs_enough_frames():
    with pytest.raises(ValueError, match="at least k=5"):
        kmeans.fit(np.zeros((3, 2), np.float32), 5)


def test_help_table_lists_every_registered_name():
    names = {row["tokenizer"] for row in registry.help_table()}
    assert {"logmel", "mfcc-kmeans"} <= names


def test_tokenizer_classes_registered():
    assert registry.entries()["logmel"].factory is LogMel
    assert registry.entries()["mfcc-kmeans"].factory is MfccKMeans


def test_codebook_bytes_are_canonical_and_load_with_safetensors():
    from safetensors.numpy import load

    meta = {f"key{i}": str(i) for i in range(20)}
    book = kmeans.Codebook(np.arange(12, dtype=np.float32).reshape(3, 4), meta)
    data = book.to_bytes()
    # The same bytes whatever order the metadata was given in (safetensors' own writer varies it).
    assert kmeans.Codebook(book.centroids, dict(reversed(list(meta.items())))).to_bytes() == data
    np.testing.assert_array_equal(load(data)["centroids"], book.centroids)
    again = kmeans.Codebook.from_bytes(data)
    assert again.metadata["key7"] == "7" and again.to_bytes() == data


def test_logmel_is_the_readme_definition():
    """What the README tells users to run with torchaudio gives logmel, within float16 rounding."""
    import torch
    import torchaudio

    audio = synth_speechlike(2.37, 16000, seed=5)[0]
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, f_min=0,
                                               f_max=None, n_mels=80, power=2.0, center=True, pad_mode="constant")
    expected = mel(torch.from_numpy(audio)).clamp(min=1e-10).log().T[:len(audio) // 160].numpy()
    got = LogMel(registry.create("logmel").config).encode(audio)["logmel"]
    assert got.shape == expected.shape == (len(audio) // 160, 80)
    assert np.array_equal(got, expected.astype(np.float16))
