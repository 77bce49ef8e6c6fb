"""How often a tokenizer's codes agree between two ways of encoding the same audio, and where
they do not.

    python -m benchmarks.agreement                       # each tokenizer's own chunking, on segments 2.5 chunks long
    python -m benchmarks.agreement --chunk-s 3 --overlap-s 1 --seconds 40    # short chunks: many seams
    python -m benchmarks.agreement --quick               # 12 s, three tokenizers, 3 s chunks: checks that it runs
    python -m benchmarks.agreement --only encodec-24k --json out/agreement.json

Two comparisons per tokenizer, on the same audio (real speech from ``--speech``, looped and
resampled to the tokenizer's rate; synthetic speech-like audio when the folder is absent):

* **chunked vs whole**: one segment encoded whole (one chunk) and in chunks, the tokenizer's own
  ``chunk_s``/``overlap_s`` (what the job does with a segment longer than ``chunk_s``) unless
  ``--chunk-s``/``--overlap-s`` say otherwise (Mimi keeps at least 25 s and 10 s: its
  transformer looks 10 s back), stitched at the middle of each overlap (``chunking.plan_chunks``).
  The segment lasts ``--seconds``, by default 2.5 chunks (at least 40 s). Each differing frame is placed by its
  distance, in frames, to the nearest seam.
* **padded batch vs one at a time**: the first 40 s of the same audio cut into segments of 2-7 s, encoded as
  padded batches (``chunking.BATCH_ON_CPU`` on: what GPU workers do) and one segment per
  forward pass (the CPU default). Models that are not padding-invariant batch equal lengths
  only, so the segments come in pairs of equal length. Each differing frame is placed by its
  distance to its segment's end (where the padding starts).

* **two torch threads vs one** (``--torch-threads``): the same segments encoded one at a time
  with two intra-op threads and with one: CPU kernels may split their sums differently. For the
  SSL models, also the share of feature values (as float16, what ``*-emb`` streams store) that
  are equal.

A code that differs far from any seam is checked for a float near-tie: the encoder's latent at
that frame is compared between the whole encode and the chunk that produced the frame
(relative difference: float rounding is ~1e-6), and, for EnCodec and the SSL k-means units,
the two candidate codes' distances to the (residual) latent are compared (relative margin).

Models are real-size with random weights (no download; see ``benchmarks/tokenizers_cpu.py``):
agreement depends on how often latents fall near a decision boundary, which trained weights
may change; the method, not the weights, is what this measures on a machine without them.
The baseline of each figure is the same model's own other encode, in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEECH = ROOT.parent / "shared" / "corpus" / "speech"
TOKENIZERS = ("encodec-24k", "encodec-48k", "dac-16k", "mimi", "snac-24k", "hubert-l9-km500")
QUICK = ("encodec-24k", "dac-16k", "hubert-l9-km500")
# Frames within this many of a seam (or a segment's end) count as "near" it.
NEAR_FRAMES = 2
# Seconds of audio cut into segments for the batching comparison (at most).
BATCH_S = 40.0
# The least chunking a tokenizer is measured with: Mimi needs 10 s of context.
MIN_CHUNKING = {"mimi": (25.0, 10.0)}


# ---------------------------------------------------------------------------- audio


def speech(rate: int, seconds: float, folder: Path | None) -> np.ndarray:
    """float32 [round(seconds * rate)]: the recordings of ``folder`` (sorted, each resampled to
    ``rate``) one after another, looped; speech-like synthetic audio when there are none."""
    from audiotok.transforms.decode import DecodeConfig, decode_ref, resample
    from audiotok.transforms.records import AudioRef

    n = int(round(seconds * rate))
    parts = []
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".wav", ".flac", ".mp3", ".ogg", ".opus"):
                continue
            decoded = decode_ref(AudioRef(str(path)), DecodeConfig(isolation="none"))
            parts.append(resample(decoded.audio, decoded.sample_rate, rate))
    if not parts:
        sys.path.insert(0, str(ROOT / "tests"))
        from audio_fixtures import synth_speechlike

        parts = [synth_speechlike(min(seconds, 20.0), rate, seed=0)[0]]
    whole = np.concatenate(parts)
    reps = -(-n // len(whole))
    return np.ascontiguousarray(np.tile(whole, reps)[:n], dtype=np.float32)


def batch_lengths(n: int, rate: int, pairs: bool, seed: int = 0) -> list[int]:
    """Segment lengths (samples) of 2-7 s that add up to at most ``n``; with ``pairs``, each
    length twice in a row (so models that batch equal lengths only still batch)."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while True:
        length = int(rng.uniform(2.0, 7.0) * rate)
        need = 2 * length if pairs else length
        if sum(lengths) + need > n:
            return lengths
        lengths += [length] * (2 if pairs else 1)


# ---------------------------------------------------------------------------- encoding


def main_stream(tok) -> str:
    """The stream compared: the tokenizer's first discrete one (SNAC: its finest scale)."""
    discrete = [s for s in tok.streams if s.kind in ("codes", "units")]
    return discrete[-1].name if tok.name.startswith("snac") else discrete[0].name


def hop_of(tok, stream: str) -> int:
    return int(round(tok.sample_rate / next(s for s in tok.streams if s.name == stream).frame_rate_hz))


def as_codes(array: np.ndarray) -> np.ndarray:
    """int64 [K, T] (units [T] -> [1, T])."""
    a = np.asarray(array).astype(np.int64)
    return a[None] if a.ndim == 1 else a


def chunk_plan(tok, n: int):
    """The chunks ``tok`` encodes a segment of ``n`` samples in."""
    from audiotok.transforms.tokenizers import chunking

    if hasattr(tok, "chunk_plan"):
        return tok.chunk_plan(n)
    c, hop = tok.config, tok.backbone.arch.hop_length
    return chunking.plan_chunks(n, round(c.chunk_s * tok.sample_rate), round(c.overlap_s * tok.sample_rate), hop)


def latents(tok, audio: np.ndarray) -> np.ndarray:
    """float64 [T, D]: what the quantizer sees (a codec's encoder output, an SSL layer) for one
    input encoded as one piece."""
    import torch

    if hasattr(tok, "backbone"):
        return tok.backbone.features([audio])[0].astype(np.float64)
    align = tok.arch.align
    x = np.zeros((1, tok.arch.channels, -(-len(audio) // align) * align), np.float32)
    x[:, :, :len(audio)] = audio
    with torch.inference_mode():
        out = tok._model.encoder(torch.from_numpy(x))
    out = getattr(out, "latents", out)
    return out[0].T.double().numpy()[:tok.num_frames(len(audio))]


def code_margin(tok, z: np.ndarray, codes_a: np.ndarray, codes_b: np.ndarray) -> float | None:
    """At the first codebook where two encodes of one frame differ: |d(b) - d(a)| / d(a), the
    relative difference of the two candidates' squared distances to what that stage quantizes
    (``z``: the frame's latent, float64 [D]). None where the quantizer is a library's own."""
    k = int(np.flatnonzero(codes_a != codes_b)[0])
    if hasattr(tok, "codebook") and hasattr(tok, "backbone"):  # SSL k-means: one stage
        centroids = tok.codebook.centroids.astype(np.float64)
        residual, embed = z, centroids
    elif getattr(tok, "model_type", None) == "encodec":
        layers = tok._model.quantizer.layers
        residual = z.copy()
        for i in range(k):
            residual -= layers[i].codebook.embed[int(codes_a[i])].double().numpy()
        embed = layers[k].codebook.embed.double().numpy()
    else:
        return None
    d = ((residual[None, :] - embed) ** 2).sum(1)
    da, db = d[int(codes_a[k])], d[int(codes_b[k])]
    return float(abs(db - da) / max(da, 1e-30))


@dataclasses.dataclass
class Differences:
    """Codes compared between two encodes, and where the differing frames lie."""

    codes: int = 0
    equal: int = 0
    frames: list[int] = dataclasses.field(default_factory=list)  # differing frames
    distance: list[int] = dataclasses.field(default_factory=list)  # to the nearest seam / end, frames
    far_latent_rel: list[float] = dataclasses.field(default_factory=list)
    far_margin: list[float] = dataclasses.field(default_factory=list)
    float16_equal: float | None = None  # share of feature values equal as float16 (SSL, threads)

    @property
    def fraction_equal(self) -> float:
        return self.equal / self.codes if self.codes else 1.0

    def add(self, other: "Differences") -> None:
        """Adds another segment's comparison (its frames stay in its own numbering)."""
        self.codes += other.codes
        self.equal += other.equal
        self.frames += other.frames
        self.distance += other.distance

    @property
    def far(self) -> int:
        return sum(d > NEAR_FRAMES for d in self.distance)

    def summary(self) -> dict[str, Any]:
        return {"codes": self.codes, "equal": self.equal, "fraction_equal": self.fraction_equal,
                "differing_frames": len(self.frames), "far_frames": self.far,
                "distance_frames": self.distance, "far_latent_rel": self.far_latent_rel,
                "far_margin": self.far_margin, "float16_equal": self.float16_equal}


def compare(a: np.ndarray, b: np.ndarray, anchors: Sequence[int]) -> Differences:
    """Codes ``a`` vs ``b`` ([K, T] each); distances of differing frames to the nearest anchor."""
    a, b = as_codes(a), as_codes(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    same = a == b
    out = Differences(codes=int(a.size), equal=int(same.sum()))
    anchors = np.asarray(list(anchors) or [10 ** 9])
    for f in np.flatnonzero(~same.all(0)):
        out.frames.append(int(f))
        out.distance.append(int(np.abs(anchors - f).min()))
    return out


def chunked_vs_whole(tok_whole, tok_chunked, audio: np.ndarray) -> Differences:
    stream = main_stream(tok_whole)
    hop = hop_of(tok_whole, stream)
    whole = tok_whole.encode(audio)[stream]
    chunked = tok_chunked.encode(audio)[stream]
    plan = chunk_plan(tok_chunked, len(audio))
    result = compare(whole, chunked, [c.keep_end / hop for c in plan[:-1]])
    if not any(d > NEAR_FRAMES for d in result.distance):
        return result
    z_whole = latents(tok_whole, audio)
    z_chunks: dict[int, np.ndarray] = {}
    for f, dist in zip(result.frames, result.distance):
        if dist <= NEAR_FRAMES:
            continue
        owner = next(c for c in plan if c.keep_start <= f * hop < c.keep_end)
        if owner.start not in z_chunks:
            z_chunks[owner.start] = latents(tok_chunked, audio[owner.start:owner.end])
        z_chunk = z_chunks[owner.start][f - owner.start // hop]
        result.far_latent_rel.append(float(np.linalg.norm(z_chunk - z_whole[f]) / np.linalg.norm(z_whole[f])))
        margin = code_margin(tok_whole, z_whole[f], as_codes(whole)[:, f], as_codes(chunked)[:, f])
        if margin is not None:
            result.far_margin.append(margin)
    return result


def batched_vs_single(tok, audio: np.ndarray) -> Differences:
    from audiotok.transforms.tokenizers import chunking

    stream = main_stream(tok)
    hop = hop_of(tok, stream)
    lengths = batch_lengths(len(audio), tok.sample_rate, pairs=not tok.padding_invariant)
    starts = np.cumsum([0, *lengths[:-1]])
    pieces = [audio[s:s + n] for s, n in zip(starts, lengths)]
    chunking.BATCH_ON_CPU = True
    try:
        batched = tok.encode_batch(pieces)
    finally:
        chunking.BATCH_ON_CPU = False
    total = Differences()
    for piece, got in zip(pieces, batched):
        total.add(compare(tok.encode(piece)[stream], got[stream], [-(-len(piece) // hop)]))
    return total


def threads_vs_one(tok, audio: np.ndarray, threads: int = 2) -> Differences:
    """Codes of the same segments with ``threads`` torch threads vs one."""
    import torch

    stream = main_stream(tok)
    hop = hop_of(tok, stream)
    lengths = batch_lengths(len(audio), tok.sample_rate, pairs=False)
    starts = np.cumsum([0, *lengths[:-1]])
    pieces = [audio[s:s + n] for s, n in zip(starts, lengths)]
    ssl = hasattr(tok, "backbone")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [tok.encode(p)[stream] for p in pieces]
        features_one = [tok.backbone.features([p])[0].astype(np.float16) for p in pieces] if ssl else []
        torch.set_num_threads(threads)
        many = [tok.encode(p)[stream] for p in pieces]
        features_many = [tok.backbone.features([p])[0].astype(np.float16) for p in pieces] if ssl else []
    finally:
        torch.set_num_threads(before)
    total = Differences()
    for piece, a, b in zip(pieces, one, many):
        total.add(compare(a, b, [-(-len(piece) // hop)]))
    if ssl:
        same = sum(int((x == y).sum()) for x, y in zip(features_one, features_many))
        total.float16_equal = same / sum(x.size for x in features_one)
    return total


# ---------------------------------------------------------------------------- tokenizers


def chunking_of(name: str, chunk_s: float | None, overlap_s: float | None) -> tuple[float, float]:
    """(chunk_s, overlap_s) to measure ``name`` with: its defaults unless given."""
    from audiotok.transforms.tokenizers import registry

    config = registry.create(name).config
    chunk = chunk_s if chunk_s is not None else config.chunk_s
    overlap = overlap_s if overlap_s is not None else config.overlap_s
    least = MIN_CHUNKING.get(name, (0.0, 0.0))
    return max(chunk, least[0]), max(overlap, least[1])


def build(name: str, models: Path, chunk_s: float, overlap_s: float, probe: np.ndarray | None = None):
    """(whole, chunked) tokenizers of ``name`` on its real-size random-weight model."""
    from benchmarks import tokenizers_cpu

    from audiotok.transforms.tokenizers import registry
    from audiotok.transforms.tokenizers.spectral import KMeansTokenizer

    folder = tokenizers_cpu.model_folder(models, tokenizers_cpu.TOKENIZERS[name])
    spec = f"model={folder}"
    probe_tok = registry.create(f"{name}[{spec}]")
    if isinstance(probe_tok, KMeansTokenizer):
        spec += f",codebook={frame_codebook(probe_tok.load('cpu'), models, probe)}"
    if name == "encodec-48k":  # encodes its own 1 s windows: chunked is whole by construction
        whole = registry.create(f"{name}[{spec}]")
        return whole.load("cpu"), None
    whole = registry.create(f"{name}[{spec},chunk_s=3600,overlap_s=1]").load("cpu")
    chunked = registry.create(f"{name}[{spec},chunk_s={chunk_s},overlap_s={overlap_s}]").load("cpu")
    return whole, chunked


def frame_codebook(tok, models: Path, probe: np.ndarray) -> str:
    """A codebook of ``k`` of the model's own feature frames (as k-means++ seeding picks them),
    so that frames sit at realistic distances from their centroids."""
    from audiotok.transforms.tokenizers import kmeans

    feats = tok.features([probe])[0]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(feats), size=tok.config.k, replace=len(feats) < tok.config.k)
    centroids = feats[pick] + 0.01 * feats.std() * rng.standard_normal((tok.config.k, feats.shape[1]))
    path = models / f"{tok.name}-frames-k{tok.config.k}.safetensors"
    book = kmeans.Codebook(centroids.astype(np.float32), {"tokenizer": tok.name, "features": tok.feature_fingerprint()})
    path.write_bytes(book.to_bytes())
    return str(path)


# ---------------------------------------------------------------------------- report


def _percent(x: float) -> str:
    return f"{100 * x:.3f}%"


def _worst(values: Sequence[float]) -> str:
    return f"{max(values):.1e}" if values else "-"


def _threads_cell(t: dict[str, Any] | None) -> str:
    if not t:
        return "-"
    features = f" (features as float16: {_percent(t['float16_equal'])})" if t.get("float16_equal") is not None else ""
    return _percent(t["fraction_equal"]) + features


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| tokenizer | codes | chunked = whole | differing frames (near a seam / far) | far: latent rel. diff "
             "(max) | far: code margin (max) | padded batch = one at a time | differing frames (near the end / far) "
             "| 2 threads = 1 |",
             "|---|---:|---:|---|---:|---:|---:|---|---:|"]
    for r in rows:
        c, b = r.get("chunked"), r["batched"]
        if c is None:
            chunk_cols = ["n/a (its own 1 s windows)", "-", "-", "-"]
        else:
            chunk_cols = [_percent(c["fraction_equal"]),
                          f"{c['differing_frames'] - c['far_frames']} / {c['far_frames']}",
                          _worst(c["far_latent_rel"]), _worst(c["far_margin"])]
        lines.append("| " + " | ".join([
            r["tokenizer"], str(c["codes"] if c else b["codes"]), *chunk_cols, _percent(b["fraction_equal"]),
            f"{b['differing_frames'] - b['far_frames']} / {b['far_frames']}",
            _threads_cell(r.get("threads"))]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated tokenizers (default: {', '.join(TOKENIZERS)})")
    parser.add_argument("--quick", action="store_true", help=f"12 s of audio, 3 s chunks, {', '.join(QUICK)}")
    parser.add_argument("--seconds", type=float, help="seconds of audio per tokenizer (default: 2.5 chunks)")
    parser.add_argument("--chunk-s", type=float, help="chunk length for 'chunked' (default: the tokenizer's)")
    parser.add_argument("--overlap-s", type=float, help="chunk overlap for 'chunked' (default: the tokenizer's)")
    parser.add_argument("--speech", default=str(DEFAULT_SPEECH), help="folder of real recordings")
    parser.add_argument("--models", default=os.path.join(os.path.expanduser("~"), ".cache", "audiotok", "bench-models"),
                        help="where the random real-size models are saved (reused across runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", help="also write every figure and differing frame here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or list(QUICK if args.quick else TOKENIZERS)
    unknown = sorted(set(names) - set(TOKENIZERS))
    if unknown:
        parser.error(f"unknown tokenizer(s) {', '.join(unknown)}; known: {', '.join(TOKENIZERS)}")
    if args.quick:
        args.seconds, args.chunk_s, args.overlap_s = 12.0, 3.0, 1.0
    models = Path(args.models)
    models.mkdir(parents=True, exist_ok=True)
    folder = Path(args.speech)
    print(f"{'speech from ' + str(folder) if folder.is_dir() else 'synthetic speech-like audio'}, "
          f"{torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    rows = []
    for name in names:
        t = time.perf_counter()
        from audiotok.transforms.tokenizers import registry

        rate = registry.create(name).sample_rate
        chunk_s, overlap_s = chunking_of(name, args.chunk_s, args.overlap_s)
        seconds = args.seconds or max(BATCH_S, 2.5 * chunk_s)
        audio = speech(rate, seconds, folder)
        whole, chunked = build(name, models, chunk_s, overlap_s, probe=audio)
        row = {"tokenizer": name, "stream": main_stream(whole), "seconds": seconds,
               "chunk_s": chunked.config.chunk_s if chunked else None,
               "overlap_s": chunked.config.overlap_s if chunked else None,
               "chunked": chunked_vs_whole(whole, chunked, audio).summary() if chunked else None,
               "batched": batched_vs_single(whole, audio[:int(BATCH_S * rate)]).summary(),
               "threads": threads_vs_one(whole, audio[:int(BATCH_S * rate)]).summary()}
        rows.append(row)
        c = row["chunked"]
        print(f"  {name} ({seconds:g} s): chunked = whole {_percent(c['fraction_equal']) if c else 'n/a'}, padded batch = one at a "
              f"time {_percent(row['batched']['fraction_equal'])}, 2 threads = 1 "
              f"{_percent(row['threads']['fraction_equal'])} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        del whole, chunked
    print(table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "near_frames": NEAR_FRAMES,
                                               "load_average": os.getloadavg()[0]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
