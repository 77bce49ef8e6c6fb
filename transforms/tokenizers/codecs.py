"""Family A: neural codecs. Audio -> residual-VQ codes int16 [K, T], and codes -> audio.

Adapters: EnCodec, DAC and Mimi through ``transformers``; SNAC through its own package
(multi-rate: one ``[1, T_i]`` stream per scale). Each reads its checkpoint through
``weights`` (Hub id, local folder, or gs:// / s3:// folder; safetensors or
``torch.load(weights_only=True)`` only) and imports its library in ``load``.

How a segment is encoded, for every codec:

1. It is cut into chunks of ``chunk_s`` overlapping by ``overlap_s`` (one chunk when it is
   shorter), on the frame grid (``chunking``).
2. Each chunk is zero-padded to a whole number of frames (``CodecArch.align`` samples), so no
   layer pads its input's end by reflection or replication: the padding is part of the token
   definition and identical whether the chunk is encoded alone or in a batch.
3. Chunks are batched: padded to the longest when the model is causal (``padding_invariant``:
   a frame never sees later samples), else only with chunks of the same padded length. On the
   CPU each chunk has its own forward pass (``chunking.BATCH_ON_CPU``), so codes never depend
   on what else was in the batch, to the last bit.
4. Codes of frames past the segment's end are dropped; chunks are stitched.

``num_frames(n) = ceil(n / hop)``: the last frame covers the segment's last partial hop.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from audiotok.transforms.tokenizers import base, chunking, weights
from audiotok.transforms.tokenizers.base import StreamSpec, Tokenizer, to_device
from audiotok.transforms.tokenizers.registry import register
from audiotok.transforms.tokenizers.weights import ModelConfig


@dataclasses.dataclass(frozen=True)
class CodecArch:
    """What a codec checkpoint's architecture implies for its tokens (read from config.json).

    Attributes:
        model_type: ``encodec``, ``dac``, ``mimi`` or ``snac``.
        sample_rate: input rate, Hz.
        hop_length: samples per frame of the finest stream.
        codebook_size: entries per codebook.
        max_codebooks: residual codebooks the checkpoint has.
        channels: input channels the model takes (mono input is repeated).
        causal: frames depend only on earlier samples (so right padding leaves them unchanged).
        scale_chunk: samples per normalisation window (EnCodec 48 kHz: each 1 s window is
            scaled to unit RMS, and its scale is a stream); None when the model does not.
        vq_strides: per stream, frames of the finest stream per frame of that stream (SNAC:
            coarse first); ``(1,)`` for single-rate codecs.
        align: inputs are zero-padded to a multiple of this many samples.
    """

    model_type: str
    sample_rate: int
    hop_length: int
    codebook_size: int
    max_codebooks: int
    channels: int = 1
    causal: bool = False
    scale_chunk: int | None = None
    vq_strides: tuple[int, ...] = (1,)
    align: int = 0

    def __post_init__(self) -> None:
        if not self.align:
            object.__setattr__(self, "align", self.hop_length * max(self.vq_strides))


@dataclasses.dataclass(frozen=True)
class CodecConfig(ModelConfig):
    """Options of the residual-VQ codecs (EnCodec, DAC, Mimi).

    Attributes:
        num_codebooks: K, the first K residual codebooks; bits per second are
            K x frame rate x log2(codebook size) (EnCodec 24 kHz: 8 codebooks = 6 kbps).
        (model, revision, sha256, chunk_s, overlap_s: see ``weights.ModelConfig``.)
    """

    num_codebooks: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_codebooks < 1:
            raise ValueError(f"num_codebooks must be >= 1. Found: {self.num_codebooks}")


@dataclasses.dataclass(frozen=True)
class SnacConfig(ModelConfig):
    """SNAC options: every scale is always encoded (see ``weights.ModelConfig``)."""


# Padded seconds of audio per forward pass at most: bounds memory when a long segment becomes
# many chunks (the Tokenize stage bounds batches of segments the same way, with batch_max_s).
FORWARD_MAX_S = 120.0


def _torch():
    import torch

    return torch


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(weights.install_hint("transformers", "models")) from None
    return transformers


class CodecTokenizer(Tokenizer):
    """Base of the codec adapters: chunking, batching, stitching, decoding.

    Subclasses set ``model_type`` and ``known`` (architectures of the Hub checkpoints their
    registered names default to, so building one reads nothing), and implement
    ``arch_from_config``, ``_build``, ``_forward`` and ``_decode_codes``.
    """

    family = base.CODEC
    model_type: ClassVar[str]
    known: ClassVar[Mapping[str, CodecArch]] = {}

    config: ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.checkpoint = config.checkpoint()
        self._model: Any = None
        self._device = "cpu"
        self.arch  # noqa: B018  (checks the options against the architecture now: config.json only)

    # ------------------------------------------------------------------ metadata

    @classmethod
    @abc.abstractmethod
    def arch_from_config(cls, config: Mapping[str, Any]) -> CodecArch:
        """The architecture a checkpoint's config.json describes."""

    @functools.cached_property
    def arch(self) -> CodecArch:
        known = self.known.get(self.config.model) if self.checkpoint.kind == "hub" else None
        arch = known or self.arch_from_config(self.checkpoint.read_config())
        if arch.model_type != self.model_type:
            raise ValueError(
                f"{self.config.model} is a {arch.model_type!r} checkpoint; {self.name} takes {self.model_type!r}")
        self._check_options(arch)
        return arch

    def _check_options(self, arch: CodecArch) -> None:
        k = getattr(self.config, "num_codebooks", None)
        if k is not None and not 1 <= k <= arch.max_codebooks:
            raise ValueError(f"num_codebooks must be in [1, {arch.max_codebooks}] for {self.config.model}. Found: {k}")
        if arch.scale_chunk is not None:
            chunk = round(self.config.chunk_s * arch.sample_rate)
            if chunk != arch.scale_chunk or self.config.overlap_s != 0:
                raise ValueError(
                    f"{self.config.model} encodes {arch.scale_chunk / arch.sample_rate:g} s windows, each with its own "
                    f"scale: chunk_s must be {arch.scale_chunk / arch.sample_rate:g} and overlap_s 0. "
                    f"Found: {self.config.chunk_s}, {self.config.overlap_s}")

    @property
    def padding_invariant(self) -> bool:  # type: ignore[override]
        return self.arch.causal

    @property
    def sample_rate(self) -> int:
        return self.arch.sample_rate

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    def stream_hops(self) -> dict[str, int]:
        """Stream name -> samples per frame."""
        hops = {self.name: self.arch.hop_length}
        if self.arch.scale_chunk:
            hops[f"{self.name}-scales"] = self.arch.scale_chunk
        return hops

    def frame0_center_s(self, hop: int) -> float:
        """Frame i of a stream with ``hop`` samples per frame stands for samples
        ``[i hop, (i + 1) hop)`` (what its decoder gives back), so it is centred half a hop in."""
        return hop / 2 / self.arch.sample_rate

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        a = self.arch
        specs = [StreamSpec(self.name, base.CODES, a.sample_rate / a.hop_length, "int16",
                            num_codebooks=self.num_codebooks, codebook_size=a.codebook_size,
                            frame0_center_s=self.frame0_center_s(a.hop_length))]
        if a.scale_chunk:
            specs.append(StreamSpec(f"{self.name}-scales", base.VECTORS, a.sample_rate / a.scale_chunk, "float16",
                                    dim=1, frame0_center_s=self.frame0_center_s(a.scale_chunk)))
        return tuple(specs)

    def num_frames(self, num_samples: int) -> int:
        return -(-num_samples // self.arch.hop_length)

    def stream_num_frames(self, stream: StreamSpec, num_samples: int) -> int:
        return -(-num_samples // self.stream_hops()[stream.name])

    def weights_identity(self) -> str | None:
        return self.checkpoint.identity()

    # ------------------------------------------------------------------ loading

    def load(self, device: str = "cpu") -> "CodecTokenizer":
        if self._loaded:
            return self
        resolved = weights.resolve(self.checkpoint)
        weights.check_loadable(resolved)
        model = self._build(resolved)
        found = self.arch_from_config(resolved.config())
        if found != self.arch:
            raise ValueError(
                f"{self.config.model}: the checkpoint's architecture {found} differs from the expected {self.arch}")
        self._model = model.eval().to(device)
        self._device = device
        self._loaded = True
        return self

    @abc.abstractmethod
    def _build(self, resolved: weights.ResolvedCheckpoint) -> Any:
        """The torch module, weights loaded (imports its library here)."""

    # ------------------------------------------------------------------ encoding

    def chunk_plan(self, num_samples: int) -> list[chunking.Chunk]:
        a = self.arch
        return chunking.plan_chunks(num_samples, round(self.config.chunk_s * a.sample_rate),
                                    round(self.config.overlap_s * a.sample_rate), a.align)

    def _encode_batch(self, audios: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        plans = [self.chunk_plan(len(audio)) for audio in audios]
        pieces = [np.ascontiguousarray(audio[c.start:c.end], dtype=np.float32) for audio, plan in zip(audios, plans)
                  for c in plan]
        encoded = self.encode_pieces(pieces)
        out, i = [], 0
        hops = self.stream_hops()
        for audio, plan in zip(audios, plans):
            mine, i = encoded[i:i + len(plan)], i + len(plan)
            result = {}
            for spec in self.streams:
                total = -(-len(audio) // hops[spec.name])
                joined = chunking.stitch([p[spec.name] for p in mine], plan, hops[spec.name], total)
                vectors = spec.kind == base.VECTORS
                result[spec.name] = joined.T.astype(np.float16) if vectors else joined.astype(np.int16)
            out.append(result)
        return out

    def encode_pieces(self, pieces: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Encodes chunks: per chunk, stream -> int64/float32 [K, frames] (frames on the last axis).

        Chunks are zero-padded to ``align``, then batched: any lengths together when the model
        is causal, equal padded lengths otherwise; ``FORWARD_MAX_S`` of padded audio per pass;
        one chunk per pass on the CPU (``chunking.BATCH_ON_CPU``).
        """
        torch = _torch()
        align = self.arch.align
        padded = [-(-max(len(p), 1) // align) * align for p in pieces]
        groups = chunking.forward_groups(padded, not self.padding_invariant,
                                         round(FORWARD_MAX_S * self.arch.sample_rate),
                                         chunking.max_pieces_per_pass(self._device))
        results: list[dict[str, np.ndarray]] = [{} for _ in pieces]
        hops = self.stream_hops()
        with torch.inference_mode():
            for group in groups:
                width = max(padded[i] for i in group)
                x = np.zeros((len(group), self.arch.channels, width), dtype=np.float32)
                for row, i in enumerate(group):
                    x[row, :, :len(pieces[i])] = pieces[i]
                lengths = [len(pieces[i]) for i in group]
                streams = self._forward(to_device(x, self._device), lengths)
                for name, tensor in streams.items():
                    array = tensor.cpu().numpy()
                    for row, i in enumerate(group):
                        results[i][name] = array[row, :, :-(-lengths[row] // hops[name])]
        return results

    @abc.abstractmethod
    def _forward(self, x, lengths: list[int]) -> dict[str, Any]:
        """Encodes a zero-padded batch.

        Args:
            x: float32 tensor [B, channels, samples], samples a multiple of ``align``.
            lengths: samples of each row before padding.

        Returns:
            stream name -> tensor [B, K, frames] (codes), or [B, D, frames] (vectors).
        """

    # ------------------------------------------------------------------ decoding

    def decode(self, streams: Mapping[str, np.ndarray], num_samples: int | None = None) -> np.ndarray:
        """Codes -> audio.

        Args:
            streams: this tokenizer's streams for one segment, as ``encode`` returns them.
            num_samples: trim the audio to this length (the segment's), when given.

        Returns:
            float32 [channels, samples] at ``sample_rate``.
        """
        if not self._loaded:
            self.load()
        missing = [s.name for s in self.streams if s.name not in streams]
        if missing:
            raise ValueError(f"{self.name} needs the stream(s) {', '.join(missing)} to decode")
        torch = _torch()
        with torch.inference_mode():
            audio = self._decode_codes({s.name: np.asarray(streams[s.name]) for s in self.streams})
        audio = audio.detach().cpu().float().numpy()
        if num_samples is None:
            return audio
        # Decoders may stop a few samples short of frames x hop (DAC's transposed convolutions).
        return np.pad(audio[:, :num_samples], ((0, 0), (0, max(0, num_samples - audio.shape[-1]))))

    @abc.abstractmethod
    def _decode_codes(self, streams: Mapping[str, np.ndarray]):
        """Tensor [channels, samples] from one segment's streams."""

    def _codes_tensor(self, codes: np.ndarray):
        torch = _torch()
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] > self.arch.max_codebooks:
            raise ValueError(
                f"{self.name} codes must be [K <= {self.arch.max_codebooks}, T]. Found shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.arch.codebook_size):
            raise ValueError(f"{self.name} codes must be in [0, {self.arch.codebook_size})")
        return torch.from_numpy(codes.astype(np.int64)).to(self._device)


def _from_pretrained(model_class, resolved: weights.ResolvedCheckpoint):
    return model_class.from_pretrained(
        resolved.directory, local_files_only=True, use_safetensors=resolved.weight_format == "safetensors",
        weights_only=True)


def _prod(values) -> int:
    return int(math.prod(int(v) for v in values))


# ============================================================================ EnCodec


def _encodec_arch(sample_rate: int, hop: int, codebook_size: int, max_bandwidth: float, channels: int,
                  causal: bool, chunk_s: float | None) -> CodecArch:
    frame_rate = math.ceil(sample_rate / hop)
    bits = math.ceil(math.log2(codebook_size))
    return CodecArch("encodec", sample_rate, hop, codebook_size, int(1000 * max_bandwidth // (frame_rate * bits)),
                     channels=channels, causal=causal,
                     scale_chunk=round(chunk_s * sample_rate) if chunk_s else None)


class Encodec(CodecTokenizer):
    """EnCodec (transformers ``EncodecModel``): codes int16 [K, T] at 75 Hz (24 kHz) or 150 Hz (48 kHz).

    The 24 kHz model is causal (padding-invariant). The 48 kHz model is not (its convolutions
    see both sides and it normalises with group norm over time); it also encodes 1 s windows
    each scaled to unit RMS, so it has a second stream ``<name>-scales`` float16 [windows, 1]
    that decoding multiplies back.
    """

    model_type = "encodec"
    version = "1"
    config_class = CodecConfig
    known = {
        "facebook/encodec_24khz": _encodec_arch(24000, 320, 1024, 24.0, 1, True, None),
        "facebook/encodec_48khz": _encodec_arch(48000, 320, 1024, 24.0, 2, False, 1.0),
    }

    @classmethod
    def arch_from_config(cls, config: Mapping[str, Any]) -> CodecArch:
        if config.get("model_type") != "encodec":
            return CodecArch(str(config.get("model_type")), 0, 1, 1, 1)
        normalize = bool(config.get("normalize", False))
        causal = (bool(config.get("use_causal_conv", True)) and config.get("norm_type", "weight_norm") == "weight_norm"
                  and not normalize)
        return _encodec_arch(
            int(config.get("sampling_rate", 24000)), _prod(config.get("upsampling_ratios", (8, 5, 4, 2))),
            int(config.get("codebook_size", 1024)),
            float(max(config.get("target_bandwidths", (1.5, 3.0, 6.0, 12.0, 24.0)))),
            int(config.get("audio_channels", 1)), causal, config.get("chunk_length_s") if normalize else None)

    def _build(self, resolved):
        return _from_pretrained(_import_transformers().EncodecModel, resolved)

    def _forward(self, x, lengths):
        torch = _torch()
        out = {}
        if self.arch.scale_chunk:
            n = torch.tensor(lengths, dtype=x.dtype, device=x.device)
            scale = (x.mean(1).pow(2).sum(-1) / n).sqrt() + 1e-8  # RMS of the real samples, as EnCodec does
            x = x / scale[:, None, None]
            out[f"{self.name}-scales"] = scale[:, None, None]
        embeddings = self._model.encoder(x)
        layers = self._model.quantizer.layers[:self.num_codebooks]
        out[self.name] = _rvq_encode([layer.codebook.embed for layer in layers], embeddings)
        return out

    def _decode_codes(self, streams):
        codes = self._codes_tensor(streams[self.name])
        if not self.arch.scale_chunk:
            return self._decode_window(codes)
        per_window = self.arch.scale_chunk // self.arch.hop_length
        scales = np.asarray(streams[f"{self.name}-scales"], dtype=np.float32).reshape(-1)
        windows = [self._decode_window(codes[:, i * per_window:(i + 1) * per_window]) * float(scale)
                   for i, scale in enumerate(scales)]
        return _torch().cat(windows, dim=-1)

    def _decode_window(self, codes):
        """codes [K, T] -> audio [channels, samples]."""
        embeddings = 0
        for layer, indices in zip(self._model.quantizer.layers, codes):
            embeddings = embeddings + layer.decode(indices[None])
        return self._model.decoder(embeddings)[0]


def _rvq_encode(codebooks, embeddings):
    """Residual VQ: embeddings float [B, D, T] -> codes int64 [B, K, T], one per codebook.

    Args:
        codebooks: float [entries, D] per stage (EnCodec's and Mimi's ``layer.codebook.embed``).
    """
    torch = _torch()
    residual = embeddings
    codes = []
    for embed in codebooks:
        indices = _nearest(residual, embed)
        residual = residual - torch.nn.functional.embedding(indices, embed).transpose(1, 2)
        codes.append(indices)
    return torch.stack(codes, dim=1)


_NEAREST_ROWS = 8192


def _nearest(x, embed):
    """Index of the nearest codebook entry for each frame: x [B, D, T], embed [C, D] -> [B, T].

    One formula for every batch size, in float64: the libraries' own quantizers switch
    algorithms with the number of rows (``torch.cdist`` past 25), and float32 distances round
    differently, so a padded batch could pick another entry at a near-tie.
    """
    torch = _torch()
    flat = x.transpose(1, 2).reshape(-1, x.shape[1]).double()
    e = embed.double()
    e_sq = (e * e).sum(1)[None, :]
    out = torch.empty(flat.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, flat.shape[0], _NEAREST_ROWS):
        block = flat[start:start + _NEAREST_ROWS]
        out[start:start + _NEAREST_ROWS] = (e_sq - 2.0 * block @ e.T).argmin(1)
    return out.view(x.shape[0], x.shape[2])


@register("encodec-24k", defaults={"model": "facebook/encodec_24khz", "num_codebooks": 8},
          weights="facebook/encodec_24khz; or model=DIR|URL")
class Encodec24k(Encodec):
    name = "encodec-24k"


@register("encodec-48k", defaults={"model": "facebook/encodec_48khz", "num_codebooks": 4, "chunk_s": 1.0,
                                   "overlap_s": 0.0},
          weights="facebook/encodec_48khz; or model=DIR|URL")
class Encodec48k(Encodec):
    name = "encodec-48k"


# ============================================================================ DAC


class Dac(CodecTokenizer):
    """Descript Audio Codec (transformers ``DacModel``): codes int16 [K, T], 1024-entry codebooks.

    Not padding-invariant (non-causal convolutions): batches hold chunks of one padded length.
    """

    model_type = "dac"
    version = "1"
    config_class = CodecConfig
    known = {
        "descript/dac_16khz": CodecArch("dac", 16000, 320, 1024, 12),
        "descript/dac_24khz": CodecArch("dac", 24000, 320, 1024, 32),
        "descript/dac_44khz": CodecArch("dac", 44100, 512, 1024, 9),
    }

    @classmethod
    def arch_from_config(cls, config):
        return CodecArch(str(config.get("model_type")), int(config.get("sampling_rate", 16000)),
                         _prod(config.get("downsampling_ratios", (2, 4, 8, 8))), int(config.get("codebook_size", 1024)),
                         int(config.get("n_codebooks", 9)))

    def _build(self, resolved):
        return _from_pretrained(_import_transformers().DacModel, resolved)

    def _forward(self, x, lengths):
        embeddings = self._model.encoder(x)
        return {self.name: self._model.quantizer(embeddings, n_quantizers=self.num_codebooks)[1]}

    def _decode_codes(self, streams):
        codes = self._codes_tensor(streams[self.name])
        latents = self._model.quantizer.from_codes(codes[None])[0]
        return self._model.decoder(latents)[0]


@register("dac-16k", defaults={"model": "descript/dac_16khz", "num_codebooks": 12},
          weights="descript/dac_16khz; or model=DIR|URL")
class Dac16k(Dac):
    name = "dac-16k"


@register("dac-24k", defaults={"model": "descript/dac_24khz", "num_codebooks": 32},
          weights="descript/dac_24khz; or model=DIR|URL")
class Dac24k(Dac):
    name = "dac-24k"


@register("dac-44k", defaults={"model": "descript/dac_44khz", "num_codebooks": 9},
          weights="descript/dac_44khz; or model=DIR|URL")
class Dac44k(Dac):
    name = "dac-44k"


# ============================================================================ Mimi


@register("mimi", defaults={"model": "kyutai/mimi", "num_codebooks": 8, "chunk_s": 60.0, "overlap_s": 20.0},
          weights="kyutai/mimi; or model=DIR|URL")
class Mimi(CodecTokenizer):
    """Mimi (transformers ``MimiModel``): codes int16 [K, T] at 12.5 Hz, 2048-entry codebooks;
    codebook 0 is the semantic (WavLM-distilled) one. Causal: padding-invariant.

    Its encoder transformer attends 250 frames (10 s) back, so the default overlap is 20 s: each
    chunk's kept frames have the whole window behind them and equal a whole-segment encode
    (measured: 100% of codes with 25 s chunks; 96% with 15 s chunks and 2 s of overlap).
    """

    name = "mimi"
    model_type = "mimi"
    version = "1"
    config_class = CodecConfig
    known = {"kyutai/mimi": CodecArch("mimi", 24000, 1920, 2048, 32, causal=True)}

    @classmethod
    def arch_from_config(cls, config):
        sample_rate = int(config.get("sampling_rate", 24000))
        seanet_hop = _prod(config.get("upsampling_ratios") or (8, 6, 5, 4))
        encodec_rate = math.ceil(sample_rate / seanet_hop)
        frame_rate = config.get("frame_rate") or sample_rate / (seanet_hop * 2)
        hop = seanet_hop * max(1, int(encodec_rate / frame_rate))
        return CodecArch(str(config.get("model_type")), sample_rate, hop, int(config.get("codebook_size", 2048)),
                         int(config.get("num_quantizers", 32)), causal=bool(config.get("use_causal_conv", True)))

    def _build(self, resolved):
        return _from_pretrained(_import_transformers().MimiModel, resolved)

    def _forward(self, x, lengths):
        latents = self._model.encoder(x).latents
        quantizer = self._model.quantizer
        codes = []
        remaining = self.num_codebooks
        # Mimi splits its codebooks: the first (semantic) ones, then the acoustic ones, each with
        # its own projection of the latents.
        for rvq in (quantizer.semantic_residual_vector_quantizer, quantizer.acoustic_residual_vector_quantizer):
            layers = rvq.layers[:remaining]
            remaining -= len(layers)
            if layers:
                projected = rvq.input_proj(latents) if rvq.input_proj is not None else latents
                codes.append(_rvq_encode([layer.codebook.embed for layer in layers], projected))
        return {self.name: _torch().cat(codes, dim=1)}

    def _decode_codes(self, streams):
        codes = self._codes_tensor(streams[self.name])
        return self._model.decode(codes[None]).audio_values[0]


# ============================================================================ SNAC


class Snac(CodecTokenizer):
    """SNAC (the ``snac`` package): one stream per scale, ``<name>-s0`` (coarsest) to
    ``<name>-s<N-1>`` (finest), each codes int16 [1, T_i], 4096-entry codebooks.

    Not padding-invariant (non-causal convolutions, windowed attention). Inputs are padded to
    a multiple of hop x lcm(coarsest stride, attention window), as SNAC itself does.
    """

    model_type = "snac"
    version = "1"
    config_class = SnacConfig
    known = {
        "hubertsiuzdak/snac_24khz": CodecArch("snac", 24000, 512, 4096, 3, vq_strides=(4, 2, 1), align=512 * 4),
        "hubertsiuzdak/snac_32khz": CodecArch("snac", 32000, 384, 4096, 4, vq_strides=(8, 4, 2, 1), align=384 * 32),
        "hubertsiuzdak/snac_44khz": CodecArch("snac", 44100, 384, 4096, 4, vq_strides=(8, 4, 2, 1), align=384 * 32),
    }

    @classmethod
    def arch_from_config(cls, config):
        # SNAC's config.json has no model_type: recognise it by its fields.
        if "vq_strides" not in config or "encoder_rates" not in config:
            return CodecArch(str(config.get("model_type")), 0, 1, 1, 1)
        hop = _prod(config["encoder_rates"])
        strides = tuple(int(s) for s in config["vq_strides"])
        window = config.get("attn_window_size") or 1
        return CodecArch("snac", int(config.get("sampling_rate", 44100)), hop, int(config.get("codebook_size", 4096)),
                         len(strides), vq_strides=strides, align=hop * math.lcm(strides[0], int(window)))

    @property
    def num_codebooks(self) -> int:
        return 1

    def stream_hops(self) -> dict[str, int]:
        return {f"{self.name}-s{i}": self.arch.hop_length * s for i, s in enumerate(self.arch.vq_strides)}

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        a = self.arch
        return tuple(StreamSpec(name, base.CODES, a.sample_rate / hop, "int16", num_codebooks=1,
                                codebook_size=a.codebook_size, frame0_center_s=self.frame0_center_s(hop))
                     for name, hop in self.stream_hops().items())

    def num_frames(self, num_samples: int) -> int:
        """Frames of the finest stream (``stream_num_frames`` gives each stream's)."""
        return -(-num_samples // self.arch.hop_length)

    def _build(self, resolved):
        try:
            import snac
        except ImportError:
            raise ImportError(weights.install_hint("snac", "snac")) from None
        config = resolved.config()
        model = snac.SNAC(**{k: v for k, v in config.items() if k != "model_type"})
        state = weights.load_state_dict(resolved)
        model.load_state_dict(state, strict=True)
        return model

    def _forward(self, x, lengths):
        latents = self._model.encoder(x)
        _, codes = self._model.quantizer(latents)
        return {name: c[:, None, :] for name, c in zip(self.stream_hops(), codes)}

    def _decode_codes(self, streams):
        torch = _torch()
        a = self.arch
        base_frames = max(streams[name].shape[-1] * s for name, s in zip(self.stream_hops(), a.vq_strides))
        base_frames = -(-base_frames * a.hop_length // a.align) * a.align // a.hop_length
        codes = []
        for name, stride in zip(self.stream_hops(), a.vq_strides):
            c = self._codes_tensor(streams[name])[0]
            # Trailing frames beyond the segment were dropped at encode: pad them back (code 0).
            c = torch.nn.functional.pad(c, (0, base_frames // stride - c.shape[-1]))
            codes.append(c[None])
        return self._model.decode(codes)[0]


@register("snac-24k", defaults={"model": "hubertsiuzdak/snac_24khz"},
          weights="hubertsiuzdak/snac_24khz (pip install 'audiotok[snac]'); or model=DIR|URL")
class Snac24k(Snac):
    name = "snac-24k"


@register("snac-32k", defaults={"model": "hubertsiuzdak/snac_32khz"},
          weights="hubertsiuzdak/snac_32khz (pip install 'audiotok[snac]'); or model=DIR|URL")
class Snac32k(Snac):
    name = "snac-32k"


@register("snac-44k", defaults={"model": "hubertsiuzdak/snac_44khz"},
          weights="hubertsiuzdak/snac_44khz (pip install 'audiotok[snac]'); or model=DIR|URL")
class Snac44k(Snac):
    name = "snac-44k"
