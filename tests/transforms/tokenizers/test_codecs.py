"""Codec tokenizers (EnCodec, DAC, Mimi, SNAC) on tiny random-weight checkpoints of the real
architectures, loaded through ``model=FOLDER`` as users' checkpoints are."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import tiny_models  # noqa: E402
from audio_fixtures import synth_speechlike  # noqa: E402

from audiotok.transforms.tokenizers import chunking, codecs, registry  # noqa: E402

# Lengths that are not multiples of any hop: every batch below is padded.
SECONDS = (1.37, 0.61, 1.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("codecs")
    out = {
        "encodec-24k": tiny_models.save_encodec(root / "encodec"),
        "encodec-48k": tiny_models.save_encodec48(root / "encodec48"),
        "dac-16k": tiny_models.save_dac(root / "dac", spread=0.1),
        "mimi": tiny_models.save_mimi(root / "mimi"),
    }
    try:
        import snac  # noqa: F401

        out["snac-24k"] = tiny_models.save_snac(root / "snac")
    except ImportError:
        pass
    return out


_OPTIONS = {"dac-16k": "num_codebooks=4", "encodec-24k": "num_codebooks=8", "mimi": "num_codebooks=8"}
_cache: dict[str, codecs.CodecTokenizer] = {}


def codec(folders, name: str, **options) -> codecs.CodecTokenizer:
    """The tokenizer ``name`` on its tiny checkpoint, loaded once per options."""
    if name.startswith("snac"):
        pytest.importorskip("snac")
    opts = [f"model={folders[name]}"] + ([_OPTIONS[name]] if name in _OPTIONS else [])
    opts += [f"{k}={v}" for k, v in options.items()]
    spec = f"{name}[{','.join(opts)}]"
    if spec not in _cache:
        _cache[spec] = registry.create(spec).load()
    return _cache[spec]


def audios(tok, seconds=SECONDS):
    return [synth_speechlike(s, tok.sample_rate, seed=i)[0] for i, s in enumerate(seconds)]


def _count_forwards(tok, monkeypatch) -> list:
    """Records the input shape of every forward pass ``tok`` makes."""
    forwards = []
    original = type(tok)._forward

    def counting(self, x, lengths):
        forwards.append(tuple(x.shape))
        return original(self, x, lengths)

    monkeypatch.setattr(type(tok), "_forward", counting)
    return forwards


ALL = ["encodec-24k", "encodec-48k", "dac-16k", "mimi", "snac-24k"]
INVARIANT = ["encodec-24k", "mimi"]
NOT_INVARIANT = ["encodec-48k", "dac-16k", "snac-24k"]


@pytest.mark.parametrize("name", ALL)
def test_streams_match_their_specs(folders, name):
    tok = codec(folders, name)
    for audio, out in zip(audios(tok), tok.encode_batch(audios(tok))):
        assert set(out) == {s.name for s in tok.streams}
        for spec in tok.streams:
            array = out[spec.name]
            assert array.shape == spec.shape(tok.stream_num_frames(spec, len(audio)))
            assert array.dtype == np.dtype(spec.dtype)
            if spec.kind == "codes":
                assert 0 <= array.min() and array.max() < spec.codebook_size
                assert len(np.unique(array)) > 1  # the tiny codebooks are in use


def test_frame_counts_follow_the_hop(folders):
    tok = codec(folders, "encodec-24k")
    assert tok.num_frames(24000) == 75 and tok.num_frames(24001) == 76 and tok.num_frames(0) == 0
    assert codec(folders, "mimi").num_frames(24000) == 13  # 12.5 Hz: the last frame covers a partial hop
    assert tok.encode(np.zeros(0, np.float32))["encodec-24k"].shape == (8, 0)


def test_declared_invariance(folders):
    declared = {name: codec(folders, name).padding_invariant for name in ALL if name in folders}
    assert declared == {n: n in INVARIANT for n in declared}


@pytest.mark.parametrize("name", INVARIANT)
def test_padded_batch_equals_one_at_a_time(folders, name, monkeypatch):
    """Causal codecs: segments of different lengths padded into one forward pass give the
    codes each gives alone, bit for bit."""
    tok = codec(folders, name)
    forwards = _count_forwards(tok, monkeypatch)
    monkeypatch.setattr(chunking, "BATCH_ON_CPU", True)
    batched = tok.encode_batch(audios(tok))
    assert len(forwards) == 1 and forwards[0][0] == len(SECONDS)  # one padded batch
    for audio, out in zip(audios(tok), batched):
        np.testing.assert_array_equal(out[tok.name], tok.encode(audio)[tok.name])


def test_one_forward_pass_per_chunk_on_the_cpu_by_default(folders, monkeypatch):
    tok = codec(folders, "encodec-24k")
    forwards = _count_forwards(tok, monkeypatch)
    tok.encode_batch(audios(tok))
    assert [f[0] for f in forwards] == [1, 1, 1]


@pytest.mark.parametrize("name", NOT_INVARIANT)
def test_padding_changes_codes_of_models_declared_not_invariant(folders, name, monkeypatch):
    """Non-causal codecs: padding a segment (as a mixed-length batch would) changes its codes,
    which is why they declare ``padding_invariant = False``; batches then group equal padded
    lengths (here the two 0.6 s segments) and equal the one-at-a-time codes again."""
    tok = codec(folders, name)
    items = [synth_speechlike(s, tok.sample_rate, seed=i)[0] for i, s in enumerate((1.9, 0.6, 0.6))]
    monkeypatch.setattr(chunking, "BATCH_ON_CPU", True)
    single = [tok.encode(a) for a in items]
    grouped = tok.encode_batch(items)
    for s, g in zip(single, grouped):
        for stream in s:
            np.testing.assert_array_equal(g[stream], s[stream])
    monkeypatch.setattr(type(tok), "padding_invariant", property(lambda self: True))
    padded = tok.encode_batch(items)
    changed = sum(int(np.sum(padded[1][s.name] != single[1][s.name])) for s in tok.streams)
    assert changed > 0, f"padding left {name}'s codes unchanged; the tiny model hides the effect"


@pytest.mark.parametrize("name", ["encodec-24k", "dac-16k", "mimi", "snac-24k"])
def test_long_inputs_are_chunked_and_stitched(folders, name, record_property):
    """A segment longer than ``chunk_s`` is encoded in overlapping chunks; away from the seams
    the stitched codes are the whole-segment codes."""
    base = codec(folders, name)
    chunked = codec(folders, name, chunk_s=1.5, overlap_s=0.5)
    audio = synth_speechlike(4.3, base.sample_rate, seed=7)[0]
    plan = chunked.chunk_plan(len(audio))
    assert len(plan) > 2
    a, b = chunked.encode(audio), base.encode(audio)
    spec = chunked.streams[-1] if name.startswith("snac") else chunked.streams[0]
    hop = chunked.stream_hops()[spec.name]
    agree = np.all(a[spec.name] == b[spec.name], axis=0)
    assert agree.shape[0] == chunked.stream_num_frames(spec, len(audio))
    far = np.ones_like(agree)
    far[chunking.seam_frames(plan, hop, radius=max(2, round(0.25 * chunked.sample_rate / hop)))] = False
    record_property("agreement_far_from_seams", float(agree[far].mean()))
    record_property("agreement_all_frames", float(agree.mean()))
    assert agree[far].mean() >= 0.95, f"{name}: {agree[far].mean():.3f} of frames away from seams agree"


@pytest.mark.parametrize("name", ALL)
def test_decode_gives_audio_of_the_segment_length(folders, name):
    tok = codec(folders, name)
    audio = synth_speechlike(1.3, tok.sample_rate, seed=2)[0]
    decoded = tok.decode(tok.encode(audio), num_samples=len(audio))
    assert decoded.shape == (tok.arch.channels, len(audio))
    assert decoded.dtype == np.float32 and np.isfinite(decoded).all()
    with pytest.raises(ValueError, match="needs the stream"):
        tok.decode({})


def test_options_are_checked_against_the_architecture(folders):
    with pytest.raises(ValueError, match=r"num_codebooks must be in \[1, 8\]"):
        registry.create(f"mimi[model={folders['mimi']},num_codebooks=9]")
    with pytest.raises(ValueError, match="overlap_s 0"):
        registry.create(f"encodec-48k[model={folders['encodec-48k']},overlap_s=0.2]")
    with pytest.raises(ValueError, match="is a 'dac' checkpoint"):
        registry.create(f"encodec-24k[model={folders['dac-16k']}]")
    with pytest.raises(ValueError, match="model= is required"):
        registry.create("mimi[model=]")


def test_presets_build_without_weights():
    """Registered names know their real geometry without reading anything."""
    tok = registry.create("encodec-24k")
    assert (tok.sample_rate, tok.streams[0].frame_rate_hz, tok.streams[0].num_codebooks) == (24000, 75.0, 8)
    assert registry.create("mimi").streams[0].frame_rate_hz == 12.5
    assert registry.create("dac-44k").streams[0].num_codebooks == 9
    assert [s.name for s in registry.create("snac-24k").streams] == ["snac-24k-s0", "snac-24k-s1", "snac-24k-s2"]
    assert not registry.create("encodec-48k").padding_invariant


def test_fingerprint_follows_the_weights(folders, tmp_path):
    a = registry.create(f"encodec-24k[model={folders['encodec-24k']}]")
    other = tiny_models.save_encodec(tmp_path / "other", seed=1)
    b = registry.create(f"encodec-24k[model={other}]")
    assert a.weights_identity().startswith("sha256:") and a.weights_identity() != b.weights_identity()
    assert a.fingerprint() != b.fingerprint()
    assert a.describe()["weights"] == a.weights_identity()


def test_snac_from_a_torch_file_of_tensors(tmp_path):
    pytest.importorskip("snac")
    folder = tiny_models.save_snac(tmp_path / "snac-bin", safetensors=False)
    tok = registry.create(f"snac-24k[model={folder}]").load()
    assert tok.encode(np.zeros(4000, np.float32))["snac-24k-s2"].shape == (1, 8)


def test_codes_match_the_libraries_own_encode(folders):
    """The adapters reproduce each library's reference encode on the same (frame-padded) input."""
    for name in ("encodec-24k", "mimi", "dac-16k", "snac-24k"):
        if name not in folders:
            continue
        tok = codec(folders, name)
        audio = synth_speechlike(1.2, tok.sample_rate, seed=5)[0]
        ours = tok.encode(audio)
        width = -(-len(audio) // tok.arch.align) * tok.arch.align
        x = torch.zeros(1, 1, width)
        x[0, 0, :len(audio)] = torch.from_numpy(audio)
        model = tok._model
        with torch.inference_mode():
            if name == "encodec-24k":
                bandwidth = max(model.config.target_bandwidths)
                ref = {name: model.encode(x, bandwidth=bandwidth).audio_codes[0]}
            elif name == "mimi":
                ref = {name: model.encode(x, num_quantizers=8).audio_codes}
            elif name == "dac-16k":
                ref = {name: model.encode(x, n_quantizers=4).audio_codes}
            else:
                ref = {f"{name}-s{i}": c[:, None] for i, c in enumerate(model.encode(x))}
        for stream, codes in ref.items():
            frames = ours[stream].shape[-1]
            np.testing.assert_array_equal(ours[stream], codes[0, :, :frames].numpy(), err_msg=f"{name} {stream}")
