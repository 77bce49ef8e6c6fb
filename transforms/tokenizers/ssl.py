"""Families B and C: self-supervised speech models (HuBERT, WavLM, wav2vec 2.0).

One transformer layer's output, float32 [T, D] at 50 Hz (16 kHz input, 320-sample hop,
400-sample frames), becomes either:

* units int16 [T]: the nearest centroid of a k-means codebook fitted on those same features
  (``audiotok fit-kmeans``), optionally run-length deduplicated (family B, ``*-kmeans``,
  ``hubert-l9-km500``, ...); or
* vectors float16 [T, D] (family C, ``*-emb``).

``layer=L`` is the output of transformer layer L (1-based; 0 is the input of the first
layer), as fairseq's ``output_layer`` and transformers' ``hidden_states[L]`` give it: for
pre-norm ("stable layer norm") models the encoder's final layer norm is never applied. Layers
above L are dropped at load.

Batching: checkpoints whose convolutional front end normalises each layer per frame
(``feat_extract_norm="layer"``: the large models) are padding-invariant: segments of any
lengths are padded together with an attention mask. The base models use group norm over
time in the first convolution, so their features depend on padding: they only ever batch
segments of one length (``padding_invariant`` is False). On the CPU each chunk has its own
forward pass (``chunking.BATCH_ON_CPU``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from audiotok.transforms import storage
from audiotok.transforms.tokenizers import base, chunking, weights
from audiotok.transforms.tokenizers.base import StreamSpec, Tokenizer, to_device
from audiotok.transforms.tokenizers.registry import register
from audiotok.transforms.tokenizers.spectral import KMeansTokenizer
from audiotok.transforms.tokenizers.weights import ModelConfig

SAMPLE_RATE = 16000
# Padded seconds of audio per forward pass at most (see codecs.FORWARD_MAX_S).
FORWARD_MAX_S = 120.0


@dataclasses.dataclass(frozen=True)
class SSLArch:
    """What an SSL checkpoint's architecture implies for its features (read from config.json).

    Attributes:
        model_type: ``hubert``, ``wavlm`` or ``wav2vec2``.
        hidden_size: D.
        num_layers: transformer layers.
        conv_kernel, conv_stride: the convolutional front end (frames and their rate).
        layer_norm_front_end: the front end normalises per frame (``feat_extract_norm="layer"``).
        stable_layer_norm: pre-norm transformer (its encoder ends with a layer norm).
    """

    model_type: str
    hidden_size: int
    num_layers: int
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    layer_norm_front_end: bool = False
    stable_layer_norm: bool = False

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.conv_stride))

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees."""
        field = 1
        for kernel, stride in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            field = (field - 1) * stride + kernel
        return field

    def num_frames(self, num_samples: int) -> int:
        n = num_samples
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            if n < kernel:
                return 0
            n = (n - kernel) // stride + 1
        return n

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SSLArch":
        return cls(
            model_type=str(config.get("model_type")),
            hidden_size=int(config.get("hidden_size", 768)),
            num_layers=int(config.get("num_hidden_layers", 12)),
            conv_kernel=tuple(int(k) for k in config.get("conv_kernel", (10, 3, 3, 3, 3, 2, 2))),
            conv_stride=tuple(int(s) for s in config.get("conv_stride", (5, 2, 2, 2, 2, 2, 2))),
            layer_norm_front_end=config.get("feat_extract_norm", "group") == "layer",
            stable_layer_norm=bool(config.get("do_stable_layer_norm", False)),
        )


_BASE = dict(hidden_size=768, num_layers=12)
_LARGE = dict(hidden_size=1024, num_layers=24, layer_norm_front_end=True, stable_layer_norm=True)

# Architectures of the Hub checkpoints, so that building a tokenizer reads nothing.
KNOWN: dict[str, SSLArch] = {
    "facebook/hubert-base-ls960": SSLArch("hubert", **_BASE),
    "facebook/hubert-large-ll60k": SSLArch("hubert", **_LARGE),
    "microsoft/wavlm-base-plus": SSLArch("wavlm", **_BASE),
    "microsoft/wavlm-large": SSLArch("wavlm", **_LARGE),
    "facebook/wav2vec2-base": SSLArch("wav2vec2", **_BASE),
    "facebook/wav2vec2-large-lv60": SSLArch("wav2vec2", **_LARGE),
}

_MODEL_CLASSES = {"hubert": "HubertModel", "wavlm": "WavLMModel", "wav2vec2": "Wav2Vec2Model"}


@dataclasses.dataclass(frozen=True)
class SSLConfig(ModelConfig):
    """Options of the SSL feature tokenizers.

    Attributes:
        layer: transformer layer whose output is taken (1-based; 0: the first layer's input).
        normalize: scale each segment to zero mean, unit variance first (the large checkpoints
            were trained so; the base ones were not).
        (model, revision, sha256, chunk_s, overlap_s: see ``weights.ModelConfig``.)
    """

    layer: int = 9
    normalize: bool = False
    chunk_s: float = 30.0
    overlap_s: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0. Found: {self.layer}")


@dataclasses.dataclass(frozen=True)
class SSLKMeansConfig(SSLConfig):
    """SSL features quantized by k-means.

    Attributes:
        k: codebook size.
        codebook: URL of the codebook file (``audiotok fit-kmeans`` writes one).
        dedup: run-length deduplicate the units; durations go to a second stream.
        seed: k-means seed when fitting.
    """

    LOCATIONS: ClassVar[tuple[str, ...]] = (*ModelConfig.LOCATIONS, "codebook")

    k: int = 500
    codebook: str | None = None
    dedup: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.k <= 32767:
            raise ValueError(f"k must be in [2, 32767] (units are int16). Found: {self.k}")
        if self.codebook:
            storage.check_url(self.codebook)


class SSLBackbone:
    """An SSL model cut at one layer: audio -> features float32 [T, D]. Shared by families B and C."""

    def __init__(self, config: SSLConfig, model_type: str):
        self.config = config
        self.model_type = model_type
        self.checkpoint = config.checkpoint()
        self._model: Any = None
        self._device = "cpu"

    @functools.cached_property
    def arch(self) -> SSLArch:
        known = KNOWN.get(self.config.model) if self.checkpoint.kind == "hub" else None
        arch = known or SSLArch.from_config(self.checkpoint.read_config())
        if arch.model_type != self.model_type:
            raise ValueError(f"{self.config.model} is a {arch.model_type!r} checkpoint; expected {self.model_type!r}")
        if self.config.layer > arch.num_layers:
            raise ValueError(
                f"layer must be in [0, {arch.num_layers}] for {self.config.model}. Found: {self.config.layer}")
        overlap = round(self.config.overlap_s * SAMPLE_RATE)
        if overlap < 2 * (arch.receptive_field - arch.hop_length):
            raise ValueError(f"overlap_s must be >= {2 * (arch.receptive_field - arch.hop_length) / SAMPLE_RATE} s "
                             f"(frames are {arch.receptive_field} samples wide). Found: {self.config.overlap_s}")
        return arch

    @property
    def padding_invariant(self) -> bool:
        return self.arch.layer_norm_front_end

    def load(self, device: str) -> None:
        if self._model is not None:
            return
        try:
            import transformers
        except ImportError:
            raise ImportError(weights.install_hint("transformers", "models")) from None
        resolved = weights.resolve(self.checkpoint)
        weights.check_loadable(resolved)
        found = SSLArch.from_config(resolved.config())
        if found != self.arch:
            raise ValueError(
                f"{self.config.model}: the checkpoint's architecture {found} differs from the expected {self.arch}")
        model_class = getattr(transformers, _MODEL_CLASSES[self.model_type])
        model = model_class.from_pretrained(
            resolved.directory, local_files_only=True, use_safetensors=resolved.weight_format == "safetensors",
            weights_only=True)
        # Layers above the chosen one never run; a pre-norm encoder's final norm is not part of
        # any layer's output (fairseq applies it only when no layer is asked for).
        model.encoder.layers = model.encoder.layers[:self.config.layer]
        if self.arch.stable_layer_norm:
            import torch

            model.encoder.layer_norm = torch.nn.Identity()
        self._model = model.eval().to(device)
        self._device = device

    def num_frames(self, num_samples: int) -> int:
        return self.arch.num_frames(num_samples)

    def features(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 [num_frames(len(audio)), D] per segment (model loaded)."""
        audios = [self._normalized(np.asarray(a, dtype=np.float32)) for a in audios]
        plans = [chunking.plan_chunks(len(a), round(self.config.chunk_s * SAMPLE_RATE),
                                      round(self.config.overlap_s * SAMPLE_RATE), self.arch.hop_length)
                 for a in audios]
        pieces = [a[c.start:c.end] for a, plan in zip(audios, plans) for c in plan]
        encoded = self._encode_pieces(pieces)
        out, i = [], 0
        for audio, plan in zip(audios, plans):
            mine, i = encoded[i:i + len(plan)], i + len(plan)
            out.append(chunking.stitch(mine, plan, self.arch.hop_length, self.num_frames(len(audio)), axis=0))
        return out

    def _normalized(self, audio: np.ndarray) -> np.ndarray:
        if not self.config.normalize or audio.size == 0:
            return audio
        return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)

    def _encode_pieces(self, pieces: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        frames = [self.num_frames(len(p)) for p in pieces]
        results = [np.zeros((0, self.arch.hidden_size), dtype=np.float32)] * len(pieces)
        todo = [i for i, f in enumerate(frames) if f > 0]
        groups = chunking.forward_groups([len(pieces[i]) for i in todo], not self.padding_invariant,
                                         round(FORWARD_MAX_S * SAMPLE_RATE), chunking.max_pieces_per_pass(self._device))
        with torch.inference_mode():
            for group in ([todo[j] for j in g] for g in groups):
                width = max(len(pieces[i]) for i in group)
                x = np.zeros((len(group), width), dtype=np.float32)
                mask = np.zeros((len(group), width), dtype=np.int64)
                for row, i in enumerate(group):
                    x[row, :len(pieces[i])] = pieces[i]
                    mask[row, :len(pieces[i])] = 1
                kwargs = {}
                if self.padding_invariant and not mask.all():
                    kwargs["attention_mask"] = to_device(mask, self._device)
                hidden = self._model(to_device(x, self._device), **kwargs).last_hidden_state
                hidden = hidden.float().cpu().numpy()
                for row, i in enumerate(group):
                    results[i] = hidden[row, :frames[i]]
        return results


class _SSLMixin:
    """What the SSL tokenizers of both families share: the backbone and the metadata it implies."""

    model_type: ClassVar[str]
    backbone: SSLBackbone

    @property
    def padding_invariant(self) -> bool:  # type: ignore[override]
        return self.backbone.padding_invariant

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_rate_hz(self) -> float:
        return SAMPLE_RATE / self.backbone.arch.hop_length

    @property
    def frame0_center_s(self) -> float:
        """Frame i is the convolutional front end's output over samples ``[i hop, i hop +
        receptive field)`` (400 samples every 320: centred at 12.5 ms + 20 i ms), as the models
        were trained: the input is not padded to move it."""
        return self.backbone.arch.receptive_field / 2 / SAMPLE_RATE

    @property
    def feature_dim(self) -> int:
        return self.backbone.arch.hidden_size

    def num_frames(self, num_samples: int) -> int:
        return self.backbone.num_frames(num_samples)

    def load(self, device: str = "cpu"):
        self.backbone.load(device)
        self._loaded = True
        return self


class SSLKMeans(_SSLMixin, KMeansTokenizer):
    """Family B: units int16 [T] (and durations int16 [R] with ``dedup``) from one SSL layer and a
    k-means codebook fitted on that layer's features (``audiotok fit-kmeans``)."""

    version = "1"
    config_class = SSLKMeansConfig
    config: SSLKMeansConfig

    def __init__(self, config: SSLKMeansConfig):
        super().__init__(config)
        self.backbone = SSLBackbone(config, self.model_type)
        self.backbone.arch  # noqa: B018  (checks the options against the architecture now)

    def feature_config(self) -> dict:
        """What shapes the features: the model's weights (their identity, not where they are
        read from, so a codebook follows its weights anywhere), the layer and normalisation.
        Chunking is left out: it changes features only near the seams of long segments."""
        c = self.config
        return {"model_type": self.model_type, "layer": c.layer, "normalize": c.normalize,
                "weights": self.backbone.checkpoint.identity()}

    def feature_fingerprint(self) -> str:
        """Shared by every name on the same features (``hubert-kmeans[layer=9]`` and
        ``hubert-l9-km500`` accept each other's codebooks)."""
        blob = json.dumps({"family": "ssl", "version": self.version, "features": self.feature_config()},
                          sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def weights_identity(self) -> str | None:
        model = self.backbone.checkpoint.identity()
        return f"{model}+codebook-sha256:{self.codebook_sha256}" if self.config.codebook else model

    def _features(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.backbone.features(audios)


class SSLEmbedding(_SSLMixin, Tokenizer):
    """Family C: vectors float16 [T, D], one SSL layer's output."""

    family = base.CONTINUOUS
    version = "1"
    config_class = SSLConfig
    config: SSLConfig

    def __init__(self, config: SSLConfig):
        super().__init__(config)
        self.backbone = SSLBackbone(config, self.model_type)
        self.backbone.arch  # noqa: B018

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        return (StreamSpec(self.name, base.VECTORS, self.frame_rate_hz, "float16", dim=self.feature_dim,
                           frame0_center_s=self.frame0_center_s),)

    def weights_identity(self) -> str | None:
        return self.backbone.checkpoint.identity()

    def _encode_batch(self, audios: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{self.name: f.astype(np.float16)} for f in self.backbone.features(audios)]


def _weights_note(default: str) -> str:
    return f"{default}; or model=DIR|URL"


_HUBERT = {"model": "facebook/hubert-base-ls960"}
_WAVLM = {"model": "microsoft/wavlm-base-plus"}
_WAV2VEC2 = {"model": "facebook/wav2vec2-base"}
_KMEANS_NOTE = "; + codebook=URL (audiotok fit-kmeans)"


@register("hubert-kmeans", defaults={**_HUBERT, "layer": 9, "k": 500},
          weights=_weights_note("facebook/hubert-base-ls960") + _KMEANS_NOTE)
class HubertKMeans(SSLKMeans):
    name = "hubert-kmeans"
    model_type = "hubert"


@register("hubert-l9-km500", defaults={**_HUBERT, "layer": 9, "k": 500},
          weights=_weights_note("facebook/hubert-base-ls960") + _KMEANS_NOTE)
class HubertL9Km500(SSLKMeans):
    name = "hubert-l9-km500"
    model_type = "hubert"


@register("hubert-l6-km100", defaults={**_HUBERT, "layer": 6, "k": 100},
          weights=_weights_note("facebook/hubert-base-ls960") + _KMEANS_NOTE)
class HubertL6Km100(SSLKMeans):
    """GSLM's units: HuBERT base, layer 6, 100 clusters."""

    name = "hubert-l6-km100"
    model_type = "hubert"


@register("wavlm-kmeans", defaults={**_WAVLM, "layer": 6, "k": 500},
          weights=_weights_note("microsoft/wavlm-base-plus") + _KMEANS_NOTE)
class WavLMKMeans(SSLKMeans):
    name = "wavlm-kmeans"
    model_type = "wavlm"


@register("wav2vec2-kmeans", defaults={**_WAV2VEC2, "layer": 6, "k": 500},
          weights=_weights_note("facebook/wav2vec2-base") + _KMEANS_NOTE)
class Wav2Vec2KMeans(SSLKMeans):
    name = "wav2vec2-kmeans"
    model_type = "wav2vec2"


@register("hubert-emb", defaults={**_HUBERT, "layer": 9}, weights=_weights_note("facebook/hubert-base-ls960"))
class HubertEmbedding(SSLEmbedding):
    name = "hubert-emb"
    model_type = "hubert"


@register("wavlm-emb", defaults={**_WAVLM, "layer": 6}, weights=_weights_note("microsoft/wavlm-base-plus"))
class WavLMEmbedding(SSLEmbedding):
    name = "wavlm-emb"
    model_type = "wavlm"


@register("wav2vec2-emb", defaults={**_WAV2VEC2, "layer": 6}, weights=_weights_note("facebook/wav2vec2-base"))
class Wav2Vec2Embedding(SSLEmbedding):
    name = "wav2vec2-emb"
    model_type = "wav2vec2"
