"""k-means fitting (transforms/tokenizers/kmeans.py): faiss Lloyd iterations after greedy k-means++ seeding."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from audiotok.transforms.tokenizers import kmeans

pytest.importorskip("faiss")


def blobs(n_per: int, centers: np.ndarray, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.repeat(centers, n_per, axis=0) + rng.standard_normal((len(centers) * n_per, centers.shape[1])) * spread
    return rng.permutation(x).astype(np.float32)


def test_fit_finds_every_blob_and_is_as_good_as_the_true_centres():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((12, 16)) * 10
    x = blobs(200, centers, 0.5, seed=1)
    result = kmeans.fit(x, 12, seed=0)
    assert result.centroids.shape == (12, 16) and result.centroids.dtype == np.float32
    # every true centre has a centroid within the noise, and no two centroids share one
    nearest = np.linalg.norm(centers[:, None, :] - result.centroids[None], axis=-1)
    assert nearest.min(axis=1).max() < 0.2 and len(set(nearest.argmin(axis=1))) == 12
    best = float(((x - centers[kmeans.assign(x, centers.astype(np.float32))]) ** 2).sum())
    assert result.inertia <= best * 1.0001
    assert 1 <= result.iterations <= 100


def test_fit_is_as_good_as_scikit_learns_full_kmeans_on_uneven_clusters():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(3)
    # more clusters than k, of very uneven sizes: where seeding decides the result
    centers = rng.standard_normal((60, 24)) * 4
    sizes = np.maximum(1, (rng.dirichlet(np.full(60, 0.5)) * 6000).astype(int))
    x = np.concatenate([c + rng.standard_normal((s, 24)) for c, s in zip(centers, sizes)]).astype(np.float32)
    ours = kmeans.fit(x, 20, seed=0).inertia
    theirs = min(sklearn_cluster.KMeans(20, n_init=1, random_state=s).fit(x).inertia_ for s in range(3))
    assert ours <= theirs * 1.01


def test_same_frames_and_seed_give_the_same_codebook_bytes():
    x = blobs(100, np.random.default_rng(2).standard_normal((8, 12)) * 3, 1.0, seed=4)
    books = [kmeans.Codebook(kmeans.fit(x, 6, seed=7).centroids, {"seed": "7"}) for _ in range(2)]
    assert books[0].to_bytes() == books[1].to_bytes()
    other = kmeans.fit(x, 6, seed=8).centroids
    assert not np.array_equal(other, books[0].centroids)


def test_seeding_frames_bound_the_seeding_not_the_iterations():
    x = blobs(300, np.random.default_rng(5).standard_normal((10, 8)) * 8, 0.3, seed=6)
    small = kmeans.fit(x, 10, seed=0, seeding_frames=50)
    full = kmeans.fit(x, 10, seed=0)
    assert small.inertia == pytest.approx(full.inertia, rel=1e-3)
    with pytest.raises(ValueError, match="seeding_frames >= k"):
        kmeans.fit(x, 10, seeding_frames=5)


def test_greedy_seeding_picks_distinct_frames_and_copes_with_duplicates():
    centers = np.random.default_rng(0).standard_normal((5, 4)) * 20
    x = blobs(50, centers, 0.1, seed=1)
    seeds = kmeans.greedy_kmeans_plus_plus(x, 5, np.random.default_rng(0))
    rows = {tuple(r) for r in x}
    assert all(tuple(s) in rows for s in seeds)
    # one seed per blob: k-means++ draws far from the seeds it has
    assert sorted(kmeans.assign(seeds, centers.astype(np.float32))) == [0, 1, 2, 3, 4]
    dup = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 12 frames, 3 distinct, k = 5
    result = kmeans.fit(dup, 5, seed=0)
    assert result.centroids.shape == (5, 3) and np.isfinite(result.centroids).all()
    assert result.inertia == pytest.approx(0.0, abs=1e-3)  # faiss splits clusters with a tiny nudge


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least k=5 frames. Found: 3"):
        kmeans.fit(np.zeros((3, 2), np.float32), 5)
    x = np.ones((10, 2), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        kmeans.fit(x, 2)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        kmeans.fit(np.zeros(10, np.float32), 2)


def test_missing_faiss_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install 'audiotok\\[pipeline\\]'"):
        kmeans.fit(np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32), 2)
