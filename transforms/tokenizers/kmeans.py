"""K-means codebooks: fitting, nearest-centroid assignment, and the codebook file.

A codebook file is safetensors (never pickle): one tensor ``centroids`` float32 [k, D]
plus string metadata: the format and its version, the tokenizer and feature fingerprint it
was fitted for, k, D, the seed, how many frames it saw and the final inertia.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from typing import Any, Mapping

import numpy as np

CODEBOOK_FORMAT = "audiotok-kmeans"
CODEBOOK_FORMAT_VERSION = "1"


@dataclasses.dataclass(frozen=True, eq=False)
class Codebook:
    """Centroids float32 [k, D] and where they came from."""

    centroids: np.ndarray
    metadata: Mapping[str, str]

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def to_bytes(self) -> bytes:
        """The codebook as a safetensors file, byte-for-byte the same for the same codebook.

        Written here rather than with ``safetensors.numpy.save``, whose metadata order varies
        from process to process: a codebook's bytes (and so its sha256) must not.
        """
        meta = {"format": CODEBOOK_FORMAT, "format_version": CODEBOOK_FORMAT_VERSION, **self.metadata}
        data = np.ascontiguousarray(self.centroids, dtype="<f4").tobytes()
        header = {
            "__metadata__": {k: str(v) for k, v in sorted(meta.items())},
            "centroids": {"dtype": "F32", "shape": list(self.centroids.shape), "data_offsets": [0, len(data)]},
        }
        blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
        return struct.pack("<Q", len(blob)) + blob + data

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "") -> "Codebook":
        """Parses a codebook file; raises ValueError on anything but an audiotok safetensors codebook."""
        from safetensors.numpy import load

        where = f" {source}" if source else ""
        metadata = _safetensors_metadata(data, where)
        if metadata.get("format") != CODEBOOK_FORMAT:
            raise ValueError(f"codebook{where} is not an {CODEBOOK_FORMAT} file (format={metadata.get('format')!r})")
        if metadata.get("format_version") != CODEBOOK_FORMAT_VERSION:
            raise ValueError(
                f"codebook{where} has format version {metadata.get('format_version')!r}; "
                f"this audiotok reads {CODEBOOK_FORMAT_VERSION!r}")
        tensors = load(data)
        centroids = tensors.get("centroids")
        if centroids is None or centroids.ndim != 2 or not np.isfinite(centroids).all():
            raise ValueError(f"codebook{where} has no finite 2-D 'centroids' tensor")
        return cls(centroids=centroids.astype(np.float32), metadata=metadata)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def _safetensors_metadata(data: bytes, where: str) -> dict[str, str]:
    if len(data) < 8:
        raise ValueError(f"codebook{where} is not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8 or header_len > 100_000_000:
        raise ValueError(f"codebook{where} is not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8:8 + header_len])
    except ValueError as e:
        raise ValueError(f"codebook{where} is not a safetensors file ({e})") from None
    return dict(header.get("__metadata__") or {})


def assign(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid per frame.

    Args:
        features: float32 [T, D].
        centroids: float32 [k, D].

    Returns:
        int64 [T] indices in [0, k).
    """
    if features.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    x = features.astype(np.float64)
    c = centroids.astype(np.float64)
    # float64 keeps ties (and so the units) independent of how frames are batched.
    d = (c * c).sum(1)[None, :] - 2.0 * (x @ c.T)
    return d.argmin(axis=1)


@dataclasses.dataclass(frozen=True)
class KMeansFit:
    centroids: np.ndarray
    inertia: float
    iterations: int


def fit(features: np.ndarray, k: int, seed: int = 0, max_iter: int = 100, tol: float = 1e-4) -> KMeansFit:
    """Lloyd's k-means with k-means++ seeding, deterministic for a given seed.

    Args:
        features: float32 [N, D], N >= k.
        k: number of centroids.
        seed: RNG seed (a local generator; global state is untouched).
        max_iter: Lloyd iterations at most.
        tol: stop when the relative inertia improvement falls below this.

    Raises:
        ValueError: fewer distinct frames than ``k``, or non-finite features.
    """
    x = np.ascontiguousarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be [N, D] with N > 0. Found shape {features.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or Inf")
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} frames. Found: {x.shape[0]}")
    rng = np.random.default_rng(seed)
    centroids = _kmeans_plus_plus(x, k, rng)
    x_sq = (x * x).sum(1)
    previous = np.inf
    inertia = np.inf
    iteration = 0
    for iteration in range(1, max_iter + 1):
        d = x_sq[:, None] - 2.0 * (x @ centroids.T) + (centroids * centroids).sum(1)[None, :]
        labels = d.argmin(1)
        inertia = float(np.maximum(d[np.arange(len(x)), labels], 0).sum())
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        empty = counts == 0
        centroids = np.where(empty[:, None], centroids, sums / np.maximum(counts, 1)[:, None])
        if empty.any():
            # Re-seed empty clusters with the frames farthest from their centroid.
            far = np.argsort(-d[np.arange(len(x)), labels], kind="stable")[: int(empty.sum())]
            centroids[np.flatnonzero(empty)] = x[far]
        if np.isfinite(previous) and previous - inertia <= tol * max(previous, 1e-12):
            break
        previous = inertia
    return KMeansFit(centroids=centroids.astype(np.float32), inertia=inertia, iterations=iteration)


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    centroids = np.empty((k, x.shape[1]), dtype=np.float64)
    centroids[0] = x[rng.integers(n)]
    closest = ((x - centroids[0]) ** 2).sum(1)
    for i in range(1, k):
        total = closest.sum()
        if total <= 0:  # all remaining frames coincide with a centroid
            centroids[i] = x[rng.integers(n)]
            continue
        index = int(np.searchsorted(np.cumsum(closest), rng.random() * total))
        centroids[i] = x[min(index, n - 1)]
        closest = np.minimum(closest, ((x - centroids[i]) ** 2).sum(1))
    return centroids


def dedup_units(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length deduplication: int [T] -> (unique runs int16 [R], durations int16 [R] in frames)."""
    if units.size == 0:
        return units.astype(np.int16), np.zeros((0,), dtype=np.int16)
    change = np.flatnonzero(np.diff(units)) + 1
    starts = np.concatenate([[0], change])
    durations = np.diff(np.concatenate([starts, [units.size]]))
    return units[starts].astype(np.int16), np.minimum(durations, np.iinfo(np.int16).max).astype(np.int16)


def describe_fit(result: KMeansFit, n_frames: int, seed: int, extra: Mapping[str, Any]) -> dict[str, str]:
    """Metadata strings for a codebook file."""
    return {
        "k": str(result.centroids.shape[0]),
        "dim": str(result.centroids.shape[1]),
        "seed": str(seed),
        "n_frames": str(n_frames),
        "iterations": str(result.iterations),
        "inertia": f"{result.inertia:.6g}",
        **{k: str(v) for k, v in extra.items()},
    }
