"""How close the speech segmenters' borders come to the true ones.

Borders are found with no padding or merging (``--vad-pad-s 0 --vad-merge-gap-s 0``), by the
``energy`` detector and by Silero (``vad``), on audio whose true borders are exact by
construction:

* ``alone``: each spoken sentence of ``tests/data/speech`` (espeak-ng; speech from its first
  sample to its last) between two silences, over a -54 dBFS white noise floor;
* ``between pauses``: the five sentences in one recording, 1-3.5 s apart, over a -66 dBFS floor;
* ``synthetic``: the tests' speech-like generator (``tests/audio_fixtures.speech_with_pauses``:
  five stretches, pauses of 0.8-2 s), five seeds, white noise from none to -40 dBFS.

For each true border, the error is the signed distance to the nearest found border of the same
kind (start or end; positive: found late), in ms.

    python benchmarks/vad_borders.py            # the tables
    python benchmarks/vad_borders.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from audio_fixtures import clips_between_pauses, speech_clips, speech_with_pauses  # noqa: E402

SEGMENTERS = ("energy", "vad")
SYNTHETIC_SPANS = [(1.2, 3.0), (1.5, 4.0), (0.8, 2.5), (2.0, 5.0), (1.0, 1.5)]
SYNTHETIC_NOISE = (0.0, 0.001, 0.01)
SYNTHETIC_SEEDS = range(5)


def found_borders(audio: np.ndarray, segmenter: str) -> list[tuple[float, float]]:
    """(start, end) in seconds of the speech ``segmenter`` finds in 16 kHz ``audio``."""
    from audiotok.transforms import vad
    from audiotok.transforms.segment import SegmentConfig, speech_intervals
    from audiotok.transforms.vad import VAD_RATE, VadConfig

    config = SegmentConfig(segment_s=30.0, min_segment_s=0.0, segmenter=segmenter,
                           vad=VadConfig(pad_s=0.0, merge_gap_s=0.0))
    if segmenter == "energy":
        scores = vad.energy_scores([audio])
    else:
        scores = vad.silero_scores(vad.loaded_silero(), [audio], config.vad.batch_lanes)
    return [(a / VAD_RATE, b / VAD_RATE) for a, b in speech_intervals(scores, config, VAD_RATE)]


def border_errors_ms(found: list[tuple[float, float]], truth: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Per true border, the signed error of the nearest found border of its kind, ms."""
    starts = np.array([a for a, _ in found]) if found else np.array([np.inf])
    ends = np.array([b for _, b in found]) if found else np.array([np.inf])
    return {"start": [1000 * float(starts[np.argmin(np.abs(starts - a))] - a) for a, _ in truth],
            "end": [1000 * float(ends[np.argmin(np.abs(ends - b))] - b) for _, b in truth]}


def spurious(found: list[tuple[float, float]], truth: list[tuple[float, float]], tolerance_s: float = 0.1) -> int:
    """Found stretches that lie outside every true one (by more than ``tolerance_s``)."""
    return sum(not any(ta - tolerance_s <= a and b <= tb + tolerance_s for ta, tb in truth) for a, b in found)


def measure() -> dict:
    from audiotok.transforms.decode import DecodeConfig, decode_ref, resample
    from audiotok.transforms.records import AudioRef
    from audiotok.transforms.vad import VAD_RATE

    clips = speech_clips()
    decoded = [decode_ref(AudioRef(str(clip.path)), DecodeConfig(isolation="none")) for clip in clips]
    speech = [resample(d.audio, d.sample_rate, VAD_RATE) for d in decoded]
    report: dict = {"alone": [], "between_pauses": {}, "synthetic": {}}
    for i, (clip, x) in enumerate(zip(clips, speech)):
        audio, truth = clips_between_pauses([x], [0.5 + 0.3 * i, 1.0 + 0.2 * i], 0.002, seed=i)
        row = {"clip": clip.path.name}
        for segmenter in SEGMENTERS:
            errors = border_errors_ms(found_borders(audio, segmenter), truth)
            row[segmenter] = {"start_ms": round(errors["start"][0]), "end_ms": round(errors["end"][0])}
        report["alone"].append(row)
    audio, truth = clips_between_pauses(speech, [1.0 + 0.5 * i for i in range(len(speech) + 1)], 0.0005, seed=7)
    for segmenter in SEGMENTERS:
        found = found_borders(audio, segmenter)
        errors = border_errors_ms(found, truth)
        report["between_pauses"][segmenter] = _summary(errors["start"] + errors["end"], spurious(found, truth))
    for segmenter in SEGMENTERS:
        all_errors, extra = [], 0
        for noise in SYNTHETIC_NOISE:
            for seed in SYNTHETIC_SEEDS:
                audio, truth = speech_with_pauses(SYNTHETIC_SPANS, seed=seed, noise=noise)
                found = found_borders(audio, segmenter)
                errors = border_errors_ms(found, truth)
                all_errors += errors["start"] + errors["end"]
                extra += spurious(found, truth)
        report["synthetic"][segmenter] = _summary(all_errors, extra)
    return report


def _summary(errors_ms: list[float], spurious_count: int) -> dict:
    magnitude = np.abs(errors_ms)
    return {"borders": len(errors_ms), "mean_abs_ms": round(float(magnitude.mean()), 1),
            "max_abs_ms": round(float(magnitude.max())), "beyond_100ms": int((magnitude > 100).sum()),
            "spurious": spurious_count}


def format_tables(report: dict) -> str:
    lines = ["each sentence alone: error of the found border, ms (start / end; + is late)",
             f"{'clip':<18} {'energy':>12} {'vad':>12}"]
    for row in report["alone"]:
        cells = [f"{row[s]['start_ms']:+d} / {row[s]['end_ms']:+d}" for s in SEGMENTERS]
        lines.append(f"{row['clip']:<18} {cells[0]:>12} {cells[1]:>12}")
    for title, key in (("the sentences between pauses in one recording", "between_pauses"),
                       ("synthetic speech-like stretches (5 seeds x noise none, -60, -40 dBFS)", "synthetic")):
        lines += ["", title, f"{'segmenter':<10} {'borders':>7} {'mean |err| ms':>13} {'max |err| ms':>12} "
                             f"{'> 100 ms':>8} {'spurious':>8}"]
        for segmenter, s in report[key].items():
            lines.append(f"{segmenter:<10} {s['borders']:>7} {s['mean_abs_ms']:>13} {s['max_abs_ms']:>12} "
                         f"{s['beyond_100ms']:>8} {s['spurious']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = measure()
    print(format_tables(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
