"""Peak memory and time to segment a 3-hour recording, streamed, against whole-file decoding.

A recording of ``--hours`` (default 3) is generated into a temporary folder: one minute of
synthetic speech (voiced syllables, noise bursts, pauses) and 1-3 s silences, repeated, as
FLAC (``--format``) at 44.1 kHz stereo (``--rate``, ``--channels``), written block by block.
Then each row runs in a fresh Python process, so that its peak resident memory
(``VmHWM``, not ``ru_maxrss``: see ``isolation.peak_rss_mb``) is its own:

* ``imports``: the imports every row makes (numpy, torch, Beam, the project): the floor.
* ``stream <segmenter>``: the long-file path of the job without Beam: probe the header, plan
  the work items (``split_s``, default 600 s), then decode and segment every item in turn,
  ``--chunk-s`` seconds at a time, resampled to 16 kHz; segments are counted and dropped (in
  the job they go on to the tokenizer). ``tracemalloc`` gives the peak of Python/numpy
  allocations besides RSS. A worker holds one item at a time; the items of a file go to
  different workers in the job, so a row's time is the work, not the job's wall time.
* ``whole <minutes>``: the short-file path (``decode_ref`` + ``resample`` + fixed windows) on
  the first ``--whole-minutes`` of the same recording: the baseline, whose memory grows with
  the file (the decode guard refuses a 3-hour stereo file outright: 3.8 GB of float32).

    python benchmarks/long_file.py                          # 3 h, fixed + energy + vad
    python benchmarks/long_file.py --hours 1 --segmenters fixed --json out.json
    python benchmarks/long_file.py --quick                  # 10 min, fixed + energy: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

TARGET_RATE_HZ = 16000


def pattern(rate: int, channels: int, seconds: float = 60.0, seed: int = 0):
    """float32 [samples, channels]: ``seconds`` of speech-like stretches and pauses."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from audio_fixtures import synth_speechlike

    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * rate:
        pause = np.zeros((channels, int(rng.uniform(1.0, 3.0) * rate)), np.float32)
        speech = synth_speechlike(float(rng.uniform(3.0, 12.0)), rate, channels=channels, seed=int(rng.integers(1e9)))
        parts += [pause, speech]
        total += pause.shape[1] + speech.shape[1]
    return np.concatenate(parts, axis=1)[:, : int(seconds * rate)].T.copy()


def generate(path: Path, hours: float, rate: int, channels: int, fmt: str) -> float:
    """Writes the recording block by block; returns its duration in seconds."""
    import soundfile

    block = pattern(rate, channels)
    n_blocks = int(round(hours * 60))
    subtype = "PCM_16"
    with soundfile.SoundFile(path, "w", rate, channels, subtype=subtype, format=fmt.upper()) as f:
        for _ in range(n_blocks):
            f.write(block)
    return n_blocks * 60.0


# ---------------------------------------------------------------------------- rows (child processes)


def _imports() -> None:
    import apache_beam  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401

    from audiotok.transforms import decode, segment, vad  # noqa: F401


def row_imports(_args) -> dict:
    _imports()
    return {}


def row_stream(args) -> dict:
    import tracemalloc

    _imports()
    from audiotok.transforms import segment, storage, vad
    from audiotok.transforms.decode import DecodeConfig, FileDecoder
    from audiotok.transforms.records import AudioRef

    config = segment.SegmentConfig(segment_s=30.0, min_segment_s=1.0, segmenter=args.segmenter,
                                   split_s=args.split_s, chunk_s=args.chunk_s)
    decode = DecodeConfig(isolation="none", timeout_s=None, max_duration_s=None)
    model = vad.loaded_silero() if args.segmenter == "vad" else None
    if args.tracemalloc:
        tracemalloc.start()
    start = time.perf_counter()
    ref = AudioRef(args.path)
    route = FileDecoder()
    with storage.open_input(args.path) as f:  # planned whatever its length (what open() does past split_s)
        plan = route.plan(f, args.path, route.probe(f, args.path), decode, config.split_config(), None)
    items = segment.work_items(ref, plan)
    plan_s = time.perf_counter() - start
    stats = segment.SegmentStats()
    n_segments, audio_s, longest_item_s = 0, 0.0, 0.0

    def stretch(item):
        return route.stretch(item, decode, config.chunk_s)

    for item in items:
        t = time.perf_counter()
        for out in segment.segment_work_item(item, config, stretch, model, stats):
            if hasattr(out, "audio"):
                n_segments += 1
                audio_s += out.duration_s
        longest_item_s = max(longest_item_s, time.perf_counter() - t)
    wall = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
    return {"items": len(items), "segments": n_segments, "segmented_s": round(audio_s, 1),
            "nonspeech_s": round(stats.nonspeech_ms / 1000, 1), "plan_s": round(plan_s, 2),
            "longest_item_s": round(longest_item_s, 2), "seconds": round(wall, 2),
            "tracemalloc_peak_mb": None if traced is None else round(traced / 2**20, 1)}


def row_whole(args) -> dict:
    _imports()
    from audiotok.transforms import segment
    from audiotok.transforms.decode import DecodeConfig, decode_ref, probe_uri, resample
    from audiotok.transforms.records import AudioRef, Decoded

    # The first N minutes as a file of their own (written in blocks, before timing).
    import soundfile

    part = Path(args.path).with_name(f"first-{args.minutes}min.flac")
    info = probe_uri(args.path)
    with soundfile.SoundFile(args.path) as src, soundfile.SoundFile(part, "w", info.sample_rate, info.channels,
                                                                     subtype="PCM_16", format="FLAC") as dst:
        for _ in range(args.minutes):
            dst.write(src.read(info.sample_rate * 60, dtype="float32", always_2d=True))
    start = time.perf_counter()
    decoded = decode_ref(AudioRef(str(part)), DecodeConfig(isolation="none", timeout_s=None,
                                                           max_decoded_bytes=1 << 40, max_duration_s=None))
    audio = resample(decoded.audio, decoded.sample_rate, TARGET_RATE_HZ)
    decoded = Decoded(decoded.source, audio, TARGET_RATE_HZ, decoded.sample_rate, decoded.source_channels, "flac")
    n = sum(1 for _ in segment.cut_segments(decoded, segment.SegmentConfig()))
    return {"segments": n, "seconds": round(time.perf_counter() - start, 2)}


ROWS = {"imports": row_imports, "stream": row_stream, "whole": row_whole}


def child(argv: list[str]) -> None:
    from audiotok.transforms import isolation

    parser = argparse.ArgumentParser()
    parser.add_argument("row")
    parser.add_argument("--path")
    parser.add_argument("--segmenter", default="fixed")
    parser.add_argument("--split-s", dest="split_s", type=float, default=600.0)
    parser.add_argument("--chunk-s", dest="chunk_s", type=float, default=30.0)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args(argv)
    out = ROWS[args.row](args)
    out["peak_rss_mb"] = round(isolation.peak_rss_mb(), 1)
    print(json.dumps(out))


def run_row(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"row {argv} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--format", default="flac", choices=["flac", "wav"])
    parser.add_argument("--segmenters", default="fixed,energy,vad")
    parser.add_argument("--chunk-s", dest="chunk_s", type=float, default=30.0)
    parser.add_argument("--split-s", dest="split_s", type=float, default=600.0)
    parser.add_argument("--whole-minutes", dest="whole_minutes", default="10,30",
                        help="baseline file lengths, minutes (comma-separated)")
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--quick", action="store_true", help="10 minutes, fixed and energy")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hours, args.segmenters, args.whole_minutes = 10 / 60, "fixed,energy", "5,10"

    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "platform": platform.platform()}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="audiotok-long-") as tmp:
        path = Path(tmp) / f"long.{args.format}"
        t = time.perf_counter()
        duration = generate(path, args.hours, args.rate, args.channels, args.format)
        results["file"] = {"duration_s": duration, "rate": args.rate, "channels": args.channels,
                           "format": args.format, "bytes": path.stat().st_size,
                           "decoded_float32_mb": round(duration * args.rate * args.channels * 4 / 2**20),
                           "generated_in_s": round(time.perf_counter() - t, 1)}
        print(f"file: {duration / 3600:.2f} h, {args.rate} Hz x {args.channels} {args.format}, "
              f"{path.stat().st_size / 2**20:.0f} MB ({results['file']['decoded_float32_mb']} MB as float32), "
              f"written in {results['file']['generated_in_s']} s", flush=True)
        rows = [("imports", ["imports"])]
        for seg in args.segmenters.split(","):
            extra = ["--tracemalloc"] if args.tracemalloc else []
            rows.append((f"stream {seg}", ["stream", "--path", str(path), "--segmenter", seg, "--chunk-s",
                                           str(args.chunk_s), "--split-s", str(args.split_s), *extra]))
        for minutes in args.whole_minutes.split(","):
            rows.append((f"whole {minutes} min", ["whole", "--path", str(path), "--minutes", minutes]))
        print(f"{'row':<18} {'peak RSS MB':>12} {'tracemalloc MB':>15} {'seconds':>9} {'x real time':>12}  notes")
        for name, row_argv in rows:
            out = run_row(*row_argv)
            out["row"] = name
            results["rows"].append(out)
            audio_s = duration if name.startswith("stream") else (
                60.0 * int(name.split()[1]) if name.startswith("whole") else 0.0)
            speed = f"{audio_s / out['seconds']:.0f}" if out.get("seconds") else ""
            notes = ", ".join(f"{k}={v}" for k, v in out.items()
                              if k in ("items", "segments", "nonspeech_s", "plan_s", "longest_item_s"))
            traced = out.get("tracemalloc_peak_mb")
            print(f"{name:<18} {out['peak_rss_mb']:>12.0f} {'' if traced is None else f'{traced:.0f}':>15} "
                  f"{out.get('seconds', 0):>9.1f} {speed:>12}  {notes}", flush=True)
    whole = [r for r in results["rows"] if r["row"].startswith("whole")]
    if len(whole) >= 2:
        (m1, r1), (m2, r2) = [(int(r["row"].split()[1]), r["peak_rss_mb"]) for r in whole[:2]]
        per_hour = (r2 - r1) / ((m2 - m1) / 60)
        base = next(r["peak_rss_mb"] for r in results["rows"] if r["row"] == "imports")
        results["whole_per_hour_mb"] = round(per_hour)
        print(f"whole-file path grows by ~{per_hour:.0f} MB per hour of this audio: "
              f"~{r1 + per_hour * (duration / 3600 - m1 / 60):.0f} MB for the whole file "
              f"(imports alone: {base:.0f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
