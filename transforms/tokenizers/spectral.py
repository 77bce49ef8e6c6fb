"""Tokenizers that need no downloaded weights: ``logmel`` (family C) and ``mfcc-kmeans``
(family B, the recipe of HuBERT's first iteration: MFCC + deltas, k-means).

Both work one segment at a time: they are thousands of times faster than real time, and
per-segment computation makes them batch-invariant by construction.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import json
from typing import ClassVar, Sequence

import numpy as np

from audiotok.transforms import storage
from audiotok.transforms.tokenizers import base, kmeans
from audiotok.transforms.tokenizers.base import StreamSpec, Tokenizer, TokenizerConfig
from audiotok.transforms.tokenizers.registry import register


def _torch():
    import torch

    return torch


@dataclasses.dataclass(frozen=True)
class LogMelConfig(TokenizerConfig):
    """Log-mel filterbank frames.

    Attributes:
        sample_rate: input rate, Hz.
        n_mels: mel bands (D).
        hop_ms: frame shift; 10 ms gives 100 frames per second.
        win_ms: analysis window.
        f_min, f_max: band edges, Hz (f_max None: Nyquist).
        floor: power floor before the natural log.
    """

    sample_rate: int = 16000
    n_mels: int = 80
    hop_ms: float = 10.0
    win_ms: float = 25.0
    f_min: float = 0.0
    f_max: float | None = None
    floor: float = 1e-10

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_mels <= 0:
            raise ValueError(f"sample_rate and n_mels must be positive. Found: {self.sample_rate}, {self.n_mels}")
        if not 0 < self.hop_ms <= self.win_ms:
            raise ValueError(f"need 0 < hop_ms <= win_ms. Found: hop_ms={self.hop_ms}, win_ms={self.win_ms}")

    @property
    def hop_samples(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def win_samples(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))


def frames_for(num_samples: int, hop: int) -> int:
    """Frames for a segment: one per full hop, so frames = duration x frame rate (rounded down)."""
    return num_samples // hop


@register("logmel")
class LogMel(Tokenizer):
    """float16 [T, n_mels] log-mel frames (continuous "soft tokens")."""

    name = "logmel"
    version = "1"
    family = base.CONTINUOUS
    config_class = LogMelConfig

    config: LogMelConfig

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def n_fft(self) -> int:
        """The FFT size: the window length rounded up to a power of two."""
        return 1 << max(0, (self.config.win_samples - 1).bit_length())

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        c = self.config
        # Centred frames: zero padding of n_fft/2 on each side, the window centred in the FFT
        # frame, so frame i's window spans samples [i hop - win/2, i hop + win/2).
        first = (-(self.n_fft // 2) + (self.n_fft - c.win_samples) // 2 + c.win_samples / 2) / c.sample_rate
        return (StreamSpec(self.name, base.VECTORS, c.sample_rate / c.hop_samples, "float16", dim=c.n_mels,
                           frame0_center_s=first),)

    def num_frames(self, num_samples: int) -> int:
        return frames_for(num_samples, self.config.hop_samples)

    def load(self, device: str = "cpu") -> "LogMel":
        import torchaudio

        c = self.config
        n_fft = self.n_fft
        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=n_fft, win_length=c.win_samples, hop_length=c.hop_samples,
            f_min=c.f_min, f_max=c.f_max, n_mels=c.n_mels, center=True, pad_mode="constant", power=2.0)
        self._loaded = True
        return self

    def _encode_batch(self, audios: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        torch = _torch()
        out = []
        with torch.inference_mode():
            for audio in audios:
                t = self.num_frames(audio.shape[-1])
                mel = self._mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
                logmel = mel.clamp_min(self.config.floor).log()[:, :t].T
                out.append({self.name: logmel.numpy().astype(np.float16)})
        return out


class KMeansTokenizer(Tokenizer):
    """Discrete units from continuous features and a k-means codebook.

    Subclasses implement ``features`` (float32 [T, D] per segment, T = ``num_frames``) and
    ``feature_dim``; ``fit-kmeans`` fits their codebook from the same ``features``.
    The config must have ``k``, ``codebook`` (URL of a codebook file), ``dedup`` and ``seed``.
    """

    family = base.SSL_KMEANS
    unit_dtype: ClassVar[str] = "int16"

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        # Read later (at the first batch, maybe in another process): fixed to what the name
        # means where the tokenizer is built.
        self._codebook_url = storage.absolute(config.codebook) if config.codebook else None

    @functools.cached_property
    def _codebook_file(self) -> tuple[str, kmeans.Codebook]:
        """(sha256 of the file's bytes, the codebook it holds), read once."""
        url = self._codebook_url
        if not url:
            raise ValueError(
                f"tokenizer {self.name} needs a k-means codebook: run `audiotok fit-kmeans --tokenizer {self.name}` "
                f"and pass `{self.name}[codebook=PATH]`, or let `audiotok tokenize` fit one from the input")
        data = storage.read_bytes(url)
        return hashlib.sha256(data).hexdigest(), kmeans.Codebook.from_bytes(data, url)

    @property
    def codebook_sha256(self) -> str:
        """The codebook's identity: the sha256 of its file (``sha256sum`` prints the same)."""
        return self._codebook_file[0]

    @functools.cached_property
    def codebook(self) -> kmeans.Codebook:
        url = self._codebook_url
        book = self._codebook_file[1]
        if book.k != self.config.k or book.dim != self.feature_dim:
            raise ValueError(
                f"codebook {url} is k={book.k}, D={book.dim}; {self.name} expects k={self.config.k}, D={self.feature_dim}")
        if book.metadata.get("features") != self.feature_fingerprint():
            raise ValueError(
                f"codebook {url} was fitted on other features ({book.metadata.get('features')}); "
                f"{self.name} computes {self.feature_fingerprint()}: refit it with `audiotok fit-kmeans`")
        return book

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """D of the features."""

    def feature_config(self) -> dict:
        """The config fields that shape the features (not k, codebook, dedup)."""
        return {k: v for k, v in self.config.to_dict().items() if k not in ("k", "codebook", "dedup", "seed")}

    def feature_fingerprint(self) -> str:
        blob = json.dumps({"tokenizer": self.name, "version": self.version, "features": self.feature_config()},
                          sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def features(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 [T, D] per segment."""
        if not self._loaded:
            self.load()
        return self._features(audios)

    @abc.abstractmethod
    def _features(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 [T, D] per segment, model loaded."""

    def weights_identity(self) -> str | None:
        if not self.config.codebook:
            return None
        self.codebook  # noqa: B018  (a codebook for other features is refused here, not at the first batch)
        return f"codebook-sha256:{self.codebook_sha256}"

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        rate, first = self.frame_rate_hz, self.frame0_center_s
        units = StreamSpec(self.name, base.UNITS, rate, self.unit_dtype, codebook_size=self.config.k,
                           frame0_center_s=first)
        if not self.config.dedup:
            return (units,)
        durations = StreamSpec(f"{self.name}-durations", base.DURATIONS, rate, "int16", frame0_center_s=first)
        return (units, durations)

    @property
    @abc.abstractmethod
    def frame_rate_hz(self) -> float:
        """Frames per second of the units."""

    @property
    @abc.abstractmethod
    def frame0_center_s(self) -> float:
        """Centre of frame 0, seconds after the segment's start (``StreamSpec.frame0_center_s``)."""

    def _encode_batch(self, audios: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        centroids = self.codebook.centroids
        out = []
        for feats in self._features(audios):
            units = kmeans.assign(feats, centroids)
            if self.config.dedup:
                runs, durations = kmeans.dedup_units(units)
                out.append({self.name: runs, f"{self.name}-durations": durations})
            else:
                out.append({self.name: units.astype(np.int16)})
        return out


@dataclasses.dataclass(frozen=True)
class MfccKMeansConfig(TokenizerConfig):
    """MFCC (+ deltas) frames quantized by k-means.

    Attributes:
        k: codebook size.
        codebook: URL of the codebook file (``audiotok fit-kmeans`` writes one).
        dedup: run-length deduplicate the units; durations go to a second stream.
        seed: k-means seed when fitting.
        sample_rate: input rate, Hz.
        num_ceps: cepstral coefficients (13 in HuBERT's recipe).
        deltas: append first and second derivatives (13 -> 39 dims).
        hop_ms, win_ms: frame shift and window.
        cmvn: subtract each segment's per-dimension mean and divide by its std.
    """

    LOCATIONS: ClassVar[tuple[str, ...]] = ("codebook",)

    k: int = 100
    codebook: str | None = None
    dedup: bool = False
    seed: int = 0
    sample_rate: int = 16000
    num_ceps: int = 13
    deltas: bool = True
    hop_ms: float = 10.0
    win_ms: float = 25.0
    cmvn: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.k <= 32767:
            raise ValueError(f"k must be in [2, 32767] (units are int16). Found: {self.k}")
        if self.num_ceps < 1 or self.sample_rate <= 0:
            raise ValueError(f"num_ceps and sample_rate must be positive. Found: {self.num_ceps}, {self.sample_rate}")
        if not 0 < self.hop_ms <= self.win_ms:
            raise ValueError(f"need 0 < hop_ms <= win_ms. Found: hop_ms={self.hop_ms}, win_ms={self.win_ms}")
        if self.codebook:
            storage.check_url(self.codebook)


@register("mfcc-kmeans")
class MfccKMeans(KMeansTokenizer):
    """int16 [T] units from Kaldi-style MFCC(+delta, +delta-delta) and a k-means codebook.

    Frames are centred like logmel's: the segment is zero-padded by half a window on each side
    and cut into whole windows (Kaldi's ``snip_edges``), so frame i's window spans samples
    ``[i hop - win/2, i hop + win/2)`` and units line up with logmel frames of the same hop.
    (Version 1 let Kaldi reflect the edges with ``snip_edges=False``, which centres frame i at
    ``i hop + hop/2``: half a frame after logmel's.)
    """

    name = "mfcc-kmeans"
    version = "2"
    config_class = MfccKMeansConfig

    config: MfccKMeansConfig

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_samples(self) -> int:
        return int(round(self.config.sample_rate * self.config.hop_ms / 1000))

    @property
    def win_samples(self) -> int:
        return int(self.config.sample_rate * self.config.win_ms / 1000)  # as Kaldi sizes its window

    @property
    def frame_rate_hz(self) -> float:
        return self.config.sample_rate / self.hop_samples

    @property
    def frame0_center_s(self) -> float:
        win = self.win_samples
        return (win / 2 - win // 2) / self.config.sample_rate

    @property
    def feature_dim(self) -> int:
        return self.config.num_ceps * (3 if self.config.deltas else 1)

    def num_frames(self, num_samples: int) -> int:
        return frames_for(num_samples, self.hop_samples)

    def load(self, device: str = "cpu") -> "MfccKMeans":
        import torchaudio.compliance.kaldi  # noqa: F401  (fail early when torchaudio is missing)

        self._loaded = True
        return self

    def _features(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        torch = _torch()
        import torchaudio

        c = self.config
        out = []
        with torch.inference_mode():
            for audio in audios:
                t = self.num_frames(audio.shape[-1])
                if t == 0:
                    out.append(np.zeros((0, self.feature_dim), dtype=np.float32))
                    continue
                half = self.win_samples // 2
                wave = torch.from_numpy(np.pad(np.asarray(audio, dtype=np.float32), (half, half)))[None]
                mfcc = torchaudio.compliance.kaldi.mfcc(
                    wave, sample_frequency=c.sample_rate, num_ceps=c.num_ceps, frame_shift=c.hop_ms,
                    frame_length=c.win_ms, use_energy=False, snip_edges=True, dither=0.0)
                mfcc = _fit_frames(mfcc, t)
                feats = mfcc
                if c.deltas:
                    d1 = torchaudio.functional.compute_deltas(mfcc.T).T
                    d2 = torchaudio.functional.compute_deltas(d1.T).T
                    feats = torch.cat([mfcc, d1, d2], dim=1)
                if c.cmvn:
                    feats = (feats - feats.mean(0)) / feats.std(0, unbiased=False).clamp_min(1e-5)
                out.append(feats.numpy().astype(np.float32))
        return out


def _fit_frames(frames, t: int):
    """Trims or edge-pads [T', D] frames to exactly t rows."""
    torch = _torch()
    if frames.shape[0] >= t:
        return frames[:t]
    pad = frames[-1:].expand(t - frames.shape[0], -1)
    return torch.cat([frames, pad], dim=0)
