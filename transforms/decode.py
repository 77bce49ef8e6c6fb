"""One route from an input to samples: open it once, read its header, then decode it whole or
plan it into stretches; and the stretches themselves.

:class:`FileDecoder` is the route. For each input it opens the storage object once and:

* reads the header (:func:`audiotok.transforms.readers.probe_stream`);
* a file up to ``SplitConfig.split_s`` seconds (or one whose header cannot be believed) is
  decoded whole from the same open object (:func:`audiotok.transforms.readers.decode_audio`),
  judged by the input policy (``transforms/policy.py``) and downmixed: a :class:`Decoded`;
* a longer one is *planned*: its limits judged from the header, a statistics pass run when the
  policy needs whole-file figures (below), and its length cut into work items of about
  ``split_s`` seconds (at window multiples for the fixed segmenter, at the quietest point near
  each border for the speech segmenters): a :class:`Plan`. Each item is later decoded by
  :meth:`FileDecoder.stretch`, ``chunk_s`` seconds at a time, in bounded memory.

A file streamed in stretches gets the policy of the same file decoded whole: the same
repair (zeroed NaN/Inf, scaling to the file's peak, clipping), the same verdict on NaN/Inf,
out-of-range samples, silence and clipping, and the same samples. Those verdicts need
statistics of the whole file, so planning runs a **statistics pass** (one decode of the file,
nothing kept) when the policy and the format need it (:func:`audiotok.transforms.policy.needs_statistics`):
always with ``--silence reject`` or ``--clipping reject``; otherwise only for formats whose
samples can be NaN or beyond full scale (float WAV, MP3, Ogg, AAC, ...) under the default
``non_finite=reject`` / ``out_of_range=scale|reject``; integer PCM and FLAC need none. A file
scaled down needs a second pass for its clipping figure. The pass costs one more decode of the
file (about 1/1000 of its duration on one core for FLAC or MP3); it also gives the true length,
so a cut file is judged ``truncated`` as a whole, as it would be decoded whole. Without a pass,
repairs that need no statistics (``non_finite=zero``, ``out_of_range=clip``) are applied sample
by sample, and the kept-file notes (``silent``, ``clipped``, repairs) are not counted.

Everything that parses the bytes of an input runs here, so everything runs behind the
process boundary of ``transforms/isolation.py``: the header probe, the planning, whole-file
decoding and the stretches. This module imports neither Beam nor torch (the decoder
processes import it).

Positions of stretches (``start``, ``stop``) are sample indices at the source rate: nothing is
resampled here (each tokenizer resamples from the source rate, ``transforms/tokenize.py``).
A stretch holds exactly the whole decode's samples, except where a lossy decoder is restarted
by a seek into the middle of a file: MP3 then differs by float rounding (~2e-7), Opus by up to
~1e-3 in its first frames; never in position.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from audiotok.transforms import containers, failures, policy, storage
from audiotok.transforms.failures import AudiotokError
from audiotok.transforms.policy import (DecodeConfig, Repair, SampleStats, check_duration, check_format,
                                        decide_repair, judge, judge_shortfall, needs_statistics)
from audiotok.transforms.readers import Audio, Probe, decode_audio, probe_stream, read_blocks
from audiotok.transforms.records import AudioRef, Decoded

__all__ = ["DecodeConfig", "Decoded", "FileDecoder", "Plan", "SplitConfig", "WorkItem", "decode_checked",
           "decode_ref", "downmix", "resample", "resample_stream"]

DEFAULT_CHUNK_S = 30.0
# A file whose header gives no length is streamed (as one work item) rather than decoded whole
# when it is at least this big.
UNKNOWN_LENGTH_STREAM_BYTES = 64 << 20
# A file with an exact header is checked for a cut end by reading this much before its end.
TAIL_S = 1.0
# Half-width of the stretch searched for the quietest point around a work item border.
QUIET_SEARCH_S = 5.0
SEGMENTERS: tuple[str, ...] = ("fixed", "vad", "energy")


# ------------------------------------------------------------------ channels and rates


def downmix(samples: np.ndarray) -> np.ndarray:
    """float32 [channels, samples] -> float32 [samples], the mean of the channels.

    Summed channel by channel, then divided: the same float32 operations as
    ``samples.mean(axis=0, dtype=np.float32)`` (so the same samples), ~40x faster on the
    interleaved buffers the readers return (numpy's reduction walks them the slow way).
    """
    if samples.ndim == 1:
        return samples
    if samples.shape[0] == 1:
        return samples[0]
    mono = samples[0] + samples[1]
    for channel in samples[2:]:
        mono += channel
    mono /= samples.shape[0]
    return mono


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of float32 [samples] or [channels, samples]."""
    if orig_rate == target_rate:
        return samples
    import soxr

    out = soxr.resample(samples.T, orig_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def resample_stream(chunks: Iterable[np.ndarray], source_rate: int, target_rate: int) -> Iterator[np.ndarray]:
    """float32 [n] chunks at ``source_rate`` -> float32 chunks at ``target_rate``; the whole output
    equals :func:`resample` of the concatenated input, whatever the chunk sizes."""
    if source_rate == target_rate:
        yield from chunks
        return
    import soxr

    rs = soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32", quality="HQ")
    for chunk in chunks:
        out = rs.resample_chunk(np.ascontiguousarray(chunk, dtype=np.float32))
        if out.shape[0]:
            yield out
    out = rs.resample_chunk(np.zeros(0, np.float32), last=True)
    if out.shape[0]:
        yield out


# ------------------------------------------------------------------ plans


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How long files are cut into work items (``SegmentConfig.split_config`` builds it).

    Attributes:
        split_s: files longer than this (by a believable header) are planned, not decoded whole;
            the items last about this long.
        segment_s: the fixed segmenter's window: item borders fall on its multiples.
        segmenter: ``fixed`` (borders at window multiples) or a speech segmenter (``vad``,
            ``energy``: borders at the quietest point near each nominal border).
        chunk_s: seconds of source audio decoded at a time in a stretch.
    """

    split_s: float
    segment_s: float = 30.0
    segmenter: str = "fixed"
    chunk_s: float = DEFAULT_CHUNK_S

    def __post_init__(self) -> None:
        if not self.split_s >= 4 * QUIET_SEARCH_S:
            raise ValueError(f"split_s must be >= {4 * QUIET_SEARCH_S} s. Found: {self.split_s}")
        if not self.segment_s > 0:
            raise ValueError(f"segment_s must be > 0. Found: {self.segment_s}")
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"unknown segmenter {self.segmenter!r}; known: {', '.join(SEGMENTERS)}")
        if not 0.1 <= self.chunk_s <= 3600:
            raise ValueError(f"chunk_s must be in [0.1, 3600] seconds. Found: {self.chunk_s}")

    def is_long(self, probe: Probe) -> bool:
        """Whether a file with this header is planned rather than decoded whole."""
        if probe.frames is None:  # no length to plan with: one worker streams it, in bounded memory
            return (probe.size_bytes or 0) >= UNKNOWN_LENGTH_STREAM_BYTES
        return probe.duration_s > self.split_s and probe.believable()


@dataclasses.dataclass(frozen=True)
class Plan:
    """A long file, planned: where its work items start, and how all of them are decoded.

    Attributes:
        probe: what its header says.
        cuts: the borders between consecutive items, in source frames (sorted; the first item
            starts at 0, the last runs to the end of the file).
        repair: what every stretch does to its samples (decided once for the whole file).
        notes: the file's repairs and kept oddities (``truncated``, ``silent``, ...), counted once.
        frames: the file's true length in source frames, when a statistics pass counted it.
    """

    probe: Probe
    cuts: tuple[int, ...]
    repair: Repair = Repair()
    notes: tuple[str, ...] = ()
    frames: int | None = None


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """A stretch of a long file, segmented by one worker.

    Attributes:
        source: the input (its timed transcript narrowed to the stretch).
        info: the file's probe.
        start, stop: the stretch, in source frames (``stop=None``: to the end).
        index, count: position of the item among the file's items.
        repair: what is done to every sample (the file's plan decided it).
        frames: the file's true length in source frames, when known from a statistics pass.
    """

    source: AudioRef
    info: Probe
    start: int
    stop: int | None
    index: int
    count: int
    repair: Repair = Repair()
    frames: int | None = None

    @property
    def sample_rate(self) -> int:
        """The rate of the stretch's audio (the source's), Hz."""
        return self.info.sample_rate

    @property
    def start_s(self) -> float:
        return self.start / self.sample_rate

    @property
    def stop_s(self) -> float | None:
        return None if self.stop is None else self.stop / self.sample_rate

    def expected_length(self) -> int | None:
        """Frames the stretch must hold, when the file's length is known exactly."""
        known = self.frames if self.frames is not None else (self.info.frames if self.info.exact else None)
        if known is None:
            return None
        return (self.stop if self.stop is not None else known) - self.start


def fixed_borders(n_est: int, rate: int, split: SplitConfig) -> list[int]:
    """Item borders for the fixed segmenter: multiples of the window close to ``split_s``, so that
    every item's windows are the whole file's windows."""
    window = max(1, int(round(split.segment_s * rate)))
    step = window * max(1, int(round(split.split_s * rate / window)))
    return list(range(step, n_est - window, step))


def nominal_borders(n_est: int, rate: int, split: SplitConfig) -> list[int]:
    """Every ``split_s`` seconds, keeping the last item at least half as long."""
    step = int(round(split.split_s * rate))
    return list(range(step, n_est - step // 2, step))


def cut_stream(chunks: Iterable[np.ndarray], intervals: list[tuple[int, int]]) -> Iterator[tuple[int, int, np.ndarray]]:
    """Cuts a stream of float32 chunks along sorted, disjoint (start, end) sample intervals.

    Yields:
        (start, end, audio) for each interval, in order, audio a fresh array (it holds no chunk
        alive). An interval the stream ends inside comes back shorter; the ones after are skipped.
    """
    todo = iter(intervals)
    current = next(todo, None)
    pos = 0
    parts: list[np.ndarray] = []
    for chunk in chunks:
        if current is None:
            return
        end_of_chunk = pos + chunk.shape[0]
        while current is not None and current[0] < end_of_chunk:
            lo, hi = current
            a, b = max(lo, pos) - pos, min(hi, end_of_chunk) - pos
            if b > a:
                parts.append(chunk[a:b])
            if hi > end_of_chunk:
                break
            yield lo, hi, _join(parts)
            parts = []
            current = next(todo, None)
        pos = end_of_chunk
    if current is not None and parts:
        yield current[0], pos, _join(parts)


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class _Budget:
    """Decoding time spent inside a generator only (not while its consumer holds a chunk)."""

    def __init__(self, limit_s: float | None):
        self.limit_s, self.spent = limit_s, 0.0

    def timed(self, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        while True:
            t = time.monotonic()
            block = next(blocks, None)
            self.spent += time.monotonic() - t
            if self.limit_s is not None and self.spent > self.limit_s:
                raise AudiotokError(failures.TIMEOUT, f"decoding took longer than {self.limit_s:g} s")
            if block is None:
                return
            yield block


def static_repair(config: DecodeConfig, probe: Probe) -> Repair:
    """The repair of a streamed file planned without statistics: what needs none, sample by sample."""
    if probe.bounded:
        return Repair()
    return Repair(zero_non_finite=config.non_finite == "zero", clip=config.out_of_range == "clip")


# ------------------------------------------------------------------ the route


class FileDecoder:
    """The route from an input to samples (module docstring).

    The public methods (:meth:`open`, :meth:`stretch`) are what the decode stage calls, in the
    worker or in a decoder process. The hooks they call (:meth:`probe`, :meth:`decode_whole`,
    :meth:`plan`, :meth:`blocks`) may be overridden by a subclass named by
    ``DecodeConfig.decoder``: another decoder, or a fault injected in tests.
    """

    # -- hooks

    def probe(self, f: BinaryIO, uri: str) -> Probe:
        """What the header of the open file ``f`` says (raises ``AudiotokError``)."""
        return probe_stream(f, uri, storage.local_path(uri))

    def decode_whole(self, f: BinaryIO, uri: str, config: DecodeConfig, deadline: float | None) -> Audio:
        """The whole of the open file ``f``, before the sample-value policy."""
        return decode_audio(f, uri, config, deadline, storage.local_path(uri))

    def blocks(self, f: BinaryIO, uri: str, probe: Probe, start: int, block_frames: int,
               stop: int | None = None) -> Iterator[np.ndarray]:
        """float32 [channels, n] blocks of the open file ``f`` from source frame ``start`` (to ``stop``)."""
        return read_blocks(f, probe, start, block_frames, stop, storage.local_path(uri))

    def plan(self, f: BinaryIO, uri: str, probe: Probe, config: DecodeConfig, split: SplitConfig,
             deadline: float | None) -> Plan:
        """Plans the long file ``f`` (module docstring).

        Raises:
            AudiotokError: a limit the header breaks, or a verdict of the statistics pass.
        """
        check_format(probe.sample_rate, probe.channels, config)
        if probe.frames is not None:
            check_duration(probe.frames, probe.sample_rate, config, "the header declares")
        notes = self._header_notes(f, probe, config)
        repair, frames = static_repair(config, probe), None
        if needs_statistics(config, probe.bounded):
            repair, stats_notes, frames = self._statistics(f, uri, probe, config, deadline)
            notes += stats_notes
        elif probe.exact and probe.seekable and probe.format != "wav":
            frames = self._cut_length(f, uri, probe)
            if frames is not None:
                notes += judge_shortfall(probe.frames, frames, probe.sample_rate, config,
                                         f"the header declares {probe.frames} frames, {frames} decoded")
        length = frames if frames is not None else probe.frames
        if length is None:
            return Plan(probe, (), repair, notes, frames)
        rate = probe.sample_rate
        if split.segmenter == "fixed":
            cuts = fixed_borders(length, rate, split)
        else:
            cuts = self._quiet_cuts(f, uri, probe, nominal_borders(length, rate, split), split, repair, config)
        return Plan(probe, tuple(cuts), repair, notes, frames)

    # -- public

    def open(self, ref: AudioRef, config: DecodeConfig,
             split: SplitConfig | None = None) -> tuple[Decoded, tuple[str, ...]] | Plan:
        """Opens ``ref`` once: a short file decoded whole (mono at the source rate, with the notes
        of what was accepted or repaired), or a long one's plan (when ``split`` is given).

        The time limit (``config.timeout_s``) covers the whole request.

        Raises:
            AudiotokError: with the reason the input cannot be used.
        """
        deadline = time.monotonic() + config.timeout_s if config.timeout_s else None
        try:
            with storage.open_input(ref.uri) as f:
                try:
                    probe = self.probe(f, ref.uri)
                except AudiotokError:
                    probe = None  # the whole-file decoder says why (or reads what the probe could not)
                if split is not None and probe is not None and split.is_long(probe):
                    return self.plan(f, ref.uri, probe, config, split, deadline)
                audio = self.decode_whole(f, ref.uri, config, deadline)
            samples, notes = policy.apply_policy(audio.samples, audio.sample_rate, config)
        except AudiotokError as e:
            e.uri = e.uri or ref.uri
            raise
        except MemoryError:
            raise AudiotokError(failures.OUT_OF_MEMORY, "out of memory while decoding", ref.uri) from None
        except (OSError, ValueError) as e:
            raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", ref.uri) from e
        decoded = Decoded(source=ref, audio=downmix(samples), sample_rate=audio.sample_rate,
                          source_sample_rate=audio.sample_rate, source_channels=int(samples.shape[0]),
                          source_format=audio.format)
        return decoded, audio.notes + notes

    def stretch(self, item: WorkItem, config: DecodeConfig, chunk_s: float = DEFAULT_CHUNK_S) -> Iterator[np.ndarray]:
        """Streams the stretch of ``item`` as mono float32 chunks at the source rate.

        ``config.timeout_s`` bounds the decoding time of the stretch (not the time its consumer
        holds the chunks).

        Yields:
            float32 [n] chunks (about ``chunk_s`` seconds each) whose concatenation is samples
            ``[start, stop)`` of the whole file, repaired as the plan says and downmixed.

        Raises:
            AudiotokError: with the reason the stretch could not be read.
        """
        if not chunk_s > 0:
            raise ValueError(f"chunk_s must be > 0. Found: {chunk_s}")
        if item.start < 0 or (item.stop is not None and item.stop < item.start):
            raise ValueError(f"need 0 <= start <= stop. Found: {item.start}, {item.stop}")
        uri = item.source.uri
        budget = _Budget(config.timeout_s)
        try:
            with storage.open_input(uri) as f:
                yield from self._stretch(f, uri, item.info, item.start, item.stop, item.repair, chunk_s, config,
                                         budget, item.frames)
        except AudiotokError as e:
            e.uri = e.uri or uri
            raise
        except MemoryError:
            raise AudiotokError(failures.OUT_OF_MEMORY, "out of memory while decoding", uri) from None
        except (OSError, ValueError) as e:
            raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", uri) from e

    # -- the parts

    def _stretch(self, f: BinaryIO, uri: str, probe: Probe, start: int, stop: int | None, repair: Repair,
                 chunk_s: float, config: DecodeConfig, budget: _Budget,
                 frames: int | None = None) -> Iterator[np.ndarray]:
        """Mono samples ``[start, stop)`` of the open file ``f``; ``frames``: the file's true
        length, when known (nothing past it is read)."""
        check_format(probe.sample_rate, probe.channels, config)
        if stop is not None and stop == start:
            return
        end = stop if frames is None else (frames if stop is None else min(stop, frames))
        limit = config.max_duration_frames(probe.sample_rate)
        position = start
        block = max(1024, int(chunk_s * probe.sample_rate))
        for data in budget.timed(iter(self.blocks(f, uri, probe, start, block, end))):
            position += data.shape[1]
            if position > limit:
                check_duration(position, probe.sample_rate, config, "decoding passed")
            yield downmix(repair.apply(data))

    def _header_notes(self, f: BinaryIO, probe: Probe, config: DecodeConfig) -> tuple[str, ...]:
        """The container checks a whole-file decode makes first (a WAV's data chunk against the
        bytes present), without the memory guard."""
        if probe.format != "wav" or probe.size_bytes is None:
            return ()
        layout = containers.wav_layout(f, probe.size_bytes)
        return () if layout is None else containers.check_wav_layout(layout, config, whole=False)[1]

    def _cut_length(self, f: BinaryIO, uri: str, probe: Probe) -> int | None:
        """The true length of a file with an exact header that ends early (None: it does not):
        its last ``TAIL_S`` seconds are read, and only a file cut short is counted through."""
        start = max(0, probe.frames - int(TAIL_S * probe.sample_rate))
        if start + self._count(f, uri, probe, start) >= probe.frames:
            return None
        return self._count(f, uri, probe, 0)

    def _count(self, f: BinaryIO, uri: str, probe: Probe, start: int) -> int:
        """Frames that decode from ``start`` on, up to the end or to a reader's failure (the block
        that failed is read again in smaller blocks, so at most about a second is lost)."""
        position, block = start, int(DEFAULT_CHUNK_S * probe.sample_rate)
        while True:
            try:
                for data in self.blocks(f, uri, probe, position, block):
                    position += data.shape[1]
                return position - start
            except AudiotokError:
                if block <= probe.sample_rate:
                    return position - start
                block = probe.sample_rate

    def _statistics(self, f: BinaryIO, uri: str, probe: Probe, config: DecodeConfig,
                    deadline: float | None) -> tuple[Repair, tuple[str, ...], int]:
        """One pass over the file for its statistics (two when it is scaled): the repair, the
        notes and the true length, as the whole-file policy would decide them."""
        budget = _Budget(None if deadline is None else max(0.0, deadline - time.monotonic()))
        block = max(1024, int(DEFAULT_CHUNK_S * probe.sample_rate))
        limit = config.max_duration_frames(probe.sample_rate)

        def scan(repair: Repair) -> tuple[SampleStats, int]:
            stats, frames = SampleStats(), 0
            for data in budget.timed(iter(self.blocks(f, uri, probe, 0, block))):
                frames += data.shape[1]
                if frames > limit:
                    check_duration(frames, probe.sample_rate, config, "decoding passed")
                stats = stats + policy.block_stats(repair.apply(data))
            return stats, frames

        raw, frames = scan(Repair())
        if frames == 0:
            raise AudiotokError(failures.EMPTY, "the audio stream has no samples")
        notes: tuple[str, ...] = ()
        if probe.exact and probe.frames is not None and frames < probe.frames:
            notes = judge_shortfall(probe.frames, frames, probe.sample_rate, config,
                                    f"the header declares {probe.frames} frames, {frames} decoded")
        repair = decide_repair(raw, config)
        after = policy.repaired_stats(raw, repair)
        if after is None:
            after, _ = scan(repair)
        return repair, notes + repair.notes + judge(after, config), frames

    def _quiet_cuts(self, f: BinaryIO, uri: str, probe: Probe, borders: list[int], split: SplitConfig,
                    repair: Repair, config: DecodeConfig) -> list[int]:
        """Moves each border to the quietest point within ``QUIET_SEARCH_S`` of it (by 16 kHz frame
        energy). Borders whose stretch the file does not hold (a header that overstates the
        length) are dropped."""
        from audiotok.transforms import vad

        rate = probe.sample_rate
        half = int(round(min(QUIET_SEARCH_S, split.split_s / 4) * rate))
        windows = [(b - half, b + half) for b in borders]
        # Cuts on the whole file's frame grid keep the frames of every item where they would be
        # for the whole file: at whole samples of both rates that are whole detector frames.
        hop = vad.SILERO_HOP if split.segmenter == "vad" else vad.ENERGY_HOP
        grid = hop * rate // math.gcd(hop * rate, vad.VAD_RATE)
        cuts = []
        for (lo, hi), audio in zip(windows, self._windows(f, uri, probe, windows, split.chunk_s, repair, config)):
            if audio.shape[0] < hi - lo:
                break
            db = vad.frame_energy_db(resample(audio, rate, vad.VAD_RATE), vad.ENERGY_HOP)
            cut = lo + (2 * vad.quietest_point(db, vad.ENERGY_HOP) * rate + vad.VAD_RATE) // (2 * vad.VAD_RATE)
            cuts.append((2 * cut + grid) // (2 * grid) * grid)
        return cuts

    def _windows(self, f: BinaryIO, uri: str, probe: Probe, windows: list[tuple[int, int]], chunk_s: float,
                 repair: Repair, config: DecodeConfig) -> Iterator[np.ndarray]:
        """The audio of each (sorted, disjoint) window: one seek each for libsndfile formats, one
        pass over the file for the others. A window past the end comes back short."""
        if probe.seekable:
            for lo, hi in windows:
                yield _join(list(self._stretch(f, uri, probe, lo, hi, repair, chunk_s, config,
                                               _Budget(config.timeout_s))))
            return
        if not windows:
            return
        pos = windows[0][0]
        chunks = self._stretch(f, uri, probe, pos, windows[-1][1], repair, chunk_s, config, _Budget(config.timeout_s))
        got = 0
        for _, _, audio in cut_stream(chunks, [(lo - pos, hi - pos) for lo, hi in windows]):
            got += 1
            yield audio
        for _ in range(got, len(windows)):  # windows past the end of the file
            yield np.zeros(0, np.float32)


def resolve_decoder(path: str) -> type[FileDecoder]:
    """The class named by ``module:Class`` (``DecodeConfig.decoder``).

    Raises:
        ValueError: when it names something else than a :class:`FileDecoder` class.
    """
    module, _, name = path.partition(":")
    found = getattr(importlib.import_module(module), name)
    if not (isinstance(found, type) and issubclass(found, FileDecoder)):
        raise ValueError(f"{path} is not a FileDecoder subclass")
    return found


def decode_checked(ref: AudioRef, config: DecodeConfig) -> tuple[Decoded, tuple[str, ...]]:
    """Decodes one input whole in this process: mono at the source rate, and the notes of what
    was accepted or repaired.

    Raises:
        AudiotokError: with the reason the input cannot be used.
    """
    return resolve_decoder(config.decoder)().open(ref, config)


def decode_ref(ref: AudioRef, config: DecodeConfig) -> Decoded:
    """:func:`decode_checked` without the notes."""
    return decode_checked(ref, config)[0]


def probe_uri(uri: str, config: DecodeConfig | None = None) -> Probe:
    """What the header of ``uri`` says, read in this process.

    Raises:
        AudiotokError: ``empty``, ``unsupported_format``, ``read_error``.
    """
    decoder = resolve_decoder((config or DecodeConfig()).decoder)()
    try:
        with storage.open_input(uri) as f:
            return decoder.probe(f, uri)
    except AudiotokError:
        raise
    except (OSError, ValueError) as e:
        raise AudiotokError(failures.READ_ERROR, f"{type(e).__name__}: {e}", uri) from e


def read_stretch(uri: str, start: int = 0, stop: int | None = None, config: DecodeConfig | None = None,
                 chunk_s: float = DEFAULT_CHUNK_S) -> tuple[np.ndarray, int]:
    """Mono samples ``[start, stop)`` of ``uri`` and its rate, streamed in this process with the
    repairs that need no statistics (for tests, benchmarks and small stretches)."""
    config = config or DecodeConfig()
    info = probe_uri(uri, config)
    item = WorkItem(AudioRef(uri), info, start, stop, 0, 1, static_repair(config, info))
    return _join(list(resolve_decoder(config.decoder)().stretch(item, config, chunk_s))), info.sample_rate
