"""Every stream declares its frame timing (``frame0_center_s``, ``frame_rate_hz``), and an
impulse lands where the declaration says.

An impulse at sample ``s`` of low noise is encoded, and the response (how much each frame's
output or latent moves) is compared with the frame the declaration puts ``s`` in:

* spectral streams and the SSL front end respond only to frames whose window holds ``s``; the
  response peaks at the declared frame, exactly;
* codecs are learned stacks whose peak, with the random weights of tiny checkpoints, says
  nothing; their receptive field does: a causal codec's first responding frame is the declared
  one, and a non-causal codec's response is centred on it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import tiny_models  # noqa: E402

from audiotok.transforms.tokenizers import registry  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    root = tmp_path_factory.mktemp("timing")
    out = {
        "encodec-24k": f"encodec-24k[model={tiny_models.save_encodec(root / 'encodec')}]",
        "encodec-48k": f"encodec-48k[model={tiny_models.save_encodec48(root / 'encodec48')}]",
        "dac-16k": f"dac-16k[model={tiny_models.save_dac(root / 'dac', spread=0.1)},num_codebooks=4]",
        "mimi": f"mimi[model={tiny_models.save_mimi(root / 'mimi')}]",
        "hubert-emb": f"hubert-emb[model={tiny_models.save_ssl(root / 'hubert', 'hubert')},layer=1]",
    }
    try:
        import snac  # noqa: F401

        out["snac-24k"] = f"snac-24k[model={tiny_models.save_snac(root / 'snac')}]"
    except ImportError:
        pass
    return out


def noise(n: int) -> np.ndarray:
    return (1e-3 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)


def declared_frame(spec, s: int, rate: int) -> int:
    """The frame whose declared centre is nearest to sample ``s`` (its middle: ``(s + 0.5) / rate``)."""
    return int(np.floor(((s + 0.5) / rate - spec.frame0_center_s) * spec.frame_rate_hz + 0.5))


def response(outputs, base) -> np.ndarray:
    """Per frame, how far ``outputs`` [T, D] moved from ``base`` [T, D]."""
    return np.linalg.norm(np.asarray(outputs, np.float64) - np.asarray(base, np.float64), axis=1)


@pytest.mark.parametrize("name", ["logmel", "mfcc-kmeans"])
@pytest.mark.parametrize("rate", [16000, 22050])
def test_spectral_response_peaks_at_the_declared_frame(name, rate):
    tok = registry.create(f"{name}[sample_rate={rate}]").load()
    (spec,) = [s for s in tok.streams if s.kind in ("vectors", "units")][:1]
    features = (lambda a: tok.encode(a)[name].astype(np.float32)) if name == "logmel" else (
        lambda a: tok.features([a])[0])
    n = rate
    base = features(noise(n))
    hop = round(rate / spec.frame_rate_hz)
    # Impulses a quarter and three quarters of a hop after a frame centre: mfcc-kmeans version 1,
    # centred half a hop late, put the first of each pair one frame early.
    for s in (37 * hop + hop // 4, 37 * hop + 3 * hop // 4, 61 * hop - hop // 4):
        audio = noise(n)
        audio[s] += 0.5
        got = response(features(audio), base)
        assert int(got.argmax()) == declared_frame(spec, s, rate), (s, got.argmax())


def test_logmel_and_mfcc_kmeans_frames_share_centres():
    logmel, mfcc = registry.create("logmel"), registry.create("mfcc-kmeans")
    assert (logmel.streams[0].frame_rate_hz, logmel.streams[0].frame0_center_s) == (
        mfcc.streams[0].frame_rate_hz, mfcc.streams[0].frame0_center_s) == (100.0, 0.0)


def test_ssl_front_end_response_peaks_at_the_declared_frame(specs):
    tok = registry.create(specs["hubert-emb"]).load()
    spec = tok.streams[0]
    front_end = tok.backbone._model.feature_extractor
    n = 16000

    def frames(audio):
        with torch.no_grad():
            return front_end(torch.from_numpy(audio)[None])[0].T.numpy()

    base = frames(noise(n))
    assert base.shape[0] == tok.num_frames(n)
    for s in (20 * 320 + 200, 20 * 320 + 100, 33 * 320 + 300):  # inside one frame's 400 samples only
        audio = noise(n)
        audio[s] += 0.5
        got = response(frames(audio), base)
        assert int(got.argmax()) == declared_frame(spec, s, 16000)
        # The others move only through the first layer's group norm over time.
        assert np.count_nonzero(got > 0.05 * got.max()) == 1


def codec_latents(tok, audio: np.ndarray) -> np.ndarray:
    """The encoder's continuous output [T, D] (before quantization) for one mono input."""
    align = tok.arch.align
    padded = np.zeros(-(-len(audio) // align) * align, np.float32)
    padded[:len(audio)] = audio
    x = torch.from_numpy(padded)[None, None].repeat(1, tok.arch.channels, 1)
    with torch.no_grad():
        out = tok._model.encoder(x)
    out = getattr(out, "latents", out)
    return out[0].T.numpy()[:tok.num_frames(len(audio))]


@pytest.mark.parametrize("name", ["encodec-24k", "encodec-48k", "dac-16k", "mimi", "snac-24k"])
def test_codec_response_sits_where_the_frames_are_declared(specs, name):
    if name not in specs:
        pytest.skip(f"{name}: its library is not installed")
    tok = registry.create(specs[name]).load()
    spec = tok.streams[-1] if name.startswith("snac") else tok.streams[0]  # the finest stream
    rate = tok.sample_rate
    n = 2 * rate
    base = codec_latents(tok, noise(n))
    hop = round(rate / spec.frame_rate_hz) if not name.startswith("snac") else tok.arch.hop_length
    for s in (int(0.6 * rate), int(0.6 * rate) + hop // 3, int(1.1 * rate) + 2 * hop // 3):
        audio = noise(n)
        audio[s] += 0.5
        got = response(codec_latents(tok, audio), base)
        assert got.shape[0] == base.shape[0]
        k = declared_frame(spec, s, rate)
        if tok.padding_invariant:  # causal: nothing moves before the frame that holds the impulse
            support = np.flatnonzero(got > 1e-6 * got.max())
            assert support[0] == k, (s, support[:3], k)
        else:  # the receptive field, above the few percent that time-wide normalisations spread
            support = np.flatnonzero(got > 0.1 * got.max())
            assert abs((support[0] + support[-1]) / 2 - k) <= 1, (s, support[0], support[-1], k)


def test_every_registered_stream_declares_its_timing():
    builtin = [name for name, entry in registry.entries().items()
               if entry.factory.__module__.startswith("audiotok.")]  # not the test modules' own
    assert len(builtin) >= 15
    for name in builtin:
        for spec in registry.create(name).streams:
            assert spec.frame0_center_s is not None and 0 <= spec.frame0_center_s < 1, (name, spec)
            assert "frame0_center_s" in spec.to_dict()
