"""From token streams to language-model sequences: the vocabulary spec and the sequence builder.

Pure numpy, no I/O except ``write_vocab``/``read_vocab``.

**The flat vocabulary** (``OUT/vocab.json``, built from the index's stream specs). Ids, in order:

* ``0..3``: special tokens ``<|pad|>``, ``<|bos|>``, ``<|eos|>``, ``<|empty|>`` (the filler of
  the delay pattern's ragged edges).
* then one separator ``<|stream:NAME|>`` per discrete stream, in vocabulary order;
* then each discrete stream's codes, stream after stream: a ``units`` stream takes
  ``codebook_size`` ids, a ``codes`` stream ``num_codebooks x codebook_size`` ids, codebook
  after codebook. Code ``c`` of codebook ``k`` of stream ``s`` is id
  ``offset[s] + k * codebook_size[s] + c``.

Continuous ``vectors`` and run-length ``durations`` streams (no ``codebook_size``) have no ids:
``vocab.json`` lists them under ``not_in_vocab`` with the reason. Streams are ordered by name
(as in ``index.json``), so two datasets with the same streams get the same ids; compare
``vocab.json`` files (or their ``fingerprint`` entries) before mixing datasets.

**A document** (one sample as an LM sequence) is::

    <|bos|> <|stream:A|> tokens of A ... <|stream:B|> tokens of B ... <|eos|>

Streams follow one another (e.g. units, then codes). A ``codes [K, T]`` stream is flattened
frame by frame: ``interleave`` gives ``c[0,0] c[1,0] .. c[K-1,0] c[0,1] ..`` (K*T tokens);
``delay`` first shifts codebook ``k`` right by ``k`` frames (MusicGen's delay pattern), filling
the gaps with ``<|empty|>``, then flattens the ``[K, T+K-1]`` result the same way.

**Packing** concatenates documents into rows of ``context_len`` tokens, with
``document_ids`` (a running number per document, -1 on padding) and ``positions``
(restarting at 0 where each document, or each row, starts) so attention can stay inside a
document (``block_causal_mask``). ``unpack_rows`` gives the documents back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from audiotok.transforms import storage

VOCAB_NAME = "vocab.json"
VOCAB_FORMAT = "audiotok-vocab"
VOCAB_VERSION = 1

PAD = "<|pad|>"
BOS = "<|bos|>"
EOS = "<|eos|>"
EMPTY = "<|empty|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, EMPTY)

INTERLEAVE = "interleave"
DELAY = "delay"
PATTERNS: tuple[str, ...] = (INTERLEAVE, DELAY)

# Stream kinds with discrete ids (see transforms/tokenizers/base.py).
_DISCRETE_KINDS = ("codes", "units")


def separator_token(stream: str) -> str:
    return f"<|stream:{stream}|>"


@dataclasses.dataclass(frozen=True)
class StreamVocab:
    """Where one discrete stream's codes sit in the flat vocabulary.

    Attributes:
        name: the stream's name in a sample.
        kind: ``units`` ([T]) or ``codes`` ([K, T]).
        num_codebooks: K (1 for units).
        codebook_size: N, distinct codes per codebook.
        offset: flat id of code 0 of codebook 0.
        separator_id: flat id of ``<|stream:NAME|>``.
        frame_rate_hz: frames per second of audio.
        fingerprint: the tokenizer fingerprint the codes came from.
    """

    name: str
    kind: str
    num_codebooks: int
    codebook_size: int
    offset: int
    separator_id: int
    frame_rate_hz: float | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _DISCRETE_KINDS:
            raise ValueError(f"stream {self.name!r}: kind must be one of {_DISCRETE_KINDS}. Found: {self.kind!r}")
        if self.num_codebooks < 1 or (self.kind == "units" and self.num_codebooks != 1):
            raise ValueError(f"stream {self.name!r}: bad num_codebooks {self.num_codebooks} for kind {self.kind}")
        if self.codebook_size < 1:
            raise ValueError(f"stream {self.name!r}: codebook_size must be >= 1. Found: {self.codebook_size}")

    @property
    def size(self) -> int:
        """Ids this stream takes: K * N."""
        return self.num_codebooks * self.codebook_size

    def codebook_offset(self, k: int) -> int:
        return self.offset + k * self.codebook_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["codebooks"] = [{"index": k, "size": self.codebook_size, "offset": self.codebook_offset(k)}
                          for k in range(self.num_codebooks)]
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StreamVocab":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


@dataclasses.dataclass(frozen=True)
class VocabSpec:
    """One flat LM vocabulary over a dataset's discrete streams (layout: see the module doc).

    Attributes:
        specials: special token -> id.
        streams: the discrete streams, in id order.
        not_in_vocab: stream name -> why it has no ids (vectors, durations).
    """

    specials: Mapping[str, int]
    streams: tuple[StreamVocab, ...]
    not_in_vocab: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of ids: the embedding table's rows."""
        ends = [max(self.specials.values()) + 1] + [s.offset + s.size for s in self.streams]
        return max(ends)

    @property
    def pad_id(self) -> int:
        return self.specials[PAD]

    @property
    def bos_id(self) -> int:
        return self.specials[BOS]

    @property
    def eos_id(self) -> int:
        return self.specials[EOS]

    @property
    def empty_id(self) -> int:
        return self.specials[EMPTY]

    def stream(self, name: str) -> StreamVocab:
        for s in self.streams:
            if s.name == name:
                return s
        why = f" ({self.not_in_vocab[name]})" if name in self.not_in_vocab else ""
        raise ValueError(f"stream {name!r} has no ids in the vocabulary{why}; "
                         f"streams with ids: {', '.join(s.name for s in self.streams) or 'none'}")

    def fingerprint(self) -> str:
        """16 hex characters identifying the id layout and where the codes came from."""
        blob = json.dumps({"specials": dict(self.specials), "streams": [s.to_dict() for s in self.streams]},
                          sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def token_name(self, token_id: int) -> str:
        """A readable name for one id: ``<|bos|>``, ``<|stream:s|>``, ``s:k3:217``."""
        for name, i in self.specials.items():
            if i == token_id:
                return name
        for s in self.streams:
            if s.offset <= token_id < s.offset + s.size:
                k, c = divmod(token_id - s.offset, s.codebook_size)
                return f"{s.name}:{c}" if s.kind == "units" else f"{s.name}:k{k}:{c}"
        raise ValueError(f"id {token_id} is outside the vocabulary [0, {self.size})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "size": self.size,
            "fingerprint": self.fingerprint(),
            "specials": dict(self.specials),
            "streams": [s.to_dict() for s in self.streams],
            "not_in_vocab": dict(self.not_in_vocab),
            "layout": ("ids: specials, then one <|stream:NAME|> separator per stream, then each stream's codes, "
                       "codebook after codebook; id = offset + k * codebook_size + code"),
            "document": "<|bos|> (<|stream:NAME|> tokens)* <|eos|>; codes [K, T] flattened frame by frame "
                        "(interleave) or after the delay pattern (delay, gaps filled with <|empty|>)",
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VocabSpec":
        if d.get("format") != VOCAB_FORMAT:
            raise ValueError(f"not an {VOCAB_FORMAT} file (format {d.get('format')!r})")
        if d.get("version") != VOCAB_VERSION:
            raise ValueError(f"unsupported {VOCAB_FORMAT} version {d.get('version')!r}; "
                             f"this reader knows {VOCAB_VERSION}")
        spec = cls(specials=dict(d["specials"]), streams=tuple(StreamVocab.from_dict(s) for s in d["streams"]),
                   not_in_vocab=dict(d.get("not_in_vocab", {})))
        if d.get("size") is not None and d["size"] != spec.size:
            raise ValueError(f"vocabulary file says size {d['size']}, its streams add up to {spec.size}")
        return spec


def build_vocab(streams: Mapping[str, Mapping[str, Any]], order: Sequence[str] | None = None) -> VocabSpec:
    """The flat vocabulary of a dataset's streams.

    Args:
        streams: stream name -> description, as in ``index.json``'s ``streams`` (kind,
            num_codebooks, codebook_size, frame_rate_hz, fingerprint) or ``StreamSpec.to_dict()``.
        order: stream names in id order; default: sorted by name.

    Returns:
        The spec; streams that are not discrete, or have no codebook_size, are in ``not_in_vocab``.

    Raises:
        ValueError: ``order`` names an unknown stream or repeats one.
    """
    names = sorted(streams) if order is None else list(order)
    unknown = [n for n in names if n not in streams]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"bad stream order {names}; known streams: {', '.join(sorted(streams))}")
    discrete, skipped = [], {}
    for name in names:
        d = streams[name]
        kind = d.get("kind")
        if kind not in _DISCRETE_KINDS:
            skipped[name] = f"{kind} stream: no discrete ids"
        elif not d.get("codebook_size"):
            skipped[name] = f"{kind} stream without codebook_size"
        else:
            discrete.append(name)
    for name in sorted(set(streams) - set(names)):
        skipped[name] = "left out by the stream order"
    specials = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    next_id = len(specials)
    separators = {}
    for name in discrete:
        separators[name] = next_id
        specials[separator_token(name)] = next_id
        next_id += 1
    vocabs = []
    for name in discrete:
        d = streams[name]
        k = int(d.get("num_codebooks") or 1) if d["kind"] == "codes" else 1
        v = StreamVocab(name=name, kind=d["kind"], num_codebooks=k, codebook_size=int(d["codebook_size"]),
                        offset=next_id, separator_id=separators[name],
                        frame_rate_hz=d.get("frame_rate_hz"), fingerprint=d.get("fingerprint"))
        vocabs.append(v)
        next_id += v.size
    return VocabSpec(specials=specials, streams=tuple(vocabs), not_in_vocab=skipped)


def write_vocab(output: str, index: Mapping[str, Any]) -> VocabSpec:
    """Writes ``OUTPUT/vocab.json`` for a dataset's index; returns the spec."""
    spec = build_vocab(index.get("streams", {}))
    storage.write_atomic(storage.join(output, VOCAB_NAME),
                         json.dumps(spec.to_dict(), indent=1, sort_keys=True).encode("utf-8"))
    return spec


def read_vocab(output: str) -> VocabSpec:
    """Reads ``OUTPUT/vocab.json``."""
    return VocabSpec.from_dict(json.loads(storage.read_bytes(storage.join(output, VOCAB_NAME))))


# ---------------------------------------------------------------------------- codes <-> flat ids


def _as_codebooks(array: np.ndarray, stream: StreamVocab) -> np.ndarray:
    """int64 [K, T] view of a stream's array (units [T] -> [1, T])."""
    a = np.asarray(array)
    if stream.kind == "units":
        if a.ndim != 1:
            raise ValueError(f"stream {stream.name!r} (units) must be [T]. Found shape {a.shape}")
        a = a[None, :]
    elif a.ndim != 2 or a.shape[0] != stream.num_codebooks:
        raise ValueError(f"stream {stream.name!r} (codes) must be [{stream.num_codebooks}, T]. Found shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"stream {stream.name!r} must hold integers. Found dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def to_flat_ids(array: np.ndarray, stream: StreamVocab) -> np.ndarray:
    """Codes -> flat vocabulary ids.

    Args:
        array: int [T] (units) or int [K, T] (codes), values in [0, codebook_size).

    Returns:
        int64 [K, T] (K = 1 for units): ``offset + k * codebook_size + code``.

    Raises:
        ValueError: wrong shape, or a code outside [0, codebook_size).
    """
    a = _as_codebooks(array, stream)
    if a.size and (a.min() < 0 or a.max() >= stream.codebook_size):
        bad = a[(a < 0) | (a >= stream.codebook_size)][0]
        raise ValueError(f"stream {stream.name!r}: code {bad} outside [0, {stream.codebook_size})")
    return a + (stream.offset + stream.codebook_size * np.arange(stream.num_codebooks, dtype=np.int64))[:, None]


def from_flat_ids(ids: np.ndarray, stream: StreamVocab) -> np.ndarray:
    """Flat ids int [K, T] -> codes int16 [K, T] (units: [T]); inverse of ``to_flat_ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    codes = ids - (stream.offset + stream.codebook_size * np.arange(stream.num_codebooks, dtype=np.int64))[:, None]
    if codes.size and (codes.min() < 0 or codes.max() >= stream.codebook_size):
        raise ValueError(f"stream {stream.name!r}: ids outside its codebooks' ranges")
    codes = codes.astype(np.int16)
    return codes[0] if stream.kind == "units" else codes


def delay_pattern(codes: np.ndarray, fill: int) -> np.ndarray:
    """MusicGen's delay pattern: codebook k shifted right by k frames.

    Args:
        codes: [K, T].
        fill: value of the positions no code covers.

    Returns:
        [K, T + K - 1] (``[K, 0]`` when T = 0), same dtype.
    """
    k_books, t = codes.shape
    if t == 0:
        return codes.copy()
    out = np.full((k_books, t + k_books - 1), fill, dtype=codes.dtype)
    for k in range(k_books):
        out[k, k:k + t] = codes[k]
    return out


def undelay_pattern(delayed: np.ndarray) -> np.ndarray:
    """[K, T + K - 1] -> [K, T]; inverse of ``delay_pattern``."""
    k_books, length = delayed.shape
    if length == 0:
        return delayed.copy()
    t = length - k_books + 1
    if t < 1:
        raise ValueError(f"a delayed [K={k_books}, L] array needs L >= K. Found L={length}")
    return np.stack([delayed[k, k:k + t] for k in range(k_books)])


def flatten_codes(ids: np.ndarray, pattern: str = INTERLEAVE, empty_id: int = 3) -> np.ndarray:
    """[K, T] -> one frame-major sequence.

    Args:
        ids: [K, T] flat ids.
        pattern: ``interleave`` (K*T tokens) or ``delay`` (K*(T+K-1) tokens, gaps = ``empty_id``).

    Returns:
        [L] same dtype.
    """
    _check_pattern(pattern)
    if pattern == DELAY:
        ids = delay_pattern(ids, empty_id)
    return np.ascontiguousarray(ids.T).reshape(-1)


def unflatten_codes(flat: np.ndarray, num_codebooks: int, pattern: str = INTERLEAVE) -> np.ndarray:
    """[L] -> [K, T]; inverse of ``flatten_codes``."""
    _check_pattern(pattern)
    if flat.size % num_codebooks:
        raise ValueError(f"{flat.size} tokens do not split into frames of {num_codebooks} codebooks")
    grid = flat.reshape(-1, num_codebooks).T
    return undelay_pattern(grid) if pattern == DELAY else np.ascontiguousarray(grid)


def _check_pattern(pattern: str) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")


# ---------------------------------------------------------------------------- documents


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """How one sample becomes one LM document.

    Attributes:
        streams: the streams to put in, in this order (e.g. ``("units", "codes")``).
        pattern: how ``codes`` streams are flattened: ``interleave`` or ``delay``.
        bos, eos: whether the document starts with ``<|bos|>`` / ends with ``<|eos|>``.
    """

    streams: tuple[str, ...]
    pattern: str = INTERLEAVE
    bos: bool = True
    eos: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "streams", (self.streams,) if isinstance(self.streams, str) else tuple(self.streams))
        if not self.streams or len(set(self.streams)) != len(self.streams):
            raise ValueError(f"streams must be distinct stream names, at least one. Found: {self.streams!r}")
        _check_pattern(self.pattern)


def sample_to_document(streams: Mapping[str, np.ndarray], vocab: VocabSpec, config: SequenceConfig) -> np.ndarray:
    """One sample's streams -> its LM document.

    Args:
        streams: stream name -> int16 [T] (units) or int16 [K, T] (codes).

    Returns:
        int32 [L]: ``<|bos|> <|stream:A|> A... <|stream:B|> B... <|eos|>``.

    Raises:
        ValueError: a stream missing, without ids, of the wrong shape, or with codes out of range.
    """
    parts = [np.array([vocab.bos_id], dtype=np.int64)] if config.bos else []
    for name in config.streams:
        sv = vocab.stream(name)
        if name not in streams:
            raise ValueError(f"sample has no stream {name!r}; it has: {', '.join(sorted(streams))}")
        ids = to_flat_ids(streams[name], sv)
        parts.append(np.array([sv.separator_id], dtype=np.int64))
        parts.append(ids[0] if sv.kind == "units" else flatten_codes(ids, config.pattern, vocab.empty_id))
    if config.eos:
        parts.append(np.array([vocab.eos_id], dtype=np.int64))
    return np.concatenate(parts).astype(np.int32)


def document_to_streams(document: np.ndarray, vocab: VocabSpec, config: SequenceConfig) -> dict[str, np.ndarray]:
    """An LM document -> its streams (int16 [T] units, int16 [K, T] codes); inverse of
    ``sample_to_document``.

    Raises:
        ValueError: the document does not have the layout ``config`` describes.
    """
    tokens = np.asarray(document, dtype=np.int64)
    if config.bos:
        if not tokens.size or tokens[0] != vocab.bos_id:
            raise ValueError("document does not start with <|bos|>")
        tokens = tokens[1:]
    if config.eos:
        if not tokens.size or tokens[-1] != vocab.eos_id:
            raise ValueError("document does not end with <|eos|>")
        tokens = tokens[:-1]
    svs = [vocab.stream(n) for n in config.streams]
    starts = []
    for sv in svs:
        where = np.flatnonzero(tokens == sv.separator_id)
        if len(where) != 1:
            raise ValueError(f"document holds {len(where)} {separator_token(sv.name)} separators; expected 1")
        starts.append(int(where[0]))
    if starts != sorted(starts) or (starts and starts[0] != 0):
        raise ValueError(f"document streams are not in the order {list(config.streams)}")
    out = {}
    for i, sv in enumerate(svs):
        end = starts[i + 1] if i + 1 < len(starts) else len(tokens)
        body = tokens[starts[i] + 1:end]
        if sv.kind == "units":
            out[sv.name] = from_flat_ids(body[None, :], sv)
        else:
            out[sv.name] = from_flat_ids(unflatten_codes(body, sv.num_codebooks, config.pattern), sv)
    return out


# ---------------------------------------------------------------------------- packing


@dataclasses.dataclass(frozen=True, eq=False)
class PackedRow:
    """One training row of ``context_len`` tokens.

    Attributes:
        tokens: int32 [L]; ``<|pad|>`` after the last document of the stream.
        document_ids: int64 [L]; the running number of each token's document, -1 on padding.
        positions: int32 [L]; position within the document's part in this row (0 where a
            document or the row starts).
    """

    tokens: np.ndarray
    document_ids: np.ndarray
    positions: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"tokens": self.tokens, "document_ids": self.document_ids, "positions": self.positions}


def pack_documents(documents: Iterable[np.ndarray], context_len: int, pad_id: int = 0,
                   split_documents: bool = True, first_document_id: int = 0) -> Iterator[PackedRow]:
    """Packs documents into rows of ``context_len`` tokens, in order.

    Args:
        documents: int [L_i] each.
        context_len: tokens per row.
        pad_id: the id that fills the last row.
        split_documents: True: a document that does not fit continues in the next row (no
            padding except at the very end). False: it starts a new row when it would fit
            there whole (the rest of the row is padding); longer ones are still split.
        first_document_id: the number of the first document.

    Yields:
        PackedRow per full row, then the padded last one.
    """
    if context_len < 1:
        raise ValueError(f"context_len must be >= 1. Found: {context_len}")
    tokens = np.full(context_len, pad_id, dtype=np.int32)
    doc_ids = np.full(context_len, -1, dtype=np.int64)
    positions = np.zeros(context_len, dtype=np.int32)
    fill = 0

    def flush() -> PackedRow:
        nonlocal tokens, doc_ids, positions, fill
        row = PackedRow(tokens, doc_ids, positions)
        tokens = np.full(context_len, pad_id, dtype=np.int32)
        doc_ids = np.full(context_len, -1, dtype=np.int64)
        positions = np.zeros(context_len, dtype=np.int32)
        fill = 0
        return row

    doc_id = first_document_id - 1
    for doc in documents:
        doc = np.asarray(doc)
        doc_id += 1
        if not split_documents and fill and len(doc) > context_len - fill and len(doc) <= context_len:
            yield flush()
        start = 0
        while start < len(doc):
            n = min(len(doc) - start, context_len - fill)
            tokens[fill:fill + n] = doc[start:start + n]
            doc_ids[fill:fill + n] = doc_id
            positions[fill:fill + n] = np.arange(n, dtype=np.int32)
            fill += n
            start += n
            if fill == context_len:
                yield flush()
    if fill:
        yield flush()


def unpack_rows(rows: Iterable[PackedRow]) -> list[np.ndarray]:
    """Packed rows -> the documents, in order; inverse of ``pack_documents``.

    Returns:
        int32 [L_i] per document (empty documents leave no trace in the rows and are not returned).
    """
    docs: list[list[np.ndarray]] = []
    last_id = None
    for row in rows:
        keep = row.document_ids >= 0
        ids = row.document_ids[keep]
        toks = row.tokens[keep]
        if not ids.size:
            continue
        cuts = np.flatnonzero(np.diff(ids)) + 1
        for part_ids, part in zip(np.split(ids, cuts), np.split(toks, cuts)):
            if part_ids[0] == last_id:
                docs[-1].append(part)
            else:
                docs.append([part])
                last_id = part_ids[0]
    return [np.concatenate(parts).astype(np.int32) for parts in docs]


def block_causal_mask(document_ids: np.ndarray) -> np.ndarray:
    """bool [..., L, L]: True where token i may attend to token j (j <= i, same document, not padding)."""
    d = np.asarray(document_ids)
    same = (d[..., :, None] == d[..., None, :]) & (d[..., :, None] >= 0)
    causal = np.tril(np.ones((d.shape[-1], d.shape[-1]), dtype=bool))
    return same & causal


def next_token_targets(tokens: np.ndarray, document_ids: np.ndarray, ignore_index: int = -100) -> np.ndarray:
    """int64 [..., L]: the token each position should predict (the next one of the same
    document), ``ignore_index`` at a document's last token and on padding."""
    tokens = np.asarray(tokens)
    d = np.asarray(document_ids)
    targets = np.full(tokens.shape, ignore_index, dtype=np.int64)
    same = (d[..., 1:] == d[..., :-1]) & (d[..., :-1] >= 0)
    targets[..., :-1] = np.where(same, tokens[..., 1:], ignore_index)
    return targets
