"""K-means codebooks: fitting, nearest-centroid assignment, and the codebook file.

Fitting is greedy k-means++ seeding (numpy) then Lloyd iterations by faiss over every frame
(``faiss-cpu``, imported when a fit runs); assignment stays exact, in float64, in numpy.

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
    """Attributes:
        centroids: float32 [k, D].
        inertia: sum of squared distances from each frame to its nearest centroid.
        iterations: Lloyd iterations run.
    """

    centroids: np.ndarray
    inertia: float
    iterations: int


_FAISS_HINT = "k-means fitting needs faiss: pip install 'audiotok[pipeline]' (or pip install faiss-cpu)"


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError(_FAISS_HINT) from e
    return faiss


def fit(features: np.ndarray, k: int, seed: int = 0, max_iter: int = 100, tol: float = 1e-4,
        seeding_frames: int = 250_000) -> KMeansFit:
    """k-means: greedy k-means++ seeding, then Lloyd iterations by faiss over every frame.

    The seeding (scikit-learn's greedy k-means++: each new centroid is the best of
    ``2 + ln k`` candidates drawn by squared distance) looks at every frame, or at
    ``seeding_frames`` of them drawn with ``seed`` when there are more: seeding on a subsample
    costs inertia where clusters are small and many. The Lloyd iterations (faiss, all CPU
    cores) stop when an iteration improves the inertia by less than ``tol`` of it, or after
    ``max_iter``. Empty clusters are refilled by splitting large ones (faiss).

    Deterministic: the same frames, ``k`` and ``seed`` give the same centroids, byte for byte,
    on the same machine (CPU type and core count: BLAS sums in another order elsewhere).

    Args:
        features: float32 [N, D], N >= k.
        k: number of centroids.
        seed: RNG seed (local generators; global state is untouched).
        max_iter: Lloyd iterations at most.
        tol: relative inertia improvement under which the iterations stop.
        seeding_frames: frames the seeding draws from (all of them when N is smaller).

    Raises:
        ValueError: fewer than ``k`` frames, or non-finite features.
        ImportError: faiss is not installed.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be [N, D] with N > 0. Found shape {features.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or Inf")
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} frames. Found: {x.shape[0]}")
    if k < 1 or max_iter < 1 or seeding_frames < k:
        raise ValueError(f"need k >= 1, max_iter >= 1, seeding_frames >= k. Found: {k}, {max_iter}, {seeding_frames}")
    faiss = _faiss()
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    # All frames are seeded from in place (a fancy-indexed copy would double the memory).
    seeding = x[np.sort(rng.choice(n, size=seeding_frames, replace=False))] if n > seeding_frames else x
    centroids = greedy_kmeans_plus_plus(seeding, k, rng)
    previous = np.inf
    iteration = 0
    for iteration in range(1, max_iter + 1):
        # One iteration per call: faiss runs a fixed count; stopping on convergence is ours.
        km = faiss.Kmeans(x.shape[1], k, niter=1, seed=seed + iteration, max_points_per_centroid=n,
                          min_points_per_centroid=1, verbose=False)
        km.train(x, init_centroids=centroids)
        inertia = float(km.obj[-1])  # of the assignment to the centroids this iteration started from
        centroids = km.centroids.copy()
        if np.isfinite(previous) and previous - inertia <= tol * max(previous, 1e-12):
            break
        previous = inertia
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    distances, _ = index.search(x, 1)
    return KMeansFit(centroids=centroids, inertia=float(distances.sum(dtype=np.float64)), iterations=iteration)


def greedy_kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: float32 [N, D] -> float32 [k, D] rows of ``x``.

    Each centroid after the first is the best (lowest total squared distance) of
    ``2 + ln k`` candidates drawn with probability proportional to the squared distance to
    the nearest centroid so far. Distances come from one matrix product per step.
    """
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    norms = np.einsum("ij,ij->i", x, x)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    closest = _squared_distances(x, norms, chosen[:1])[:, 0]
    potential = float(closest.sum(dtype=np.float64))
    for i in range(1, k):
        if potential <= 0:  # every frame sits on a centroid: the rest are drawn uniformly
            chosen[i] = rng.integers(n)
            continue
        cumulative = np.cumsum(closest, dtype=np.float64)
        candidates = np.minimum(np.searchsorted(cumulative, rng.random(trials) * cumulative[-1]), n - 1)
        d = np.minimum(_squared_distances(x, norms, candidates), closest[:, None])
        potentials = d.sum(axis=0, dtype=np.float64)
        best = int(potentials.argmin())
        chosen[i] = candidates[best]
        closest = np.ascontiguousarray(d[:, best])
        potential = float(potentials[best])
    return x[chosen].copy()


def _squared_distances(x: np.ndarray, norms: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 [N, len(rows)]: squared distances from every frame to the frames ``rows``."""
    d = x @ x[rows].T
    d *= -2.0
    d += norms[:, None]
    d += norms[rows][None, :]
    return np.maximum(d, 0.0, out=d)


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
