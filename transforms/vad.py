"""Speech detection for segmentation: pure functions on 16 kHz float32 audio.

Two detectors give a score per frame, both on audio at ``VAD_RATE`` (16 kHz):

* ``energy``: frame energy in dB, 10 ms frames, against a noise floor and a loud level
  estimated from the recording itself (no model).
* ``silero``: Silero VAD's speech probability, 32 ms frames (512 samples). The recording is
  cut into *lanes* of ``LANE_FRAMES`` frames, each started from a fresh model state after a
  short warm-up on the audio before it, and the lanes are run as one batch. A lane depends only
  on its own stretch of audio, so the scores are the same however the audio arrives (whole,
  or in chunks of any size: bit for bit) and however many lanes share a batch (to float
  rounding of the batched kernels: 1e-4 in probability at most, measured).

The scores then go through one post-processing path (:func:`plan_segments`):
hysteresis (Silero's stretches trimmed to the frames that pass the energy threshold) ->
silences shorter than ``min_silence_s`` closed -> speech shorter than
``min_speech_s`` dropped -> ``pad_s`` added around speech (at most half the gap to the next
stretch) -> stretches longer than the maximum split at their quietest point -> neighbours
closer than ``merge_gap_s`` merged while the result stays within the maximum -> segments
shorter than the minimum dropped.

Intervals are ``(start, end)`` sample indices at 16 kHz, end exclusive, relative to the start
of the audio that was scored.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

VAD_RATE = 16000
DETECTORS: tuple[str, ...] = ("energy", "silero")

ENERGY_HOP = 160  # 10 ms at 16 kHz
SILERO_HOP = 512  # the model's window at 16 kHz (32 ms)
SILERO_CONTEXT = 64  # samples of the previous window the model sees
LANE_FRAMES = 512  # 16.384 s per lane
WARMUP_FRAMES = 16  # 0.512 s of the preceding audio run before each lane (discarded)

SILENCE_DB = -100.0  # the energy of digital silence, clamped
ENERGY_FLOOR_DB = -60.0  # frames quieter than this never start speech
ENERGY_RANGE_DB = 30.0  # nor frames this far below the loud level around them
ENERGY_HYSTERESIS_DB = 3.0  # speech ends this far below the level at which it starts
ENERGY_ONSET_FRAMES = 3  # speech starts only where 30 ms in a row pass the threshold (not on clicks)
SILERO_HYSTERESIS = 0.15  # likewise for Silero's probability (Silero's own default)
LEVEL_BLOCK_S = 30.0  # noise floor and loud level are measured over a block and its two neighbours
NOISE_PERCENTILE = 10.0
LOUD_PERCENTILE = 95.0
QUIET_SMOOTH_S = 0.05  # energy is averaged over this much before looking for the quietest point


@dataclasses.dataclass(frozen=True)
class VadConfig:
    """Speech detection and interval post-processing for the ``vad`` and ``energy`` segmenters.

    The minimum and maximum segment lengths are ``SegmentConfig.min_segment_s`` and
    ``SegmentConfig.segment_s``.

    Attributes:
        threshold: Silero speech probability at which speech starts (ends 0.15 lower).
        energy_margin_db: energy detector: dB above the noise floor at which speech starts
            (ends 3 dB lower).
        min_speech_s: shorter bursts of speech are dropped (clicks, coughs).
        min_silence_s: a pause must last this long to end a stretch of speech.
        pad_s: seconds of context kept on each side of speech (at most half the gap to the
            neighbouring stretch, and never past the ends of the audio).
        merge_gap_s: neighbouring stretches separated by at most this much are merged into
            one segment while the merged segment stays within the maximum length.
        batch_lanes: Silero lanes (16.4 s each) run together as one batch.
    """

    threshold: float = 0.5
    energy_margin_db: float = 12.0
    min_speech_s: float = 0.25
    min_silence_s: float = 0.3
    pad_s: float = 0.1
    merge_gap_s: float = 1.0
    batch_lanes: int = 32

    def __post_init__(self) -> None:
        if not 0.15 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0.15, 1). Found: {self.threshold}")
        if not self.energy_margin_db > 0:
            raise ValueError(f"energy_margin_db must be > 0. Found: {self.energy_margin_db}")
        for name in ("min_speech_s", "min_silence_s", "pad_s", "merge_gap_s"):
            value = getattr(self, name)
            if not 0 <= value <= 3600:
                raise ValueError(f"{name} must be in [0, 3600] seconds. Found: {value}")
        if self.batch_lanes < 1:
            raise ValueError(f"batch_lanes must be >= 1. Found: {self.batch_lanes}")


@dataclasses.dataclass(frozen=True, eq=False)
class FrameScores:
    """Per-frame scores of one stretch of 16 kHz audio.

    Attributes:
        detector: ``energy`` (scores are dB) or ``silero`` (scores are probabilities).
        hop: samples per frame at 16 kHz; frame ``i`` covers ``[i * hop, (i + 1) * hop)``.
        n_samples: length of the scored audio (the last frame may be partial).
        scores: float32 [frames].
        energy_db: float32 [frames], frame energy (the quietest-point search uses it).
    """

    detector: str
    hop: int
    n_samples: int
    scores: np.ndarray
    energy_db: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.scores.shape[0])


# ---------------------------------------------------------------------------- framing


def reblock(chunks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-cuts a stream of float32 [n] chunks into blocks of exactly ``size`` samples
    (the last one shorter), whatever the sizes of the chunks."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32)
        while chunk.shape[0]:
            if not held and chunk.shape[0] >= size:
                yield chunk[:size]
                chunk = chunk[size:]
                continue
            take = min(size - held, chunk.shape[0])
            pending.append(chunk[:take])
            held += take
            chunk = chunk[take:]
            if held == size:
                yield np.concatenate(pending)
                pending, held = [], 0
    if held:
        yield np.concatenate(pending)


def frame_energy_db(block: np.ndarray, hop: int) -> np.ndarray:
    """float32 [n] -> float32 [ceil(n / hop)]: mean-square energy of each frame in dB
    (a partial last frame is measured over the samples it has)."""
    n = block.shape[0]
    full = n // hop
    power = np.empty(full + (1 if n % hop else 0), np.float64)
    if full:
        frames = block[: full * hop].astype(np.float64).reshape(full, hop)
        power[:full] = np.einsum("ij,ij->i", frames, frames) / hop
    if n % hop:
        tail = block[full * hop:].astype(np.float64)
        power[full] = float(tail @ tail) / tail.shape[0]
    return np.maximum(10.0 * np.log10(power + 1e-12), SILENCE_DB).astype(np.float32)


def energy_scores(chunks: Iterable[np.ndarray]) -> FrameScores:
    """The energy detector's scores (dB per 10 ms frame) of 16 kHz audio given in chunks."""
    parts, n = [], 0
    for block in reblock(chunks, ENERGY_HOP * 1000):
        parts.append(frame_energy_db(block, ENERGY_HOP))
        n += block.shape[0]
    db = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return FrameScores("energy", ENERGY_HOP, n, db, db)


# ---------------------------------------------------------------------------- silero

_LOCK = threading.Lock()
_MODEL = None


def loaded_silero():
    """Silero VAD's 16 kHz network, loaded once per process (its weights ship with the package).

    The returned TorchScript module is stateless (state goes in and out of each call), so the
    threads of a worker share it.
    """
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            try:
                import torch
            except ImportError as e:
                raise ImportError("the vad segmenter needs torch: pip install torch silero-vad") from e
            threads = torch.get_num_threads()
            try:
                from silero_vad import load_silero_vad
            except ImportError as e:
                raise ImportError("the vad segmenter needs Silero VAD: pip install silero-vad") from e
            finally:
                # silero_vad sets torch to one thread when imported; the tokenizers want theirs back.
                torch.set_num_threads(threads)
            _MODEL = load_silero_vad(onnx=False)._model
            _MODEL.eval()
            logger.info("loaded Silero VAD")
        return _MODEL


def _lanes(chunks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, int]]:
    """(lane, valid samples) for 16 kHz audio in chunks: each lane is float32
    [(WARMUP_FRAMES + LANE_FRAMES) * 512], the warm-up taken from the audio before it (zeros
    before the start), zero-padded at the end."""
    lane = LANE_FRAMES * SILERO_HOP
    warm = WARMUP_FRAMES * SILERO_HOP
    before = np.zeros(warm, np.float32)
    for block in reblock(chunks, lane):
        n = block.shape[0]
        padded = block if n == lane else np.concatenate([block, np.zeros(lane - n, np.float32)])
        yield np.concatenate([before, padded]), n
        before = padded[lane - warm:]


def silero_probabilities(model, lanes: Sequence[np.ndarray]) -> np.ndarray:
    """Runs lanes of equal length as one batch from a fresh state: float32 [B, samples] ->
    float32 [B, samples // 512] speech probabilities."""
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(np.stack(lanes)))
    b, n = batch.shape
    context = torch.zeros(b, SILERO_CONTEXT)
    state = torch.zeros(2, b, 128)
    out = torch.empty(b, n // SILERO_HOP)
    # The network is tiny and runs step by step: intra-op threads only add synchronisation
    # (measured: 1 thread 25x real time, 2 threads 1x on a busy 2-core machine). The setting
    # holds for this thread only once its thread pool exists; it is restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i in range(n // SILERO_HOP):
                x = torch.cat([context, batch[:, i * SILERO_HOP: (i + 1) * SILERO_HOP]], dim=1)
                prob, state = model(x, state)
                out[:, i] = prob[:, 0]
                context = x[:, -SILERO_CONTEXT:]
    finally:
        torch.set_num_threads(threads)
    return out.numpy().astype(np.float32, copy=False)


def silero_scores_many(model, streams: Sequence[Iterable[np.ndarray]], batch_lanes: int) -> list[FrameScores]:
    """Silero scores of several recordings (each 16 kHz audio in chunks), their lanes batched
    together ``batch_lanes`` at a time. The result of each recording does not depend on the
    others (each lane starts from a fresh state)."""
    return list(_silero_scores_iter(model, streams, batch_lanes))


def silero_scores(model, chunks: Iterable[np.ndarray], batch_lanes: int) -> FrameScores:
    """Silero scores of one recording given as 16 kHz audio in chunks; memory holds one batch
    of lanes, not the recording."""
    return next(_silero_scores_iter(model, [chunks], batch_lanes))


def _silero_scores_iter(model, streams: Sequence[Iterable[np.ndarray]], batch_lanes: int) -> Iterator[FrameScores]:
    probs: list[list[np.ndarray]] = [[] for _ in streams]
    energy: list[list[np.ndarray]] = [[] for _ in streams]
    lengths = [0] * len(streams)
    pending: list[tuple[int, np.ndarray]] = []

    def run() -> None:
        if not pending:
            return
        out = silero_probabilities(model, [lane for _, lane in pending])
        for (owner, _), row in zip(pending, out):
            probs[owner].append(row[WARMUP_FRAMES:])
        pending.clear()

    done = 0
    for owner, chunks in enumerate(streams):
        for lane, valid in _lanes(chunks):
            frames = -(-valid // SILERO_HOP)
            energy[owner].append(frame_energy_db(lane[WARMUP_FRAMES * SILERO_HOP:][:valid], SILERO_HOP)[:frames])
            lengths[owner] += valid
            pending.append((owner, lane))
            if len(pending) >= batch_lanes:
                run()
                while done < owner:  # earlier recordings are complete once their lanes ran
                    yield _silero_result(probs[done], energy[done], lengths[done])
                    probs[done], energy[done] = [], []
                    done += 1
    run()
    while done < len(streams):
        yield _silero_result(probs[done], energy[done], lengths[done])
        done += 1


def _silero_result(probs: list[np.ndarray], energy: list[np.ndarray], n_samples: int) -> FrameScores:
    frames = -(-n_samples // SILERO_HOP)
    scores = np.concatenate(probs)[:frames] if probs else np.zeros(0, np.float32)
    db = np.concatenate(energy)[:frames] if energy else np.zeros(0, np.float32)
    return FrameScores("silero", SILERO_HOP, n_samples, scores.astype(np.float32), db.astype(np.float32))


# ---------------------------------------------------------------------------- decisions


def local_percentile(energy_db: np.ndarray, block: int, q: float) -> np.ndarray:
    """float32 [frames] -> float32 [frames]: the ``q``-th percentile of the energy over each
    block of ``block`` frames and its two neighbours (local, and the same however the audio
    was chunked)."""
    n = energy_db.shape[0]
    if n == 0:
        return energy_db
    n_blocks = -(-n // block)
    per_block = np.empty(n_blocks, np.float32)
    for b in range(n_blocks):
        lo, hi = max(0, (b - 1) * block), min(n, (b + 2) * block)
        per_block[b] = np.percentile(energy_db[lo:hi], q)
    return np.repeat(per_block, block)[:n]


def energy_threshold(energy_db: np.ndarray, hop: int, margin_db: float) -> np.ndarray:
    """float32 [frames]: the energy at which speech starts, per frame: ``margin_db`` above the
    local noise floor, but at least ``ENERGY_FLOOR_DB`` and no more than ``ENERGY_RANGE_DB``
    below the local loud level (so faint background voices and hum stay out)."""
    block = max(1, int(round(LEVEL_BLOCK_S * VAD_RATE / hop)))
    noise = local_percentile(energy_db, block, NOISE_PERCENTILE)
    loud = local_percentile(energy_db, block, LOUD_PERCENTILE)
    return np.maximum(np.maximum(noise + margin_db, loud - ENERGY_RANGE_DB), ENERGY_FLOOR_DB).astype(np.float32)


def hysteresis(scores: np.ndarray, on: np.ndarray | float, off: np.ndarray | float,
               onset_frames: int = 1) -> np.ndarray:
    """bool [frames]: speech starts where ``scores >= on`` for ``onset_frames`` frames in a row
    and lasts while ``scores >= off``."""
    above_on = scores >= on
    if onset_frames > 1 and above_on.size:
        # above_on[i] stays True only when frames i .. i + onset_frames - 1 all pass.
        counts = np.convolve(above_on.astype(np.int32), np.ones(onset_frames, np.int32))[onset_frames - 1:]
        above_on = counts[: above_on.size] >= onset_frames
    above_off = scores >= off
    flags = np.zeros(scores.shape[0], bool)
    # Runs of above_off that hold at least one above_on frame, from that frame on.
    idx = np.flatnonzero(np.diff(np.concatenate([[False], above_off, [False]]).astype(np.int8)))
    for start, end in zip(idx[::2], idx[1::2]):
        first = np.flatnonzero(above_on[start:end])
        if first.size:
            flags[start + first[0]: end] = True
    return flags


def speech_flags(frames: FrameScores, config: VadConfig) -> np.ndarray:
    """bool [frames]: the detector's decision per frame.

    Silero's probability stays high for 0.1-0.25 s after the last word (and can rise just
    before the first): each of its stretches is trimmed at both ends to the frames that pass
    the energy detector's threshold, which puts its borders on the speech itself.
    """
    threshold = energy_threshold(frames.energy_db, frames.hop, config.energy_margin_db)
    if frames.detector == "energy":
        return hysteresis(frames.scores, threshold, threshold - ENERGY_HYSTERESIS_DB, ENERGY_ONSET_FRAMES)
    if frames.detector != "silero":
        raise ValueError(f"unknown detector {frames.detector!r}; known: {', '.join(DETECTORS)}")
    flags = hysteresis(frames.scores, config.threshold, config.threshold - SILERO_HYSTERESIS)
    loud = frames.energy_db >= threshold
    for start, end in runs(flags):
        inside = np.flatnonzero(loud[start:end])
        if inside.size:  # a stretch with no loud frame is kept whole: the model heard speech there
            flags[start: start + inside[0]] = False
            flags[start + inside[-1] + 1: end] = False
    return flags


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """bool [frames] -> (start, end) frame indices of the runs of True, end exclusive."""
    idx = np.flatnonzero(np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(idx[::2], idx[1::2])]


def close_gaps(intervals: list[tuple[int, int]], min_gap: int) -> list[tuple[int, int]]:
    """Joins intervals separated by less than ``min_gap``."""
    out: list[tuple[int, int]] = []
    for start, end in intervals:
        if out and start - out[-1][1] < min_gap:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def pad(intervals: list[tuple[int, int]], amount: int, length: int) -> list[tuple[int, int]]:
    """Widens each interval by ``amount`` on both sides, never past ``[0, length)`` and never
    more than half the gap to a neighbour (so padded intervals do not overlap)."""
    out = []
    for i, (start, end) in enumerate(intervals):
        left = start - amount if i == 0 else max(start - amount, start - (start - intervals[i - 1][1]) // 2)
        if i + 1 < len(intervals):
            gap = intervals[i + 1][0] - end
            right = min(end + amount, end + gap - gap // 2)
        else:
            right = end + amount
        out.append((max(0, left), min(length, right)))
    return out


def _smoothed(energy_db: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or energy_db.shape[0] < width:
        return energy_db
    kernel = np.ones(width, np.float64) / width
    return np.convolve(energy_db.astype(np.float64), kernel, mode="same")


def split_long(intervals: list[tuple[int, int]], energy_db: np.ndarray, hop: int, max_len: int,
               min_len: int) -> list[tuple[int, int]]:
    """Splits intervals longer than ``max_len`` (samples) at their quietest point.

    From the left, each cut goes at the frame border of lowest (smoothed) energy between half
    the maximum and the maximum from the current start (the last piece kept at least
    ``min_len`` where that is possible), so every piece is at most ``max_len`` and, but for the
    last, at least half of it (the rule of WhisperX's VAD chunking).
    """
    smooth = _smoothed(energy_db, max(1, int(round(QUIET_SMOOTH_S * VAD_RATE / hop))))
    out = []
    for start, end in intervals:
        while end - start > max_len:
            lo = start + max_len // 2
            hi = start + max_len
            if end - min_len >= lo:
                hi = min(hi, end - min_len)
            # Candidate cuts are the frame borders f * hop in [lo, hi].
            first, last = -(-lo // hop), min(hi // hop, smooth.shape[0] - 1)
            cut = (first + int(np.argmin(smooth[first: last + 1]))) * hop if last >= first else hi
            cut = min(max(cut, lo), hi)
            out.append((start, cut))
            start = cut
        out.append((start, end))
    return out


def merge(intervals: list[tuple[int, int]], max_gap: int, max_len: int) -> list[tuple[int, int]]:
    """Greedily joins each interval to the previous one when the gap is at most ``max_gap``
    and the joined interval is at most ``max_len``."""
    out: list[tuple[int, int]] = []
    for start, end in intervals:
        if out and start - out[-1][1] <= max_gap and end - out[-1][0] <= max_len:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """What post-processing kept and dropped, in 16 kHz samples.

    Attributes:
        segments: (start, end) of each segment, sorted, disjoint.
        speech: (start, end) of the detected speech before padding and merging.
        dropped: (start, end) of segments dropped as shorter than the minimum.
    """

    segments: list[tuple[int, int]]
    speech: list[tuple[int, int]]
    dropped: list[tuple[int, int]]


def plan_segments(frames: FrameScores, config: VadConfig, max_segment_s: float, min_segment_s: float) -> SegmentPlan:
    """Frame scores -> segments (16 kHz sample intervals). See the module docstring for the steps."""
    hop = frames.hop
    flags = speech_flags(frames, config)
    speech = [(a * hop, min(b * hop, frames.n_samples)) for a, b in runs(flags)]
    speech = close_gaps(speech, int(round(config.min_silence_s * VAD_RATE)))
    min_speech = int(round(config.min_speech_s * VAD_RATE))
    speech = [(a, b) for a, b in speech if b - a >= min_speech]
    max_len = max(hop, int(round(max_segment_s * VAD_RATE)))
    min_len = int(round(min_segment_s * VAD_RATE))
    padded = pad(speech, int(round(config.pad_s * VAD_RATE)), frames.n_samples)
    pieces = split_long(padded, frames.energy_db, hop, max_len, min_len)
    merged = merge(pieces, int(round(config.merge_gap_s * VAD_RATE)), max_len)
    kept = [(a, b) for a, b in merged if b - a >= max(1, min_len)]
    dropped = [(a, b) for a, b in merged if b - a < max(1, min_len)]
    return SegmentPlan(segments=kept, speech=speech, dropped=dropped)


def quietest_point(energy_db: np.ndarray, hop: int) -> int:
    """The sample index (a frame border) of the lowest smoothed energy in a stretch of audio."""
    if energy_db.shape[0] == 0:
        return 0
    smooth = _smoothed(energy_db, max(1, int(round(QUIET_SMOOTH_S * VAD_RATE / hop))))
    return int(np.argmin(smooth)) * hop + hop // 2
