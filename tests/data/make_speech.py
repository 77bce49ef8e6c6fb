"""Build the speech fixtures in ``tests/data/speech/``: espeak-ng sentences, cut to the speech.

Usage (from anywhere; needs the ``espeak-ng`` program, numpy, soundfile, PyAV, soxr)::

    python tests/data/make_speech.py [--out tests/data/speech]

Each clip is one sentence of ``examples/make_corpus.py`` (written for this project, CC0)
spoken by espeak-ng, cut from its first to its last sample within 40 dB of its peak: speech
fills each clip from end to end. Tests lay the clips between silences of known lengths and
know exactly where speech begins and ends. Then, as ``make_corpus.py`` does: peak-normalised,
resampled and encoded (one clip per format).

``clips.json`` lists each clip: ``file``, ``text``, ``voice``, ``format``, ``sample_rate`` and
``samples`` (its length at that rate, which a decoder must give back).

The bytes repeat for a given espeak-ng (1.51), libsndfile and FFmpeg build.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from make_corpus import FLAC_22K, WAV_16K, Clip, Encoding, encode, prepare, synthesize  # noqa: E402

MP3_22K = Encoding("MP3 22.05 kHz mono", 22050, pyav_codecs=("libmp3lame", "mp3"), pyav_container="mp3")
OPUS_48K = Encoding("Opus 48 kHz mono (Ogg)", 48000, pyav_codecs=("libopus", "opus"), pyav_container="ogg",
                    bit_rate=32_000)

CLIPS: tuple[Clip, ...] = (
    Clip("speech_us", "speech_us.wav", "en-us", 160, 50, (2,), WAV_16K),
    Clip("speech_gb", "speech_gb.flac", "en-gb", 150, 45, (10,), FLAC_22K),
    Clip("speech_f3", "speech_f3.mp3", "en-us+f3", 150, 60, (6,), MP3_22K),
    Clip("speech_sc", "speech_sc.opus", "en-gb-scotland", 145, 40, (4,), OPUS_48K),
    Clip("speech_029", "speech_029.flac", "en-029", 170, 55, (7,), FLAC_22K),
)


# Where speech begins and ends: the first and last sample within 40 dB of the clip's peak (what
# tests/transforms/test_vad.py's synthetic stretches use too). espeak-ng surrounds speech with
# digital silence, but some words fade out over a few hundred ms at -40 to -90 dB, which no
# detector (and no listener) takes for speech.
SPEECH_BELOW_PEAK_DB = 40.0


def speech_only(samples: np.ndarray) -> np.ndarray:
    """``samples`` from its first sample within ``SPEECH_BELOW_PEAK_DB`` of the peak to its last."""
    peak = float(np.max(np.abs(samples), initial=0.0))
    if peak == 0.0:
        raise ValueError("espeak-ng produced only silence")
    loud = np.flatnonzero(np.abs(samples) >= peak * 10 ** (-SPEECH_BELOW_PEAK_DB / 20))
    return samples[loud[0]: loud[-1] + 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "speech",
                        help="output folder (default: tests/data/speech next to this script)")
    args = parser.parse_args(argv)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        print("error: espeak-ng not found on PATH (Debian/Ubuntu: apt-get install espeak-ng)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in CLIPS:
        speech, rate = synthesize(espeak, clip)
        samples = prepare(speech_only(speech), rate, clip.encoding)
        (args.out / clip.path).write_bytes(encode(samples, clip.encoding))
        rows.append({"file": clip.path, "text": clip.text, "voice": clip.voice, "format": clip.encoding.name,
                     "sample_rate": clip.encoding.sample_rate, "samples": int(samples.shape[1])})
        print(f"{clip.path:18s} {clip.encoding.name:24s} {samples.shape[1] / clip.encoding.sample_rate:5.2f} s")
    (args.out / "clips.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
