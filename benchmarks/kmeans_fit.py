"""k-means codebook fitting: audiotok's fit against the hand-written one it replaced and scikit-learn's.

    python benchmarks/kmeans_fit.py                      # both cases, every method
    python benchmarks/kmeans_fit.py --quick              # 3,000 frames, k = 20: checks that it runs
    python benchmarks/kmeans_fit.py --cases ssl --methods audiotok,sklearn-kmeans --json out/kmeans.json

Cases (frames made once per run, seeded, saved to a temporary ``.npy``; every method fits the
same file):

* ``ssl``: 200,000 x 768, k = 500, the size of a HuBERT codebook fit. A stand-in for SSL layer
  features (no checkpoint can be downloaded here): a mixture of 2,000 Gaussian components
  with Dirichlet(0.5) weights (a few large, many small), means in a random 64-dimensional
  subspace, plus isotropic noise: more clusters than k, of very uneven sizes, which is what
  makes k-means++ seeding matter.
* ``mfcc``: 200,000 x 39, k = 100: ``mfcc-kmeans``'s own features (its ``features()``) of the
  example corpus (``examples/corpus``, decoded and resampled to 16 kHz by audiotok), copied with
  a different speed (0.85-1.15, by resampling), gain and white-noise level per copy until
  there are enough frames; the first ``--frames`` frames of the copies in order.

Methods, each in a fresh Python process (so that its peak resident memory is its own):

* ``audiotok``: ``audiotok.transforms.tokenizers.kmeans.fit`` (greedy k-means++ seeding on
  50,000 frames, then faiss Lloyd iterations over all frames until the inertia improves by
  less than 1e-4 of itself), what ``audiotok fit-kmeans`` and ``tokenize`` run;
* ``hand-written``: the implementation audiotok had before (numpy, float64: k-means++ seeding
  over every frame, then Lloyd iterations with the same stopping rule), copied below; stopped
  at ``--baseline-budget-s`` (default 1800 s; then its row says where it stopped);
* ``sklearn-minibatch``: ``sklearn.cluster.MiniBatchKMeans`` with GSLM's settings
  (``batch_size=10000, max_iter=100, max_no_improvement=100, reassignment_ratio=0``) but one
  initialisation instead of 20;
* ``sklearn-kmeans``: ``sklearn.cluster.KMeans(n_init=1)`` (greedy k-means++ over every frame,
  Lloyd to convergence): the reference for inertia.

Columns: ``wall s`` and ``CPU s`` of the fit alone (all threads; loading the frames excluded);
``peak MB``: the process's peak RSS; ``fit MB``: that minus its RSS once the imports are done and the
frames loaded; ``inertia``: sum of squared distances of every frame to its nearest centroid,
computed the same way for every method (faiss exact search); ``vs sklearn``: inertia ÷
``sklearn-kmeans``'s (lower is better); ``speed-up``: ``hand-written``'s wall time ÷ the row's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

METHODS = ("audiotok", "hand-written", "sklearn-minibatch", "sklearn-kmeans")
CASES = {"ssl": {"frames": 200_000, "dim": 768, "k": 500}, "mfcc": {"frames": 200_000, "dim": 39, "k": 100}}
QUICK = {"ssl": {"frames": 3_000, "dim": 768, "k": 20}, "mfcc": {"frames": 3_000, "dim": 39, "k": 20}}


# ---------------------------------------------------------------------------- frames


def ssl_like_frames(n: int, dim: int = 768, components: int = 2000, subspace: int = 64, seed: int = 0) -> np.ndarray:
    """float32 [n, dim]: a Gaussian mixture standing in for SSL layer features (see the module doc)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((subspace, dim), dtype=np.float32) / np.float32(np.sqrt(subspace))
    means = rng.standard_normal((components, subspace), dtype=np.float32) * np.float32(3.0)
    weights = rng.dirichlet(np.full(components, 0.5))
    labels = rng.choice(components, size=n, p=weights)
    frames = means[labels] @ basis
    frames += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.5)
    return frames


def mfcc_frames(n: int, seed: int = 0) -> np.ndarray:
    """float32 [n, 39]: ``mfcc-kmeans`` features of perturbed copies of the example corpus."""
    from audiotok.transforms.decode import DecodeConfig, decode_ref, resample
    from audiotok.transforms.match import DEFAULT_EXCLUDE, is_excluded
    from audiotok.transforms.records import AudioRef
    from audiotok.transforms.tokenizers import registry

    tok = registry.create("mfcc-kmeans")
    corpus = ROOT / "examples" / "corpus"
    clips = []
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        if is_excluded(str(path.relative_to(corpus)), DEFAULT_EXCLUDE):
            continue
        decoded = decode_ref(AudioRef(uri=str(path)), DecodeConfig())
        clips.append(resample(decoded.audio, decoded.sample_rate, tok.sample_rate))
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < n:
        speed, gain, noise = rng.uniform(0.85, 1.15), rng.uniform(0.3, 1.0), 10 ** rng.uniform(-4, -2)
        for clip in clips:
            audio = resample(clip, int(round(tok.sample_rate * speed)), tok.sample_rate) * np.float32(gain)
            audio = audio + rng.standard_normal(audio.shape, dtype=np.float32) * np.float32(noise)
            feats = tok.features([audio.astype(np.float32)])[0]
            parts.append(feats)
            total += len(feats)
    return np.concatenate(parts)[:n].astype(np.float32)


def make_frames(case: str, n: int, dim: int, seed: int) -> np.ndarray:
    return ssl_like_frames(n, dim, seed=seed) if case == "ssl" else mfcc_frames(n, seed=seed)


# ---------------------------------------------------------------------------- the implementation replaced


def hand_written_fit(features: np.ndarray, k: int, seed: int = 0, max_iter: int = 100, tol: float = 1e-4,
                     deadline: float = float("inf")) -> tuple[np.ndarray | None, int, str | None]:
    """audiotok's k-means before faiss (numpy, float64), with a deadline added.

    Returns:
        (centroids or None when the seeding did not finish, Lloyd iterations, where it
        stopped: None when it converged or ran ``max_iter``, else "seeding" or "lloyd").
    """
    x = np.ascontiguousarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    centroids = np.empty((k, x.shape[1]), dtype=np.float64)
    centroids[0] = x[rng.integers(n)]
    closest = ((x - centroids[0]) ** 2).sum(1)
    for i in range(1, k):
        if time.monotonic() > deadline:
            return None, 0, "seeding"
        total = closest.sum()
        if total <= 0:
            centroids[i] = x[rng.integers(n)]
            continue
        index = int(np.searchsorted(np.cumsum(closest), rng.random() * total))
        centroids[i] = x[min(index, n - 1)]
        closest = np.minimum(closest, ((x - centroids[i]) ** 2).sum(1))
    x_sq = (x * x).sum(1)
    previous = np.inf
    iteration = 0
    for iteration in range(1, max_iter + 1):
        if time.monotonic() > deadline:
            return centroids.astype(np.float32), iteration - 1, "lloyd"
        d = x_sq[:, None] - 2.0 * (x @ centroids.T) + (centroids * centroids).sum(1)[None, :]
        labels = d.argmin(1)
        inertia = float(np.maximum(d[np.arange(len(x)), labels], 0).sum())
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        empty = counts == 0
        centroids = np.where(empty[:, None], centroids, sums / np.maximum(counts, 1)[:, None])
        if empty.any():
            far = np.argsort(-d[np.arange(len(x)), labels], kind="stable")[: int(empty.sum())]
            centroids[np.flatnonzero(empty)] = x[far]
        if np.isfinite(previous) and previous - inertia <= tol * max(previous, 1e-12):
            break
        previous = inertia
    return centroids.astype(np.float32), iteration, None


# ---------------------------------------------------------------------------- one fit, in a child process


def run_child(method: str, frames_path: str, k: int, seed: int, out_path: str, budget_s: float) -> dict[str, Any]:
    """Fits ``method`` on the frames; saves the centroids to ``out_path``; returns the figures."""
    from audiotok.transforms import isolation

    if method == "audiotok":
        from audiotok.transforms.tokenizers import kmeans
        kmeans._faiss()
    elif method.startswith("sklearn"):
        import sklearn.cluster  # noqa: F401
    frames = np.load(frames_path)
    rss_loaded = isolation.proc_status_mb("VmRSS") or 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    stopped = None
    if method == "audiotok":
        result = kmeans.fit(frames, k, seed=seed)
        centroids, iterations = result.centroids, result.iterations
    elif method == "hand-written":
        centroids, iterations, stopped = hand_written_fit(frames, k, seed=seed, deadline=time.monotonic() + budget_s)
    elif method == "sklearn-minibatch":
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(n_clusters=k, batch_size=10_000, max_iter=100, max_no_improvement=100,
                             reassignment_ratio=0.0, n_init=1, random_state=seed).fit(frames)
        centroids, iterations = km.cluster_centers_.astype(np.float32), int(km.n_steps_)
    elif method == "sklearn-kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(frames)
        centroids, iterations = km.cluster_centers_.astype(np.float32), int(km.n_iter_)
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if centroids is not None:
        np.save(out_path, centroids)
    peak = isolation.peak_rss_mb()
    return {"wall_s": wall, "cpu_s": cpu, "peak_mb": peak, "loaded_mb": rss_loaded, "iterations": iterations,
            "stopped": stopped, "fitted": centroids is not None}


def inertia(frames: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances from each frame to its nearest centroid (faiss exact search)."""
    import faiss

    index = faiss.IndexFlatL2(frames.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    distances, _ = index.search(np.ascontiguousarray(frames, dtype=np.float32), 1)
    return float(distances.sum(dtype=np.float64))


def fit_in_child(method: str, frames_path: Path, k: int, seed: int, budget_s: float) -> dict[str, Any]:
    out = frames_path.with_name(f"{frames_path.stem}-{method}.npy")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, str(frames_path), str(k), str(seed),
           str(out), str(budget_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-4000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["centroids"] = str(out) if figures["fitted"] else None
    return figures


# ---------------------------------------------------------------------------- the run


def measure(workdir: Path, cases: Sequence[str], methods: Sequence[str], quick: bool = False, seed: int = 0,
            frames: int | None = None, budget_s: float = 1800.0) -> dict[str, Any]:
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "machine": common.machine_info(("faiss", "sklearn", "numpy")),
                              "load_before": common.load_average(), "budget_s": budget_s, "cases": []}
    for case in cases:
        spec = dict((QUICK if quick else CASES)[case])
        if frames:
            spec["frames"] = frames
        t0 = time.perf_counter()
        x = make_frames(case, spec["frames"], spec["dim"], seed)
        path = workdir / f"{case}.npy"
        np.save(path, x)
        rows = []
        for method in methods:
            figures = fit_in_child(method, path, spec["k"], seed, budget_s)
            figures["inertia"] = inertia(x, np.load(figures["centroids"])) if figures["centroids"] else None
            rows.append({"method": method, **figures})
        ref = next((r["inertia"] for r in rows if r["method"] == "sklearn-kmeans" and r["inertia"]), None)
        base = next((r for r in rows if r["method"] == "hand-written"), None)
        for r in rows:
            r["vs_sklearn"] = round(r["inertia"] / ref, 4) if ref and r["inertia"] else None
            r["speedup"] = round(base["wall_s"] / r["wall_s"], 1) if base else None
        report["cases"].append({"case": case, "frames": int(x.shape[0]), "dim": int(x.shape[1]), "k": spec["k"],
                                "frames_s": round(time.perf_counter() - t0, 1), "rows": rows})
    report["load_after"] = common.load_average()
    return report


def format_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"kmeans_fit: {report['when']}, {m.get('cpu', '?')} ({m['cpu_count']} cores), faiss {m.get('faiss')}, "
             f"scikit-learn {m.get('sklearn')}; load average {report['load_before']} before, "
             f"{report.get('load_after')} after"]
    header = ["method", "wall s", "CPU s", "peak MB", "fit MB", "iterations", "inertia", "vs sklearn", "speed-up"]
    for case in report["cases"]:
        lines += ["", f"{case['case']}: {case['frames']:,} x {case['dim']}, k = {case['k']}"]
        table = []
        for r in case["rows"]:
            wall = f"{r['wall_s']:.1f}" + ("+" if r["stopped"] else "")
            table.append([r["method"] + (f" (stopped in {r['stopped']})" if r["stopped"] else ""), wall,
                          f"{r['cpu_s']:.1f}", f"{r['peak_mb']:.0f}", f"{r['peak_mb'] - r['loaded_mb']:.0f}",
                          str(r["iterations"]), "-" if r["inertia"] is None else f"{r['inertia']:.6g}",
                          "-" if r["vs_sklearn"] is None else f"{r['vs_sklearn']:.4f}",
                          "-" if r["speedup"] is None else f"{r['speedup']:.1f}x" + ("+" if _base_stopped(case) else "")])
        widths = [max(len(c) for c in col) for col in zip(header, *table)]
        fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
        lines += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in table]
    lines += ["", "+: the hand-written fit was stopped at the budget, so its time (and the speed-up) is a lower bound"]
    return "\n".join(lines)


def _base_stopped(case: dict[str, Any]) -> bool:
    return any(r["method"] == "hand-written" and r["stopped"] for r in case["rows"])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        method, frames_path, k, seed, out_path, budget_s = argv[1:7]
        print(json.dumps(run_child(method, frames_path, int(k), int(seed), out_path, float(budget_s))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="ssl,mfcc", help="comma-separated: ssl, mfcc")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--frames", type=int, default=None, help="frames per case (default 200,000; --quick 3,000)")
    parser.add_argument("--baseline-budget-s", type=float, default=1800.0,
                        help="stop the hand-written fit after this many seconds (default 1800)")
    parser.add_argument("--quick", action="store_true", help="3,000 frames, k = 20: checks that it runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", metavar="DIR", help="where the frames go (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    for name, known in ((cases, CASES), (methods, METHODS)):
        unknown = [v for v in name if v not in known]
        if unknown:
            parser.error(f"unknown {unknown}; known: {', '.join(known)}")
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="audiotok-kmeans-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        report = measure(workdir, cases, methods, quick=args.quick, seed=args.seed, frames=args.frames,
                         budget_s=args.baseline_budget_s)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
