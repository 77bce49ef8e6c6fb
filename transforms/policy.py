"""The input policy: limits, and what is refused or repaired in the samples.

One policy for every input, whether it is decoded whole or streamed in stretches:

* **Limits** (:func:`check_format`, :func:`check_length`) are judged from a header before
  anything is decoded, where the header allows it, and again on what decoding produced.
* **Sample values** are judged on whole-file statistics (:class:`SampleStats`, gathered block
  by block, so the figures are the same however the samples arrive): NaN/Inf, samples beyond
  [-1, 1], silence, clipping. :func:`decide_repair` turns the statistics into a
  :class:`Repair` (or a rejection), a per-sample operation applied block by block
  (:meth:`Repair.apply`); :func:`judge` then rules on silence and clipping from the statistics
  of the repaired samples. A file decoded whole and the same file streamed get the same
  repair, the same verdict and the same samples.

Every refusal is an :class:`AudiotokError` with a reason code (README.md, "Bad input").
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable

import numpy as np

from audiotok.transforms import failures
from audiotok.transforms.failures import AudiotokError

# A sample at or beyond this magnitude counts as clipped.
CLIP_LEVEL = 0.99
# Declared and decoded lengths may differ by codec padding: this many frames, or 0.5 %.
LENGTH_SLACK_FRAMES = 2304
# Statistics are gathered over blocks of this many frames (no full-size temporaries).
SCAN_FRAMES = 1 << 18

# The allowed values of DecodeConfig's policy fields (the CLI offers the same).
CHOICES = {
    "truncated": ("reject", "keep"),
    "non_finite": ("reject", "zero"),
    "out_of_range": ("scale", "clip", "reject"),
    "silence": ("keep", "reject"),
    "clipping": ("keep", "reject"),
    "isolation": ("process", "none"),
}
# Fields that change how decoding runs, not what it produces.
_EXECUTION_FIELDS = ("isolation", "timeout_s", "decoder_processes")
DEFAULT_DECODER = "audiotok.transforms.decode:FileDecoder"
_DECODER_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How inputs become waveforms, and what is refused or repaired on the way.

    Attributes:
        max_duration_s: longer inputs are rejected as ``too_long`` (None: no limit).
        min_sample_rate, max_sample_rate: accepted source rates, Hz (``bad_sample_rate``).
        max_channels: inputs with more channels are rejected (``too_many_channels``).
        max_decoded_bytes: memory guard: a whole-file decode needing more float32 bytes than
            this is stopped and rejected as ``too_long``.
        truncated: ``reject`` (``truncated``) or ``keep`` what decodes of a cut file.
        non_finite: ``reject`` (``non_finite``) or ``zero`` NaN/Inf samples.
        out_of_range: finite samples beyond [-1, 1] (float formats): ``scale`` the file down to
            a peak of 1, ``clip`` them, or ``reject`` (``out_of_range``).
        silence: ``keep`` or ``reject`` (``silent``) a file whose peak is at or below
            ``silence_threshold_dbfs``.
        silence_threshold_dbfs: the peak level, dBFS, at or below which a file is silent.
        clipping: ``keep`` or ``reject`` (``clipped``) a file with more than
            ``clipping_fraction`` of its samples at full scale (|x| >= 0.99).
        clipping_fraction: the fraction of samples at full scale above which a file is clipped.
        isolation: ``process``: decode in child processes (a crash or hang becomes a
            ``decoder_crash``/``timeout`` record); ``none``: in the worker itself.
        timeout_s: time limit of one decoder request (a whole file, a long file's plan, or a
            stretch's decoding time); None: none. In-process it is checked between chunks;
            with process isolation a hung decoder is killed.
        decoder_processes: with process isolation, decoder processes per decoding thread: as many
            inputs are decoded at a time, alongside the thread's own work on those already decoded.
        decoder: ``module:Class`` of the decoder, a :class:`audiotok.transforms.decode.FileDecoder`
            (or a subclass: custom decoders, fault injection in tests).
    """

    max_duration_s: float | None = 4 * 3600.0
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000
    max_channels: int = 64
    max_decoded_bytes: int = 2 << 30
    truncated: str = "reject"
    non_finite: str = "reject"
    out_of_range: str = "scale"
    silence: str = "keep"
    silence_threshold_dbfs: float = -60.0
    clipping: str = "keep"
    clipping_fraction: float = 0.01
    isolation: str = "process"
    timeout_s: float | None = 300.0
    decoder_processes: int = 1
    decoder: str = DEFAULT_DECODER

    def __post_init__(self) -> None:
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be positive. Found: {self.max_duration_s}")
        if not 0 < self.min_sample_rate <= self.max_sample_rate:
            raise ValueError(
                f"need 0 < min_sample_rate <= max_sample_rate. Found: {self.min_sample_rate}, {self.max_sample_rate}")
        if self.max_channels < 1:
            raise ValueError(f"max_channels must be >= 1. Found: {self.max_channels}")
        if self.max_decoded_bytes < 1 << 20:
            raise ValueError(f"max_decoded_bytes must be >= 1 MiB. Found: {self.max_decoded_bytes}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}. Found: {getattr(self, name)!r}")
        if not self.silence_threshold_dbfs <= 0:
            raise ValueError(f"silence_threshold_dbfs must be <= 0. Found: {self.silence_threshold_dbfs}")
        if not 0 < self.clipping_fraction <= 1:
            raise ValueError(f"clipping_fraction must be in (0, 1]. Found: {self.clipping_fraction}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive. Found: {self.timeout_s}")
        if not 1 <= self.decoder_processes <= 64:
            raise ValueError(f"decoder_processes must be in [1, 64]. Found: {self.decoder_processes}")
        if not _DECODER_PATH.match(self.decoder):
            raise ValueError(f"decoder must be 'module:Class'. Found: {self.decoder!r}")

    def content_settings(self) -> dict:
        """The fields that decide what decoding produces (not how it runs): for fingerprints."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in _EXECUTION_FIELDS}
        if self.decoder == DEFAULT_DECODER:
            del settings["decoder"]  # the built-in decoder: named by what it does, not by its module path
        return settings

    def max_frames(self, rate: int, channels: int) -> int:
        """Frames that may be decoded whole at ``rate`` with ``channels`` (the tighter of both limits)."""
        by_bytes = self.max_decoded_bytes // (4 * max(1, channels))
        if self.max_duration_s is None:
            return by_bytes
        return min(by_bytes, self.max_duration_frames(rate))

    def max_duration_frames(self, rate: int) -> int:
        """Frames at ``rate`` that ``max_duration_s`` allows (no limit: a very large number)."""
        return (1 << 62) if self.max_duration_s is None else int(self.max_duration_s * rate) + 1


# ------------------------------------------------------------------ limits


def check_format(rate: int, channels: int, config: DecodeConfig) -> None:
    """Rate and channel limits (before anything is decoded, where a header tells them)."""
    if rate <= 0 or channels <= 0:
        raise AudiotokError(failures.HEADER_MISMATCH, f"the stream declares {channels} channel(s) at {rate} Hz")
    if not config.min_sample_rate <= rate <= config.max_sample_rate:
        raise AudiotokError(failures.BAD_SAMPLE_RATE,
                            f"sample rate {rate} Hz is outside [{config.min_sample_rate}, {config.max_sample_rate}]")
    if channels > config.max_channels:
        raise AudiotokError(failures.TOO_MANY_CHANNELS, f"{channels} channels > {config.max_channels}")


def check_duration(frames: int, rate: int, config: DecodeConfig, what: str) -> None:
    """The duration limit alone (streamed files: no memory guard); raises ``too_long``."""
    if config.max_duration_s is not None and frames / rate > config.max_duration_s:
        raise AudiotokError(failures.TOO_LONG, f"{what} {frames / rate:.1f} s > {config.max_duration_s} s")


def check_length(frames: int, rate: int, channels: int, config: DecodeConfig, what: str) -> None:
    """Duration limit and memory guard for ``frames`` frames decoded whole; raises ``too_long``."""
    check_duration(frames, rate, config, what)
    if frames * channels * 4 > config.max_decoded_bytes:
        raise AudiotokError(failures.TOO_LONG, f"{what} {frames / rate:.1f} s of {channels} channel(s): "
                            f"{frames * channels * 4 / 2**20:.0f} MiB decoded > max_decoded_bytes "
                            f"({config.max_decoded_bytes / 2**20:.0f} MiB)")


def judge_shortfall(declared: int, got: int, rate: int, config: DecodeConfig, what: str) -> tuple[str, ...]:
    """A stream shorter than its header promised: truncated (kept or not), or a header that lies.

    Returns:
        ``("truncated",)`` when kept, ``()`` when the difference is codec padding.
    """
    if declared - got <= max(LENGTH_SLACK_FRAMES, declared // 200):
        return ()
    if config.max_duration_s is not None and declared / rate > config.max_duration_s:
        raise AudiotokError(failures.HEADER_MISMATCH,
                            f"{what}: {declared / rate:.0f} s declared is over the limit and not in the file")
    if config.truncated == "reject":
        raise AudiotokError(failures.TRUNCATED, f"{what} ({got / rate:.2f} of {declared / rate:.2f} s)")
    return ("truncated",)


# ------------------------------------------------------------------ sample values


@dataclasses.dataclass(frozen=True)
class SampleStats:
    """What the policy needs to know of a file's samples.

    Attributes:
        finite: no NaN or Inf.
        peak: the largest finite magnitude.
        clipped: finite samples with magnitude >= CLIP_LEVEL.
        total: samples (all channels).
    """

    finite: bool = True
    peak: float = 0.0
    clipped: int = 0
    total: int = 0

    def __add__(self, other: "SampleStats") -> "SampleStats":
        return SampleStats(self.finite and other.finite, max(self.peak, other.peak), self.clipped + other.clipped,
                           self.total + other.total)


def block_stats(block: np.ndarray) -> SampleStats:
    """Statistics of one float32 [channels, n] block (at most ``SCAN_FRAMES`` frames at a time).

    Usually two passes: the maximum and the minimum (NaN and Inf show in them); the finite mask
    and the clipped count are computed only when those say they are needed.
    """
    stats = SampleStats()
    for start in range(0, block.shape[-1], SCAN_FRAMES):
        part = block[..., start: start + SCAN_FRAMES]
        if not part.size:
            continue
        high, low = float(part.max()), float(part.min())
        finite = math.isfinite(high) and math.isfinite(low)
        if not finite:
            ok = np.isfinite(part)
            part = np.where(ok, part, np.float32(0))
            high, low = float(part.max()), float(part.min())
        peak = max(high, -low)
        clipped = 0
        if peak >= CLIP_LEVEL:
            clipped = int(np.count_nonzero(part >= CLIP_LEVEL)) + int(np.count_nonzero(part <= -CLIP_LEVEL))
        stats = stats + SampleStats(finite, peak, clipped, int(part.size))
    return stats


def sample_stats(blocks: np.ndarray | Iterable[np.ndarray]) -> SampleStats:
    """Statistics of float32 [channels, samples], or of the blocks of a stream: the same figures
    however the samples are cut into blocks."""
    if isinstance(blocks, np.ndarray):
        return block_stats(blocks)
    stats = SampleStats()
    for block in blocks:
        stats = stats + block_stats(block)
    return stats


@dataclasses.dataclass(frozen=True)
class Repair:
    """What is done to every sample of a file, decided from its statistics.

    Attributes:
        zero_non_finite: NaN and Inf become 0.
        scale: multiply by this (float32) factor, then clip to [-1, 1] (None: no scaling).
        clip: clip to [-1, 1].
        notes: what was repaired (``non_finite_zeroed``, ``out_of_range_scaled``, ``out_of_range_clipped``).
    """

    zero_non_finite: bool = False
    scale: float | None = None
    clip: bool = False
    notes: tuple[str, ...] = ()

    @property
    def identity(self) -> bool:
        return not (self.zero_non_finite or self.scale is not None or self.clip)

    def apply(self, block: np.ndarray) -> np.ndarray:
        """Repairs float32 [channels, n] in place (when writable) and returns it."""
        if self.identity:
            return block
        if not block.flags.writeable:
            block = np.array(block, dtype=np.float32)
        if self.zero_non_finite:
            np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if self.scale is not None:
            block *= np.float32(self.scale)
        if self.scale is not None or self.clip:
            np.clip(block, -1.0, 1.0, out=block)  # after scaling: rounding can leave 1 + eps
        return block

    def to_json(self) -> dict:
        return {"zero_non_finite": self.zero_non_finite, "scale": self.scale, "clip": self.clip,
                "notes": list(self.notes)}

    @classmethod
    def from_json(cls, value: dict) -> "Repair":
        """From :meth:`to_json` (an answer of a decoder process: checked, not trusted).

        Raises:
            ValueError: when ``value`` is not what :meth:`to_json` writes.
        """
        if not isinstance(value, dict) or set(value) != {"zero_non_finite", "scale", "clip", "notes"}:
            raise ValueError("a malformed repair")
        scale, notes = value["scale"], value["notes"]
        if type(value["zero_non_finite"]) is not bool or type(value["clip"]) is not bool:
            raise ValueError("a malformed repair")
        if scale is not None and not (type(scale) is float and 0 < scale <= 1):
            raise ValueError("a malformed repair scale")
        if not isinstance(notes, list) or not all(isinstance(n, str) and n.isidentifier() for n in notes):
            raise ValueError("malformed repair notes")
        return cls(value["zero_non_finite"], scale, value["clip"], tuple(notes))


def decide_repair(stats: SampleStats, config: DecodeConfig) -> Repair:
    """The repair of a file with statistics ``stats`` (of its raw samples).

    Raises:
        AudiotokError: ``non_finite`` or ``out_of_range`` when the policy rejects them.
    """
    zero, notes = False, []
    if not stats.finite:
        if config.non_finite == "reject":
            raise AudiotokError(failures.NON_FINITE, "the audio has NaN or Inf samples")
        zero = True
        notes.append("non_finite_zeroed")
    scale, clip = None, False
    if stats.peak > 1.0:
        if config.out_of_range == "reject":
            raise AudiotokError(failures.OUT_OF_RANGE, f"samples reach {stats.peak:.4g}, beyond [-1, 1]")
        if config.out_of_range == "scale":
            scale = float(np.float32(1.0 / stats.peak))
            notes.append("out_of_range_scaled")
        else:
            clip = True
            notes.append("out_of_range_clipped")
    return Repair(zero, scale, clip, tuple(notes))


def repaired_stats(stats: SampleStats, repair: Repair) -> SampleStats | None:
    """The statistics after ``repair`` when they follow from ``stats`` alone; None when the
    repaired samples must be scanned again (scaling moves samples across ``CLIP_LEVEL``).

    Zeroing leaves the finite samples' figures as they are; clipping to [-1, 1] keeps every
    sample at or beyond ``CLIP_LEVEL`` there.
    """
    if repair.scale is not None:
        return None
    peak = min(stats.peak, 1.0) if repair.clip else stats.peak
    return SampleStats(True, peak, stats.clipped, stats.total)


def judge(stats: SampleStats, config: DecodeConfig) -> tuple[str, ...]:
    """Silence and clipping, from the statistics of the repaired samples.

    Returns:
        The notes of what was kept (``silent``, ``clipped``).

    Raises:
        AudiotokError: ``silent`` or ``clipped`` when the policy rejects them.
    """
    notes = []
    threshold = 10 ** (config.silence_threshold_dbfs / 20)
    if stats.peak <= threshold:
        if config.silence == "reject":
            raise AudiotokError(failures.SILENT, f"the peak is {_dbfs(stats.peak)} <= "
                                f"{config.silence_threshold_dbfs} dBFS")
        notes.append("silent")
    clipped = stats.clipped / max(1, stats.total)
    if clipped > config.clipping_fraction:
        if config.clipping == "reject":
            raise AudiotokError(failures.CLIPPED, f"{clipped:.1%} of the samples are at full scale "
                                f"(> {config.clipping_fraction:.1%})")
        notes.append("clipped")
    return tuple(notes)


def needs_statistics(config: DecodeConfig, bounded: bool) -> bool:
    """Whether a streamed file's samples or fate can depend on whole-file statistics, so that a
    statistics pass must run before its stretches are decoded.

    Args:
        bounded: the format's samples are integers scaled into [-1, 1) (PCM, FLAC): finite and
            never beyond full scale.
    """
    if config.silence == "reject" or config.clipping == "reject":
        return True
    return not bounded and (config.non_finite == "reject" or config.out_of_range in ("scale", "reject"))


def _dbfs(peak: float) -> str:
    return "-inf dBFS" if peak <= 0 else f"{20 * np.log10(peak):.1f} dBFS"


def apply_policy(samples: np.ndarray, rate: int, config: DecodeConfig) -> tuple[np.ndarray, tuple[str, ...]]:
    """Limits, then the sample-value policy, on a whole file's float32 [channels, samples].

    Repairs work in place on ``samples``.

    Returns:
        (the repaired samples, notes: the repairs and what was kept).

    Raises:
        AudiotokError: ``empty``, ``bad_sample_rate``, ``too_many_channels``, ``too_long``,
            ``non_finite``, ``out_of_range``, ``silent`` or ``clipped``.
    """
    channels, n = samples.shape
    if n == 0:
        raise AudiotokError(failures.EMPTY, "the audio stream has no samples")
    check_format(rate, channels, config)
    check_length(n, rate, channels, config, "the audio lasts")
    stats = sample_stats(samples)
    repair = decide_repair(stats, config)
    samples = repair.apply(samples)
    after = repaired_stats(stats, repair)
    if after is None:
        after = sample_stats(samples)
    return samples, repair.notes + judge(after, config)
