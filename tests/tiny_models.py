"""Tiny random-weight checkpoints of the real architectures, saved the way users' checkpoints are.

Each ``save_*`` builds a model with a few channels and layers (seeded; the global RNG is left
alone), writes ``config.json`` + weights into a folder, and returns the folder: tokenizers load
it through ``model=FOLDER`` exactly as they load a downloaded checkpoint. No network.

Frame grids are the real ones (EnCodec 320-sample hop, Mimi 1920, HuBERT 320), so frame counts
in tests match the real models'.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Codebooks of 64 entries: codes fit int16 and random latents still spread over many entries.
CODEBOOK_SIZE = 64


def _seeded():
    """Leaves the global RNG as it was."""
    return torch.random.fork_rng(devices=[])


def _probe_audio(sample_rate: int, channels: int = 1, seconds: float = 2.0) -> torch.Tensor:
    """float32 [1, channels, samples]: speech-like audio whose latents seed the codebooks."""
    from audio_fixtures import synth_speechlike

    audio = torch.from_numpy(synth_speechlike(seconds, sample_rate, seed=123)[0])
    return audio[None, None].repeat(1, channels, 1)


def _fill_codebooks(layers, residual: torch.Tensor, set_embed, seed: int) -> None:
    """Sets each residual codebook to latent frames of its stage (plus a little noise), the way
    k-means-initialised codebooks start: EnCodec's and Mimi's random init is all zeros, which
    would make every code 0."""
    gen = torch.Generator().manual_seed(seed)
    frames = residual[0].T  # [T, D]
    for layer in layers:
        size = layer.codebook.codebook_size if hasattr(layer.codebook, "codebook_size") else CODEBOOK_SIZE
        pick = torch.randint(0, frames.shape[0], (size,), generator=gen)
        noise = torch.randn(size, frames.shape[1], generator=gen) * frames.std() * 0.1
        set_embed(layer.codebook, frames[pick] + noise)
        indices = layer.encode(frames.T[None])
        frames = frames - layer.decode(indices)[0].T


def _set_encodec_embed(codebook, vectors: torch.Tensor) -> None:
    codebook.embed.copy_(vectors)
    codebook.embed_avg.copy_(vectors)


def _set_mimi_embed(codebook, vectors: torch.Tensor) -> None:
    codebook.embed_sum.copy_(vectors)
    codebook.cluster_usage.fill_(1.0)
    codebook._embed = None


def _spread(model: torch.nn.Module, seed: int, std: float) -> None:
    """Re-draws every floating parameter from N(0, std): default inits of tiny models squash
    activations so much that the effects tests look for (padding, context) vanish."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _save_hf(model, folder: Path, safetensors: bool = True) -> Path:
    """``save_pretrained``; with ``safetensors=False`` the weights become a torch file of tensors
    (``pytorch_model.bin``, as older Hub repositories have them)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    if not safetensors:
        from safetensors.torch import load_file

        for path in folder.glob("*.safetensors"):
            torch.save(load_file(str(path)), folder / "pytorch_model.bin")
            path.unlink()
    return folder


def save_encodec(folder: Path, *, seed: int = 0, num_codebooks: int = 8) -> Path:
    """EnCodec 24 kHz-like (causal, weight norm, LSTM): hop 320, K <= ``num_codebooks``."""
    from transformers import EncodecConfig

    bits = 6  # log2(64)
    top = num_codebooks * 75 * bits / 1000
    config = EncodecConfig(sampling_rate=24000, num_filters=4, hidden_size=16, codebook_size=CODEBOOK_SIZE,
                           codebook_dim=16, num_lstm_layers=1, target_bandwidths=[top / 4, top / 2, top])
    return _save_hf(_encodec_model(config, seed), folder)


def _encodec_model(config, seed: int):
    from transformers import EncodecModel

    with _seeded(), torch.no_grad():
        torch.manual_seed(seed)
        model = EncodecModel(config).eval()
        latents = model.encoder(_probe_audio(config.sampling_rate, config.audio_channels))
        _fill_codebooks(model.quantizer.layers, latents, _set_encodec_embed, seed)
    return model


def save_encodec48(folder: Path, *, seed: int = 0) -> Path:
    """EnCodec 48 kHz-like: stereo, non-causal, time group norm, 1 s windows scaled to unit RMS."""
    from transformers import EncodecConfig

    config = EncodecConfig(sampling_rate=48000, audio_channels=2, normalize=True, chunk_length_s=1.0, overlap=0.01,
                           norm_type="time_group_norm", use_causal_conv=False, num_filters=4, hidden_size=16,
                           codebook_size=CODEBOOK_SIZE, codebook_dim=16, num_lstm_layers=1,
                           target_bandwidths=[0.9, 1.8, 3.6, 7.2])
    return _save_hf(_encodec_model(config, seed), folder)


def save_dac(folder: Path, *, seed: int = 0, spread: float | None = None, sample_rate: int = 16000) -> Path:
    """DAC 16 kHz-like (non-causal): hop 320, 4 codebooks (at ``sample_rate``: the same network
    declaring another input rate)."""
    from transformers import DacConfig, DacModel

    config = DacConfig(encoder_hidden_size=4, decoder_hidden_size=16, n_codebooks=4, codebook_size=CODEBOOK_SIZE,
                       codebook_dim=4, downsampling_ratios=[2, 4, 5, 8], sampling_rate=sample_rate)
    with _seeded():
        torch.manual_seed(seed)
        model = DacModel(config).eval()
    if spread:
        _spread(model, seed, spread)
    return _save_hf(model, folder)


def save_mimi(folder: Path, *, seed: int = 0) -> Path:
    """Mimi-like (causal convs, causal sliding-window transformer): hop 1920 (12.5 Hz), 8 codebooks."""
    from transformers import MimiConfig, MimiModel

    config = MimiConfig(hidden_size=32, num_filters=4, codebook_size=CODEBOOK_SIZE, codebook_dim=16, num_quantizers=8,
                        vector_quantization_hidden_dimension=16, num_hidden_layers=2, intermediate_size=64,
                        num_attention_heads=2, num_key_value_heads=2, head_dim=16, upsample_groups=32,
                        sliding_window=20)
    with _seeded(), torch.no_grad():
        torch.manual_seed(seed)
        model = MimiModel(config).eval()
        latents = model.encoder(_probe_audio(config.sampling_rate)).latents
        for rvq in (model.quantizer.semantic_residual_vector_quantizer,
                    model.quantizer.acoustic_residual_vector_quantizer):
            _fill_codebooks(rvq.layers, rvq.input_proj(latents) if rvq.input_proj is not None else latents,
                            _set_mimi_embed, seed)
    return _save_hf(model, folder)


def snac_config(window: int | None = None) -> dict:
    """A SNAC config: 24 kHz, hop 512 (the real snac_24khz grid), 3 scales."""
    return {"sampling_rate": 24000, "encoder_dim": 4, "encoder_rates": [2, 4, 8, 8], "decoder_dim": 32,
            "decoder_rates": [8, 8, 4, 2], "attn_window_size": window, "codebook_size": CODEBOOK_SIZE,
            "codebook_dim": 4, "vq_strides": [4, 2, 1], "noise": True, "depthwise": True}


def save_snac(folder: Path, *, seed: int = 0, safetensors: bool = True) -> Path:
    """SNAC from the ``snac`` package's own classes: state_dict as safetensors (or a torch
    file of tensors only) + config.json, as SNAC's Hub repositories lay it out."""
    import snac

    config = snac_config()
    with _seeded(), torch.no_grad():
        torch.manual_seed(seed)
        model = snac.SNAC(**config).eval()
        fill_snac_codebooks(model, _probe_audio(config["sampling_rate"]), seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def fill_snac_codebooks(model, audio: torch.Tensor, seed: int = 0) -> None:
    """Sets each SNAC scale's codebook to projected latent frames of ``audio`` (+ noise)."""
    with torch.no_grad():
        residual = model.encoder(model.preprocess(audio))
        gen = torch.Generator().manual_seed(seed)
        for q in model.quantizer.quantizers:
            pooled = torch.nn.functional.avg_pool1d(residual, q.stride, q.stride) if q.stride > 1 else residual
            frames = q.in_proj(pooled)[0].T
            pick = torch.randint(0, frames.shape[0], (q.codebook_size,), generator=gen)
            q.codebook.weight.copy_(frames[pick] + torch.randn(q.codebook_size, frames.shape[1], generator=gen) * 0.1)
            residual = residual - q(residual)[0]


def save_ssl(folder: Path, model_type: str = "hubert", *, layer_norm: bool = False, seed: int = 0,
             num_layers: int = 2, safetensors: bool = True) -> Path:
    """HuBERT / WavLM / wav2vec2 with 2 layers and 32 dims; the real 7-layer front end (hop 320,
    400-sample frames). ``layer_norm``: the large models' front end and pre-norm encoder."""
    import transformers

    config_class, model_class = {
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
    }[model_type]
    kwargs = dict(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                  feat_extract_norm="layer" if layer_norm else "group", do_stable_layer_norm=layer_norm)
    if model_type == "wavlm":
        kwargs.update(num_buckets=32, max_bucket_distance=100)
    with _seeded():
        torch.manual_seed(seed)
        model = model_class(config_class(**kwargs)).eval()
    return _save_hf(model, folder, safetensors=safetensors)



# Tokenizer input rates: the registry presets' (16, 24, 32, 44.1, 48 kHz) and 22.05 kHz, which a
# checkpoint's config or ``logmel[sample_rate=22050]`` may ask for.
REGISTRY_RATES = (16000, 22050, 24000, 32000, 44100, 48000)


def one_spec_per_rate(root: Path) -> dict[int, str]:
    """Rate -> a tokenizer spec taking that rate, each with its own stream name, on tiny
    checkpoints saved under ``root``: DAC networks at 16, 32 and 44.1 kHz, EnCodec at 24 and
    48 kHz, log-mel at 22.05 kHz."""
    return {
        16000: f"dac-16k[model={save_dac(root / 'dac16', spread=0.1)},num_codebooks=4]",
        22050: "logmel[sample_rate=22050]",
        24000: f"encodec-24k[model={save_encodec(root / 'encodec')}]",
        32000: f"dac-24k[model={save_dac(root / 'dac32', spread=0.1, sample_rate=32000)},num_codebooks=4]",
        44100: f"dac-44k[model={save_dac(root / 'dac44', spread=0.1, sample_rate=44100)},num_codebooks=4]",
        48000: f"encodec-48k[model={save_encodec48(root / 'encodec48')}]",
    }
