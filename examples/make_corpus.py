"""Build the small example corpus in ``examples/corpus/``: espeak-ng speech in many formats.

Usage::

    python examples/make_corpus.py [--out examples/corpus]

Every clip is English speech synthesized with espeak-ng from sentences written for this
project, then resampled and encoded into one of several formats, sample rates and channel
layouts, in nested folders (so recursive ``**`` globs matter):

* WAV PCM16 16 kHz mono, WAV PCM16 44.1 kHz stereo, FLAC 22.05 kHz, Ogg/Vorbis 16 kHz,
  MP3 48 kHz, Opus 48 kHz (Ogg container), M4A/AAC 44.1 kHz;
* one Ogg/Vorbis file with a misleading ``.audio`` extension (formats are detected by content);
* one ~36 s clip, so that 30 s windowing leaves a tail segment.

``manifest.jsonl`` in the output folder lists every clip: ``uri`` (relative to the manifest's
folder), ``id``, ``text`` (what is spoken), ``speaker`` (the espeak-ng voice) and ``language``.

Requirements: the ``espeak-ng`` program, numpy, soundfile (libsndfile >= 1.1 for Ogg/Vorbis),
PyAV (``av``) for MP3/Opus/AAC, and soxr or torchaudio for resampling.

The output is deterministic for a given espeak-ng, libsndfile and FFmpeg build: no randomness,
muxers run in bit-exact mode and Ogg serial numbers are fixed. Other builds produce slightly
different bytes (and espeak-ng versions slightly different speech), never different files.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

# The reproducible encoders are the tests' (tests/audio_fixtures.py): one copy of the Ogg serial
# rewriting, the bit-exact PyAV muxing and the resampler.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audio_fixtures import encode_with_pyav, resample, set_ogg_serial  # noqa: E402

LANGUAGE = "en"

# Sentences written for this corpus (CC0). Plain words only, no digits or abbreviations, so
# the text is exactly what is spoken.
SENTENCES: tuple[str, ...] = (
    "The morning train left the station just as the fog began to lift.",
    "She kept a small notebook full of recipes her grandmother never wrote down.",
    "Please close the window before the rain comes in.",
    "A quiet river runs behind the old mill, and nobody remembers who built it.",
    "We counted seven boats in the harbour and one lonely gull on the pier.",
    "Bring a warm coat, because the evenings in the hills are colder than you think.",
    "The library opens at nine and closes when the last reader goes home.",
    "He painted the fence bright yellow, then changed his mind and painted it green.",
    (
        "Good ideas often arrive while you are doing something else entirely, "
        "like washing the dishes or walking the dog."
    ),
    "Every map is a small promise that the world can be folded and carried in a pocket.",
    "Turn left at the bakery.",
    (
        "The clock in the hallway has been ten minutes fast for as long as anyone can remember, "
        "and by now the whole family simply plans around it."
    ),
)

PEAK = 0.8  # peak amplitude after normalisation: headroom for lossy codecs' overshoot
SENTENCE_GAP_S = 0.6  # silence between sentences in multi-sentence clips
STEREO_DELAY_S = 0.012  # the second channel of stereo clips: delayed ...
STEREO_GAIN = 0.8  # ... and attenuated copy of the first


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How a clip is stored.

    Attributes:
        name: human-readable description (for the summary printed at the end).
        sample_rate: stored sample rate, Hz.
        channels: 1 (mono) or 2 (stereo: a delayed, attenuated copy of the mono signal).
        soundfile_format: (format, subtype) when libsndfile writes it, else None.
        pyav_codecs: encoder names to try, in order, when PyAV (FFmpeg) writes it.
        pyav_container: FFmpeg muxer name for PyAV.
        bit_rate: target bit rate for PyAV encoders, bits/s.
    """

    name: str
    sample_rate: int
    channels: int = 1
    soundfile_format: tuple[str, str] | None = None
    pyav_codecs: tuple[str, ...] = ()
    pyav_container: str = ""
    bit_rate: int = 64_000


WAV_16K = Encoding("WAV PCM16 16 kHz mono", 16000, soundfile_format=("WAV", "PCM_16"))
WAV_44K_STEREO = Encoding("WAV PCM16 44.1 kHz stereo", 44100, channels=2, soundfile_format=("WAV", "PCM_16"))
FLAC_22K = Encoding("FLAC 16 bit 22.05 kHz mono", 22050, soundfile_format=("FLAC", "PCM_16"))
VORBIS_16K = Encoding("Ogg/Vorbis 16 kHz mono", 16000, soundfile_format=("OGG", "VORBIS"),
                      pyav_codecs=("libvorbis",), pyav_container="ogg")
MP3_48K = Encoding("MP3 48 kHz mono", 48000, pyav_codecs=("libmp3lame", "mp3"), pyav_container="mp3")
OPUS_48K_STEREO = Encoding("Opus 48 kHz stereo (Ogg)", 48000, channels=2, pyav_codecs=("libopus", "opus"),
                           pyav_container="ogg", bit_rate=48_000)
AAC_44K = Encoding("M4A/AAC 44.1 kHz mono", 44100, pyav_codecs=("aac",), pyav_container="ipod")


@dataclasses.dataclass(frozen=True)
class Clip:
    """One corpus file.

    Attributes:
        id: unique clip id (the manifest's ``id``).
        path: file path relative to the corpus root.
        voice: espeak-ng voice (``-v``), also the manifest's ``speaker``.
        speed: words per minute (``-s``).
        pitch: 0-99 (``-p``).
        sentences: indices into SENTENCES, spoken in order with SENTENCE_GAP_S between them.
        encoding: how the file is stored.
    """

    id: str
    path: str
    voice: str
    speed: int
    pitch: int
    sentences: tuple[int, ...]
    encoding: Encoding

    @property
    def text(self) -> str:
        return " ".join(SENTENCES[i] for i in self.sentences)


CLIPS: tuple[Clip, ...] = (
    Clip("en_a_0001", "en/a/us_0001.wav", "en-us", 160, 50, (0,), WAV_16K),
    Clip("en_a_0002", "en/a/us_0002.flac", "en-us+f3", 140, 55, (1,), FLAC_22K),
    Clip("en_a_0003", "en/a/mp3/us_0003.mp3", "en-us", 175, 40, (8,), MP3_48K),
    Clip("en_a_0004", "en/a/opus/us_0004.opus", "en-us+f3", 135, 60, (10,), OPUS_48K_STEREO),
    Clip("en_b_0001", "en/b/gb_0001.wav", "en-gb", 150, 50, (2,), WAV_44K_STEREO),
    Clip("en_b_0002", "en/b/gb_0002.ogg", "en-gb-scotland", 150, 45, (4,), VORBIS_16K),
    Clip("en_b_0003", "en/b/gb_0003.m4a", "en-gb-x-rp", 110, 50, (11,), AAC_44K),
    # Ogg/Vorbis content behind an extension that says nothing: detection must sniff bytes.
    Clip("en_b_0004", "en/b/misc/gb_0004.audio", "en-gb+f2", 155, 50, (5,), VORBIS_16K),
    # Long enough for 30 s windows to leave a tail.
    Clip("en_c_0001", "en/c/long_0001.mp3", "en-029", 160, 50, (0, 3, 6, 7, 9, 1, 5), MP3_48K),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus",
                        help="output folder (default: examples/corpus next to this script)")
    args = parser.parse_args(argv)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        print("error: espeak-ng not found on PATH (Debian/Ubuntu: apt-get install espeak-ng)", file=sys.stderr)
        return 1

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    total_bytes = 0
    for clip in CLIPS:
        speech, rate = synthesize(espeak, clip)
        samples = prepare(speech, rate, clip.encoding)
        data = encode(samples, clip.encoding)
        path = out / clip.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total_bytes += len(data)
        duration = samples.shape[1] / clip.encoding.sample_rate
        print(f"{clip.path:28s} {clip.encoding.name:28s} {duration:6.2f} s {len(data) / 1024:7.1f} KiB")
        manifest.append({"uri": clip.path, "id": clip.id, "text": clip.text, "speaker": clip.voice,
                         "language": LANGUAGE})
    manifest_path = out / "manifest.jsonl"
    manifest_path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in manifest),
                             encoding="utf-8")
    print(f"{len(CLIPS)} clips, {total_bytes / 1024:.1f} KiB of audio; manifest: {manifest_path}")
    return 0


def synthesize(espeak: str, clip: Clip) -> tuple[np.ndarray, int]:
    """Speak the clip's sentences with espeak-ng; returns (float32 mono samples, sample rate)."""
    pieces: list[np.ndarray] = []
    rate = 0
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        for i in clip.sentences:
            subprocess.run(
                [espeak, "-v", clip.voice, "-s", str(clip.speed), "-p", str(clip.pitch), "-w", str(wav),
                 SENTENCES[i]],
                check=True, capture_output=True)
            speech, rate = soundfile.read(wav, dtype="float32", always_2d=True)
            if pieces:
                pieces.append(np.zeros(int(SENTENCE_GAP_S * rate), dtype=np.float32))
            pieces.append(speech[:, 0])
    return np.concatenate(pieces), rate


def prepare(speech: np.ndarray, rate: int, encoding: Encoding) -> np.ndarray:
    """Normalise, resample and lay out channels; returns float32 [channels, samples]."""
    speech = speech * (PEAK / max(float(np.max(np.abs(speech))), 1e-9))
    speech = resample(speech, rate, encoding.sample_rate)[0]
    if encoding.channels == 1:
        return speech[None, :]
    if encoding.channels == 2:
        delay = round(STEREO_DELAY_S * encoding.sample_rate)
        left = np.concatenate([speech, np.zeros(delay, dtype=np.float32)])
        right = STEREO_GAIN * np.concatenate([np.zeros(delay, dtype=np.float32), speech])
        return np.stack([left, right])
    raise ValueError(f"channels must be 1 or 2. Found: {encoding.channels}")


def encode(samples: np.ndarray, encoding: Encoding) -> bytes:
    """Encode float32 [channels, samples] into a complete file, in memory."""
    if encoding.soundfile_format is not None and soundfile.check_format(*encoding.soundfile_format):
        major, subtype = encoding.soundfile_format
        buffer = io.BytesIO()
        soundfile.write(buffer, samples.T, encoding.sample_rate, format=major, subtype=subtype)
        data = buffer.getvalue()
        # libsndfile gives each Ogg stream a random serial number: pin it for reproducible bytes.
        return set_ogg_serial(data, 0) if major == "OGG" else data
    if encoding.pyav_codecs:
        return encode_with_pyav(samples, encoding.sample_rate, encoding.pyav_codecs, encoding.pyav_container,
                                encoding.bit_rate)
    raise RuntimeError(f"this libsndfile cannot write {encoding.name} and no PyAV encoder is configured")


if __name__ == "__main__":
    sys.exit(main())
