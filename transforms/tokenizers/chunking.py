"""Long inputs: overlapping chunks, and stitching their frames back into one sequence.

A segment longer than a model's window is cut into chunks that start on a frame boundary
(a multiple of ``align`` samples) and overlap by ``overlap`` samples. Each chunk is encoded
alone; the stitched sequence keeps, from each chunk, the frames between the midpoints of its
overlaps, so every kept frame saw at least half the overlap of context on both sides.

Chunk frame ``j`` is global frame ``start / hop + j`` for any stream whose ``hop`` divides
``align``, which holds for strided convolutions with or without a receptive field wider than
the hop (HuBERT's 400-sample frames every 320 samples).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk of a segment, in samples.

    Attributes:
        start, end: the samples encoded.
        keep_start, keep_end: the part whose frames go into the stitched sequence; multiples
            of ``align`` except ``keep_end`` of the last chunk, which is the segment's end.
    """

    start: int
    end: int
    keep_start: int
    keep_end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_chunks(num_samples: int, chunk: int, overlap: int, align: int) -> list[Chunk]:
    """Cuts ``num_samples`` into overlapping chunks of at most ``chunk`` samples.

    Args:
        num_samples: segment length.
        chunk: chunk length, samples (rounded down to a multiple of ``align``).
        overlap: overlap between consecutive chunks, samples (rounded up to a multiple of
            ``align``; twice that rounding must stay below ``chunk``).
        align: frame grid, samples: the least common multiple of every stream's hop.

    Returns:
        One chunk covering everything when ``num_samples <= chunk``; else chunks whose kept
        parts tile ``[0, num_samples)`` exactly.

    Raises:
        ValueError: the chunk is shorter than two alignments, or the overlap leaves no progress.
    """
    if align < 1:
        raise ValueError(f"align must be >= 1. Found: {align}")
    chunk = chunk // align * align
    overlap = -(-overlap // align) * align
    if chunk < 2 * align or overlap < 0 or chunk - overlap < align:
        raise ValueError(
            f"chunks of {chunk} samples with {overlap} samples of overlap (aligned to {align}) make no progress; "
            "lengthen chunk_s or shorten overlap_s")
    if num_samples <= chunk:
        return [Chunk(0, num_samples, 0, num_samples)]
    step = chunk - overlap
    # The boundary between consecutive chunks' kept parts: the middle of their overlap, on the grid.
    lead = overlap // 2 // align * align
    chunks = []
    start = 0
    while True:
        end = min(start + chunk, num_samples)
        last = end == num_samples
        keep_start = 0 if start == 0 else start + lead
        keep_end = num_samples if last else start + step + lead
        chunks.append(Chunk(start, end, keep_start, keep_end))
        if last:
            return chunks
        start += step


def stitch(pieces: Sequence[np.ndarray], chunks: Sequence[Chunk], hop: int, total_frames: int,
           axis: int = -1) -> np.ndarray:
    """Joins per-chunk frames into the segment's frames.

    Args:
        pieces: per chunk, frames along ``axis`` (chunk frame ``j`` is at ``chunk.start / hop + j``).
        chunks: the plan ``pieces`` were encoded from.
        hop: samples per frame of this stream (must divide the plan's alignment).
        total_frames: frames of the whole segment; the result has exactly this many.

    Raises:
        ValueError: a piece is too short for its kept part, or the kept parts do not add up.
    """
    if len(pieces) != len(chunks):
        raise ValueError(f"{len(pieces)} pieces for {len(chunks)} chunks")
    if len(chunks) == 1:
        return _take(pieces[0], 0, total_frames, axis)
    kept = []
    for i, (piece, c) in enumerate(zip(pieces, chunks)):
        first = (c.keep_start - c.start) // hop
        last = total_frames - c.start // hop if i == len(chunks) - 1 else (c.keep_end - c.start) // hop
        kept.append(_take(piece, first, last, axis))
    out = np.concatenate(kept, axis=axis)
    if out.shape[axis] != total_frames:
        raise ValueError(f"stitched {out.shape[axis]} frames; expected {total_frames}")
    return out


def _take(array: np.ndarray, first: int, last: int, axis: int) -> np.ndarray:
    if array.shape[axis] < last or first > last:
        raise ValueError(f"a chunk has {array.shape[axis]} frames; frames [{first}, {last}) were needed")
    index = [slice(None)] * array.ndim
    index[axis] = slice(first, last)
    return array[tuple(index)]


# Whether pieces share forward passes on the CPU. Off: CPU kernels (oneDNN convolutions, MKL
# GEMMs in LSTMs) round differently for other batch sizes and lengths, so a batch can flip a
# deep residual code at a near-tie (measured: 27 of 16816 EnCodec-24k codes, codebooks 4-8);
# one piece per pass makes tokens independent of what else is in the batch, bit for bit, and
# batching gains little on a CPU (benchmarks/tokenizers_cpu.py). GPUs always batch.
BATCH_ON_CPU = False


def max_pieces_per_pass(device: str) -> int | None:
    """1 on the CPU unless ``BATCH_ON_CPU``; no limit elsewhere."""
    return None if BATCH_ON_CPU or not str(device).startswith("cpu") else 1


def forward_groups(widths: Sequence[int], same_width_only: bool, max_samples: float,
                   max_items: int | None = None) -> list[list[int]]:
    """Which pieces share a forward pass.

    Args:
        widths: each piece's length once padded for the model, samples.
        same_width_only: group only equal widths (models whose output depends on padding).
        max_samples: padded samples per pass at most (batch size x widest); one piece may exceed it.
        max_items: pieces per pass at most (None: no limit).

    Returns:
        Piece indices per pass, widest first (so padding stays small).
    """
    order = sorted(range(len(widths)), key=lambda i: (-widths[i], i))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and ((same_width_only and widths[i] != widths[current[0]])
                        or (max_items is not None and len(current) >= max_items)
                        or widths[current[0]] * (len(current) + 1) > max_samples):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def seam_frames(chunks: Sequence[Chunk], hop: int, radius: int) -> np.ndarray:
    """Frame indices within ``radius`` frames of a boundary between kept parts (for agreement figures)."""
    seams = [c.keep_end // hop for c in chunks[:-1]]
    near = {f for s in seams for f in range(s - radius, s + radius)}
    return np.array(sorted(f for f in near if f >= 0), dtype=np.int64)
