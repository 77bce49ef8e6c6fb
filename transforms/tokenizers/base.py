"""The tokenizer contract.

A tokenizer turns mono float32 audio at its ``sample_rate`` into one or more named
streams: discrete codes int16 ``[K, T]``, discrete units int16 ``[T]``, or continuous
vectors float16 ``[T, D]``. Building one is cheap (config only: rates, shapes, the
fingerprint); ``load()`` brings in weights, once per worker process.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

# Stream kinds.
CODES = "codes"  # int16 [K, T], residual-VQ codebooks
UNITS = "units"  # int16 [T], one discrete stream
VECTORS = "vectors"  # float16 [T, D]
DURATIONS = "durations"  # int16 [T], run lengths of deduplicated units

# How every tokenizer's input is made from a decoded file; part of every fingerprint, so a
# change here retokenizes on refresh. Segments keep the source rate and each tokenizer gets them
# resampled once, straight to its own rate (soxr, high quality), whatever else shares the run.
INPUT_AUDIO = "mono (channel mean), source rate -> tokenizer rate in one soxr HQ resampling"

# Tokenizer families, as in the README's table.
CODEC = "codec"
SSL_KMEANS = "ssl-kmeans"
CONTINUOUS = "continuous"


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What one output stream holds.

    Attributes:
        name: the stream's name in a sample (``KEY.<name>.npy``).
        kind: ``codes``, ``units``, ``vectors`` or ``durations``.
        frame_rate_hz: frames per second of audio.
        dtype: numpy dtype name of the stored array.
        num_codebooks: K for ``codes``; None otherwise.
        codebook_size: distinct values per codebook (discrete kinds); None for vectors.
        dim: D for ``vectors``; None otherwise.
        frame0_center_s: where frame 0 is centred, seconds after the segment's start: frame i
            is centred at ``start_s + frame0_center_s + i / frame_rate_hz``. A frame's centre is
            the middle of the samples it stands for (an analysis window, a convolution's
            receptive field, the hop a codec frame encodes), each sample counting as the
            1 / sample_rate it lasts. Run-length deduplicated units and their durations are on
            the same grid, one run per element.
    """

    name: str
    kind: str
    frame_rate_hz: float
    dtype: str
    num_codebooks: int | None = None
    codebook_size: int | None = None
    dim: int | None = None
    frame0_center_s: float | None = None

    def shape(self, num_frames: int) -> tuple[int, ...]:
        if self.kind == CODES:
            return (self.num_codebooks or 1, num_frames)
        if self.kind == VECTORS:
            return (num_frames, self.dim or 0)
        return (num_frames,)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Base of every tokenizer's config: a frozen dataclass that round-trips through dicts.

    ``LOCATIONS`` names the fields that say where weights or a codebook are read from (a path,
    a URL, a Hub id and revision): they are left out of the fingerprint, which holds the
    content's hash instead (``Tokenizer.weights_identity``).
    """

    LOCATIONS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """``to_dict`` without the ``LOCATIONS``: the settings that shape the tokens."""
        return {k: v for k, v in self.to_dict().items() if k not in self.LOCATIONS}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TokenizerConfig":
        """Builds a config from typed values or from strings (as given on the command line)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _coerce(value, hints[name], name) for name, value in values.items()})


def _coerce(value: Any, hint: Any, name: str) -> Any:
    if not isinstance(value, str):
        return value
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null", "") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if hint in (int, float):
            return hint(value)
    except ValueError:
        raise ValueError(f"option {name} expects {hint.__name__}. Found: {value!r}") from None
    return value


class Tokenizer(abc.ABC):
    """Audio -> token streams.

    Subclasses set ``name`` (the registry key), ``version`` (bump it whenever the tokens a
    given config and weights produce change), ``family``, implement ``streams``,
    ``num_frames`` and ``_encode_batch``, and override ``load`` when they have weights.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    family: ClassVar[str]
    config_class: ClassVar[type[TokenizerConfig]]
    # Whether padding a segment inside a batch leaves its tokens unchanged. When False,
    # batches only ever hold segments of identical length.
    padding_invariant: ClassVar[bool] = True
    # Whether running under bf16/fp16 autocast (``--autocast``) is acceptable. Leave it False
    # for discrete outputs: reduced precision moves features across codebook/centroid
    # boundaries and changes tokens.
    autocast_safe: ClassVar[bool] = False

    def __init__(self, config: TokenizerConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}. Found: {type(config).__name__}")
        self.config = config
        self._loaded = False

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int:
        """Input rate, Hz: segments are resampled to it before ``encode``."""

    @property
    @abc.abstractmethod
    def streams(self) -> tuple[StreamSpec, ...]:
        """The streams each encode returns, in order."""

    @abc.abstractmethod
    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` input samples."""

    def stream_num_frames(self, stream: StreamSpec, num_samples: int) -> int:
        """Frames of one stream for ``num_samples`` samples; multi-rate tokenizers override it."""
        return self.num_frames(num_samples)

    @abc.abstractmethod
    def _encode_batch(self, audios: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Encodes loaded-model inputs; see ``encode_batch``."""

    def load(self, device: str = "cpu") -> "Tokenizer":
        """Loads weights (once per process). Idempotent; returns self."""
        self._loaded = True
        return self

    def weights_identity(self) -> str | None:
        """What identifies the weights (a content hash or pinned revision); None without weights."""
        return None

    def encode_batch(self, audios: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Encodes a batch of segments.

        Args:
            audios: float32 [samples] mono at ``sample_rate``, any lengths.

        Returns:
            Per segment, stream name -> array shaped as its ``StreamSpec`` says, with
            ``num_frames(len(audio))`` frames.
        """
        if not self._loaded:
            self.load()
        return self._encode_batch(audios)

    def encode(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        return self.encode_batch([audio])[0]

    def fingerprint(self) -> str:
        """16 hex characters that change whenever the tokens could: name, version, config, the
        weights' content, and how the input audio is made (``INPUT_AUDIO``); never where the
        weights or codebook were read from (``TokenizerConfig.LOCATIONS``), so the same files named
        by a relative path, an absolute one or a URL give one fingerprint."""
        identity = {
            "name": self.name,
            "version": self.version,
            "input": INPUT_AUDIO,
            "config": self.config.identity_dict(),
            "weights": self.weights_identity(),
        }
        blob = json.dumps(identity, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """The tokenizer as written into every sample's metadata and the dataset index."""
        return {
            "tokenizer": self.name,
            "version": self.version,
            "family": self.family,
            "sample_rate": self.sample_rate,
            "config": self.config.to_dict(),
            "weights": self.weights_identity(),
            "fingerprint": self.fingerprint(),
            "streams": [s.to_dict() for s in self.streams],
        }


def to_device(array: np.ndarray, device: Any):
    """A numpy array as a torch tensor on ``device`` (what adapters feed their models).

    On CUDA the copy goes through page-locked (pinned) host memory and is non-blocking, so it
    overlaps with kernels already queued; elsewhere the tensor shares the array's memory.
    """
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
