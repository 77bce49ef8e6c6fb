"""Synthetic audio for tests: a deterministic speech-like signal and in-memory encoders.

Plain functions, no pytest fixtures, no files unless asked (``write_audio``)::

    samples = synth_speechlike(3.0, 16000, channels=2, seed=1)   # float32 [channels, samples]
    data = encode_audio(samples, 16000, "m4a")                    # encoded file bytes
    decoded, rate = decode_with_pyav(data)                        # float32 [channels, samples]
    clips = speech_clips()                                        # the committed speech fixtures
    audio, truth = speech_with_pauses([(1.0, 3.0), (0.5, 2.0)])  # stretches at known places

Speech: ``tests/data/speech/`` holds five short espeak-ng sentences (WAV, FLAC, MP3, Opus; made
by ``tests/data/make_speech.py``, see ``tests/data/SOURCES.md``), each cut so that speech fills
it from its first sample to its last: laid between silences of known lengths, they give files
whose true speech borders are exact.

Encoders, per ``fmt`` (see ``FORMATS``):

* ``wav`` (PCM16), ``wav-float`` (IEEE float32), ``flac`` (16 bit): libsndfile via soundfile.
* ``ogg``: Ogg/Vorbis via soundfile. PyAV wheels ship no libvorbis, and FFmpeg's native
  ``vorbis`` encoder is experimental and stereo-only, so PyAV is only a fallback (libvorbis).
* ``mp3`` (libmp3lame), ``opus`` (libopus, Ogg container), ``m4a`` (AAC in an MP4/iPod
  container): PyAV (FFmpeg).

Opus is always encoded at 48 kHz: every Opus decoder outputs 48 kHz whatever the input rate
was, so the input is resampled to 48 kHz first (soxr, else torchaudio) and the decoded rate is
``OPUS_SAMPLE_RATE``, not the rate passed in. MP3 and AAC accept only their codecs' standard
rates (ValueError otherwise).

Same input, same bytes: PyAV muxes with ``bitexact`` (no FFmpeg version strings, Ogg serial 0),
libsndfile's random Ogg serial is rewritten to 0 and its float-WAV PEAK timestamp zeroed.

Decoded lengths: WAV, FLAC, MP3 (LAME gapless header), Vorbis and Opus decode to exactly the
input length with FFmpeg and libsndfile. M4A decodes padded to a whole number of AAC frames
(up to 1023 extra samples: 64 ms at 16 kHz, 128 ms at 8 kHz); FFmpeg trims the encoder
priming through the MP4 edit list, decoders that ignore it add 1024 samples at the start.
What decodes from memory: libsndfile (soundfile >= 0.12, libsndfile >= 1.1) reads WAV, FLAC,
Ogg/Vorbis, Ogg/Opus and MP3 from a BytesIO; it cannot read M4A/AAC. PyAV reads them all.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av.codec

FORMATS: tuple[str, ...] = ("wav", "wav-float", "flac", "mp3", "ogg", "opus", "m4a")

OPUS_SAMPLE_RATE = 48000

# File name extension for each format, for write_audio callers that want one.
EXTENSIONS: dict[str, str] = {
    "wav": ".wav",
    "wav-float": ".wav",
    "flac": ".flac",
    "mp3": ".mp3",
    "ogg": ".ogg",
    "opus": ".opus",
    "m4a": ".m4a",
}

# soundfile (format, subtype) for the formats libsndfile writes.
_SOUNDFILE_WRITERS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "wav-float": ("WAV", "FLOAT"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
}

# PyAV: fmt -> (candidate encoder names, container format, bit rate per channel).
_PYAV_WRITERS: dict[str, tuple[tuple[str, ...], str, int]] = {
    "mp3": (("libmp3lame", "mp3"), "mp3", 64_000),
    "opus": (("libopus", "opus"), "ogg", 48_000),
    "m4a": (("aac",), "ipod", 64_000),
    "ogg": (("libvorbis",), "ogg", 64_000),  # fallback only, see module docstring
}

_LAYOUTS = {1: "mono", 2: "stereo"}

SPEECH_DIR = Path(__file__).resolve().parent / "data" / "speech"


@dataclasses.dataclass(frozen=True)
class SpeechClip:
    """One committed speech fixture (``tests/data/speech/clips.json``).

    Attributes:
        path: the file.
        text: what is said.
        voice: the espeak-ng voice.
        format: how it is stored (e.g. ``MP3 22.05 kHz mono``).
        sample_rate: the stored rate, Hz.
        samples: its length at that rate; speech fills it from end to end.
    """

    path: Path
    text: str
    voice: str
    format: str
    sample_rate: int
    samples: int

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate


def speech_clips() -> list[SpeechClip]:
    """The speech fixtures, in the order of ``clips.json``."""
    rows = json.loads((SPEECH_DIR / "clips.json").read_text(encoding="utf-8"))
    return [SpeechClip(path=SPEECH_DIR / row.pop("file"), **row) for row in rows]


def synth_speechlike(duration_s: float, sample_rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like signal: voiced "syllables", noise bursts and pauses.

    Each syllable (80-280 ms) is a harmonic tone whose pitch glides between 90 and 240 Hz,
    shaped by three random formant peaks and a smooth attack/decay; some syllables are
    high-passed noise ("fricatives"), some are silence. A faint noise floor is always present.
    Extra channels are delayed (0.1 ms per channel), attenuated copies of the first plus a bit of
    independent noise, so channels correlate strongly but are not identical.

    Args:
        duration_s: length in seconds (rounded to whole samples).
        sample_rate: samples per second.
        channels: number of channels (>= 1).
        seed: seed of the local ``np.random.default_rng``; same arguments, same output.

    Returns:
        float32 array [channels, round(duration_s * sample_rate)], peak 0.8, within [-0.9, 0.9].
    """
    if duration_s < 0:
        raise ValueError(f"duration_s must be >= 0. Found: {duration_s}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive. Found: {sample_rate}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1. Found: {channels}")
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate)
    if n == 0:
        return np.zeros((channels, 0), dtype=np.float32)

    # Syllable boundaries.
    lengths = []
    total = 0
    while total < n:
        length = max(1, int(rng.uniform(0.08, 0.28) * sample_rate))
        lengths.append(length)
        total += length
    num = len(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    syllable = np.repeat(np.arange(num), lengths)[:n]
    position = (np.arange(n) - starts[syllable]) / np.asarray(lengths, dtype=np.float64)[syllable]

    kind = rng.choice(3, size=num, p=[0.7, 0.15, 0.15])  # 0 voiced, 1 fricative, 2 pause
    gain = rng.uniform(0.4, 1.0, size=num)
    f0_start = rng.uniform(90.0, 240.0, size=num)
    f0_end = f0_start * rng.uniform(0.8, 1.25, size=num)
    formants = np.sort(rng.uniform([250.0, 800.0, 2000.0], [900.0, 2200.0, 3500.0], size=(num, 3)), axis=1)

    # Smooth attack/decay within each syllable (a half sine raised to a soft power).
    envelope = np.sin(np.pi * position) ** 0.6 * gain[syllable]

    f0 = f0_start[syllable] + (f0_end - f0_start)[syllable] * position
    phase = 2.0 * np.pi * np.cumsum(f0) / sample_rate
    nyquist = sample_rate / 2.0
    voiced = np.zeros(n)
    mean_f0 = (f0_start + f0_end) / 2.0
    max_harmonic = int(min(nyquist * 0.95, 5000.0) // 90.0)
    for k in range(1, max_harmonic + 1):
        # Harmonic weight: sum of formant resonances (Lorentzian) at this harmonic's frequency.
        freq = k * mean_f0[:, None]
        weight = (1.0 / (1.0 + ((freq - formants) / 120.0) ** 2)).sum(axis=1) / k**0.5
        below_nyquist = k * f0 < nyquist * 0.95
        voiced += np.where(below_nyquist, weight[syllable] * np.sin(k * phase), 0.0)

    noise = rng.standard_normal(n + 1)
    fricative = np.diff(noise)  # first difference: a crude high-pass

    signal = np.select([kind[syllable] == 0, kind[syllable] == 1], [voiced, 0.3 * fricative], 0.0) * envelope
    peak = float(np.max(np.abs(signal)))
    if peak > 0:
        signal *= 0.78 / peak
    signal += 0.002 * rng.standard_normal(n)

    out = np.empty((channels, n))
    out[0] = signal
    for c in range(1, channels):
        delay = round(0.0001 * c * sample_rate)
        shifted = np.concatenate([np.zeros(delay), signal[: n - delay]]) if delay < n else np.zeros(n)
        out[c] = 0.85 * shifted + 0.002 * rng.standard_normal(n)
    peak = float(np.max(np.abs(out)))
    if peak > 0:
        out *= 0.8 / peak
    return out.astype(np.float32)


def speech_with_pauses(spans: list[tuple[float, float]], tail_s: float = 1.0, rate: int = 16000,
                       noise: float = 0.001, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Synthetic speech-like stretches separated by pauses (a faint noise floor throughout).

    Args:
        spans: (pause before, speech duration) in seconds, in order.

    Returns:
        (float32 [samples], the true (start, end) of each stretch in seconds: its first and
        last sample above -40 dBFS; each stretch has no pause over 0.15 s).
    """
    rng = np.random.default_rng(seed)
    parts, truth, pos = [], [], 0
    for i, (pause_s, speech_s) in enumerate(spans):
        parts.append(np.zeros(int(pause_s * rate), np.float32))
        pos += parts[-1].shape[0]
        x = _without_long_pauses(synth_speechlike(speech_s, rate, seed=seed * 100 + i)[0], rate)
        truth.append((pos / rate, (pos + x.shape[0]) / rate))
        parts.append(x)
        pos += x.shape[0]
    parts.append(np.zeros(int(tail_s * rate), np.float32))
    audio = np.concatenate(parts)
    return (audio + noise * rng.standard_normal(audio.shape[0])).astype(np.float32), truth


def _without_long_pauses(x: np.ndarray, rate: int, longest_s: float = 0.15) -> np.ndarray:
    """``x`` from its first to its last sample above -40 dBFS, its own pauses shortened to
    ``longest_s``: one stretch of speech, whatever the generator drew."""
    loud = np.abs(x) > 0.01
    idx = np.flatnonzero(loud)
    x, loud = x[idx[0]: idx[-1] + 1], loud[idx[0]: idx[-1] + 1]
    edges = np.flatnonzero(np.diff(loud.astype(np.int8)))
    keep = np.ones(x.shape[0], bool)
    for a, b in zip(edges[::2] + 1, edges[1::2] + 1):  # quiet runs [a, b)
        if b - a > longest_s * rate:
            keep[a + int(longest_s * rate / 2): b - int(longest_s * rate / 2)] = False
    return x[keep]


def clips_between_pauses(clips: list[np.ndarray], pauses_s: list[float], noise: float, seed: int,
                         rate: int = 16000) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``clips`` (float32 [samples] at ``rate``, e.g. from ``speech_clips``) laid after pauses of
    ``pauses_s`` (one more pause at the end) over a white noise floor of standard deviation
    ``noise``.

    Returns:
        (float32 [samples], the exact (start, end) of each clip in seconds).
    """
    parts, truth, pos = [], [], 0
    for clip, pause_s in zip(clips, pauses_s):
        gap = np.zeros(round(pause_s * rate), np.float32)
        parts += [gap, clip]
        truth.append(((pos + gap.shape[0]) / rate, (pos + gap.shape[0] + clip.shape[0]) / rate))
        pos += gap.shape[0] + clip.shape[0]
    parts.append(np.zeros(round(pauses_s[len(clips)] * rate), np.float32))
    audio = np.concatenate(parts)
    rng = np.random.default_rng(seed)
    return (audio + noise * rng.standard_normal(audio.shape[0])).astype(np.float32), truth


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float32 [channels, samples] with soxr if importable, else torchaudio."""
    samples = _as_channels_first(samples)
    if from_rate == to_rate:
        return samples
    try:
        import soxr
    except ImportError:
        import torch
        import torchaudio.functional

        return torchaudio.functional.resample(torch.from_numpy(samples), from_rate, to_rate).numpy()
    # soxr works on [samples, channels].
    return np.ascontiguousarray(soxr.resample(samples.T, from_rate, to_rate, quality="HQ").T, dtype=np.float32)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode float audio into the bytes of a complete file of format ``fmt``.

    Args:
        samples: float array [channels, samples] (a 1-D array is taken as mono), values in
            [-1, 1]. Lossy formats take 1 or 2 channels.
        sample_rate: rate of ``samples``, Hz. Opus input is resampled to 48 kHz (see module
            docstring); MP3 and AAC need one of their codecs' standard rates.
        fmt: one of ``FORMATS``.

    Returns:
        The encoded file, e.g. to feed a decoder through ``io.BytesIO``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive. Found: {sample_rate}")
    samples = _as_channels_first(samples)
    if fmt in _SOUNDFILE_WRITERS and _soundfile_can_write(fmt):
        return _encode_soundfile(samples, sample_rate, fmt)
    if fmt == "opus" and sample_rate != OPUS_SAMPLE_RATE:
        samples = resample(samples, sample_rate, OPUS_SAMPLE_RATE)
        sample_rate = OPUS_SAMPLE_RATE
    return _encode_pyav(samples, sample_rate, fmt)


def write_audio(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int, fmt: str) -> Path:
    """Encode like ``encode_audio`` and write the file (creating parent folders); returns the path.

    The extension of ``path`` is not checked against ``fmt``: tests may want misleading names.
    """
    path = Path(path)
    data = encode_audio(samples, sample_rate, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def decode_with_pyav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of an encoded file with PyAV (FFmpeg), any format.

    Returns:
        (float32 array [channels, samples], sample rate).
    """
    import av

    chunks: list[np.ndarray] = []
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler: av.AudioResampler | None = None
        for frame in container.decode(stream):
            if resampler is None:
                resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=frame.sample_rate)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        if resampler is not None:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        channels = stream.codec_context.channels
    if not chunks:
        return np.zeros((channels, 0), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def _as_channels_first(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[None, :]
    if samples.ndim != 2 or samples.shape[0] < 1:
        raise ValueError(f"samples must be [channels, samples] (or 1-D mono). Found shape: {samples.shape}")
    return samples


def _soundfile_can_write(fmt: str) -> bool:
    import soundfile

    major, subtype = _SOUNDFILE_WRITERS[fmt]
    return bool(soundfile.check_format(major, subtype))


def _encode_soundfile(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    import soundfile

    major, subtype = _SOUNDFILE_WRITERS[fmt]
    buffer = io.BytesIO()
    soundfile.write(buffer, samples.T, sample_rate, format=major, subtype=subtype)
    data = buffer.getvalue()
    # libsndfile stamps float WAVs (PEAK chunk) with the time and Ogg streams with a random
    # serial number; pin both so that equal inputs give equal bytes.
    if major == "OGG":
        return set_ogg_serial(data, serial=0)
    if subtype == "FLOAT":
        return _zero_wav_peak_timestamp(data)
    return data


def _ogg_crc(data: bytes | bytearray) -> int:
    """CRC-32 as Ogg computes it: polynomial 0x04C11DB7, MSB first, no reflection, init 0."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _make_ogg_crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if r & 0x80000000 else (r << 1) & 0xFFFFFFFF
        table.append(r)
    return tuple(table)


_OGG_CRC_TABLE = _make_ogg_crc_table()


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """Rewrite the stream serial number of every page of a single-stream Ogg file (and its CRC):
    libsndfile draws a random one, so without this equal inputs give different bytes."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        num_segments = out[pos + 26]
        body = sum(out[pos + 27 : pos + 27 + num_segments])
        end = pos + 27 + num_segments + body
        out[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        out[pos + 22 : pos + 26] = bytes(4)
        out[pos + 22 : pos + 26] = _ogg_crc(out[pos:end]).to_bytes(4, "little")
        pos = end
    return bytes(out)


def _zero_wav_peak_timestamp(data: bytes) -> bytes:
    """Zero the timestamp of a WAV PEAK chunk (id, size, version, timestamp, peaks...)."""
    pos = data.find(b"PEAK", 12, 200)
    if pos < 0:
        return data
    return data[: pos + 12] + bytes(4) + data[pos + 16 :]


def _encode_pyav(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    codec_names, container_format, bit_rate_per_channel = _PYAV_WRITERS[fmt]
    channels = samples.shape[0]
    if channels not in _LAYOUTS:
        raise ValueError(f"{fmt} encoding supports 1 or 2 channels. Found: {channels}")
    return encode_with_pyav(np.clip(samples, -1.0, 1.0), sample_rate, codec_names, container_format,
                            bit_rate_per_channel * channels)


def encode_with_pyav(samples: np.ndarray, sample_rate: int, codec_names: tuple[str, ...], container_format: str,
                     bit_rate: int) -> bytes:
    """Encode float32 [channels (1 or 2), samples] in [-1, 1] with PyAV (FFmpeg), bit-exact.

    Args:
        samples: the audio.
        sample_rate: its rate; the codec must support it.
        codec_names: encoders to try, in order (the first this FFmpeg build has is used).
        container_format: FFmpeg muxer name (``mp3``, ``ogg``, ``ipod``, ...).
        bit_rate: target bit rate of the stream, bits/s.

    Returns:
        The encoded file.
    """
    import av

    samples = _as_channels_first(samples)
    channels = samples.shape[0]
    codec = _find_encoder(codec_names, container_format)
    supported_rates = codec.audio_rates
    if supported_rates and sample_rate not in supported_rates:
        raise ValueError(
            f"{codec.name} cannot encode at {sample_rate} Hz; supported rates: {sorted(supported_rates)}")

    buffer = io.BytesIO()
    # bitexact: no random Ogg serial number, no FFmpeg version strings in the headers.
    with av.open(buffer, mode="w", format=container_format, container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec.name, rate=sample_rate, options={"flags": "+bitexact"})
        stream.codec_context.layout = _LAYOUTS[channels]
        stream.codec_context.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=_LAYOUTS[channels])
        frame.sample_rate = sample_rate
        frame.pts = 0
        # PyAV converts to the encoder's sample format and re-chunks to its frame size.
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _find_encoder(names: tuple[str, ...], fmt: str) -> av.codec.Codec:
    import av.codec

    for name in names:
        try:
            return av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001, S112 - PyAV raises different errors across versions
            continue
    raise RuntimeError(f"no {fmt} encoder in this PyAV/FFmpeg build; tried {list(names)}")
