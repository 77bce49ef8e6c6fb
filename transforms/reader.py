"""Reading an audiotok dataset back: samples as arrays, and packed LM rows, on top of the stock
``webdataset`` pipeline.

The stages are webdataset's own (``SimpleShardList``, ``detshuffle``, ``split_by_node``,
``split_by_worker``, ``shuffle``) except reading a shard, which is ours: it opens the shard through
``audiotok.transforms.storage`` (fsspec: local paths, ``gs://``, ``s3://``, ...; never ``pipe:``,
unlike ``gopen``, which shells out to ``gsutil``/``curl``), and reads only the members a trainer
asks for. The others (a log-mel stream takes 160 times the bytes of a unit stream) are seeked
over, never read, copied or decoded; packed LM rows do not even read ``KEY.json``. Arrays are
made on top of the bytes read (no copy). The samples are grouped as webdataset's
``group_by_keys`` groups them. A dataset written with ``--separate-vectors`` keeps its vector
streams in a shard set of their own: their tars are opened only when a vector stream is asked
for (from a bucket, seeking does not save the download: the read-ahead block spans many
members), and joined to the shard's samples by key.

    from audiotok.transforms import lm, reader
    ds = reader.sample_dataset("gs://bucket/out")            # a torch IterableDataset
    for s in ds: s.key, s.meta, s.streams["mfcc-kmeans"]     # int16 [T]

    rows = reader.lm_dataset("gs://bucket/out", lm.SequenceConfig(("units", "codes")), context_len=2048)
    loader = torch.utils.data.DataLoader(rows, batch_size=8, num_workers=4)
    # batches of {"tokens", "document_ids", "positions", "targets"} tensors [8, 2048]

Across nodes and workers: the shard list is shuffled identically everywhere (seed + epoch),
then split by node (``RANK``/``WORLD_SIZE`` or torch.distributed), then by DataLoader worker,
so each shard is read by exactly one worker of one node per epoch. Give a dataset at least
``nodes x workers`` shards, or some workers get none; use ``.with_epoch(n)`` on the result
for equal-length epochs across nodes.

Samples that an incremental refresh superseded (``excluded_sources`` of a shard row) are
skipped here; readers that take the shards as they are (Hugging Face's ``webdataset``
builder) see them too, unless the dataset is compacted first.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from audiotok.transforms import dataset, lm, storage


class ShardFormatError(ValueError):
    """A sample that does not match what audiotok writes, with where it was found."""

    def __init__(self, message: str, url: str = "", key: str = ""):
        where = ", ".join(p for p in (f"shard {url}" if url else "", f"key {key}" if key else "") if p)
        super().__init__(f"{message} ({where})" if where else message)
        self.url = url
        self.key = key


@dataclasses.dataclass(frozen=True, eq=False)
class TokenSample:
    """One sample read back.

    Attributes:
        key: the sample key.
        url: the shard it came from.
        meta: its ``KEY.json`` (source, start_s, end_s, duration_s, streams' descriptions...).
        streams: stream name -> array (int16 [T] units, int16 [K, T] codes, float16 [T, D] vectors).
    """

    key: str
    url: str
    meta: Mapping[str, Any]
    streams: Mapping[str, np.ndarray]


def _resolve(output: str, url: str) -> str:
    return url if "://" in url or url.startswith("/") else storage.join(output, url)


def _shard_url(output: str, row: Mapping[str, Any]) -> str:
    return _resolve(output, row["url"])


def shard_urls(output: str, index: Mapping[str, Any] | None = None, *, vectors: bool = False) -> list[str]:
    """The shards of a dataset, as URLs (relative index entries resolved against ``output``):
    what a stock WebDataset reader takes. A dataset written with ``--separate-vectors`` has two
    shard sets: the discrete streams (with ``KEY.json``; the default) and, with ``vectors``,
    the vector streams (the rows that have them)."""
    rows = dataset.shard_rows(output, index)
    if vectors:
        return [_resolve(output, row["vectors_url"]) for row in rows if row.get("vectors_url")]
    return [_shard_url(output, row) for row in rows]


def shard_sources(output: str, index: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    """What ``sample_pipeline_stages`` reads: per shard ``{"url"}``, and ``{"vectors_url"}``
    where the shard's vector streams are in the vector set."""
    return [{"url": _shard_url(output, row),
             **({"vectors_url": _resolve(output, row["vectors_url"])} if row.get("vectors_url") else {})}
            for row in dataset.shard_rows(output, index)]


def excluded_sources(output: str, index: Mapping[str, Any] | None = None) -> dict[str, frozenset[str]]:
    """Shard URL -> source hashes whose samples are no longer live (inputs that changed or
    disappeared since the shard was written; see ``audiotok.transforms.incremental``). Shards with
    none are left out."""
    return {_shard_url(output, row): frozenset(row["excluded_sources"])
            for row in dataset.shard_rows(output, index) if row.get("excluded_sources")}


def live_only(samples: Iterable[Mapping[str, Any]],
              excluded: Mapping[str, frozenset[str]]) -> Iterator[Mapping[str, Any]]:
    """webdataset stage: drops grouped samples of excluded sources (``dataset.is_live``)."""
    if not excluded:
        yield from samples
        return
    for sample in samples:
        rows = excluded.get(sample.get("__url__", ""))
        if not rows or dataset.is_live(sample["__key__"], {"excluded_sources": rows}):
            yield sample


_BLOCK = 512


def _octal(field: bytes, url: str) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256, for members of 8 GiB and more
        value = int.from_bytes(field[1:], "big")
        return -value if field[:1] == b"\xff" else value
    text = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardFormatError(f"not a tar archive (bad number {bytes(field)!r} in a member header)", url) from None


def _header_ok(block: bytes) -> bool:
    stored = block[148:156]
    text = stored.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return False
    unsigned = sum(block[:148]) + sum(block[156:]) + 8 * 32  # the checksum field counts as spaces
    try:
        return int(text, 8) == unsigned
    except ValueError:
        return False


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (``LEN path=VALUE\\n`` records)."""
    pos, path = 0, None
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8")
        pos += length
    return path


def tar_members(f, url: str, keep: Callable[[str], bool] | None = None) -> Iterator[tuple[str, bytearray | None]]:
    """The regular-file members of one tar archive, in order: (name, data).

    Members that ``keep`` rejects are not read: they come out as (name, None) and their bytes
    are seeked over when ``f`` can seek (a local file, an fsspec file), else read and dropped.
    Data comes as a ``bytearray``, so arrays made on top of it are writable without a copy.
    Reads what Python's ``tarfile`` writes (ustar, pax and GNU long names); other member types
    (folders, links) are skipped, as webdataset skips them.

    Raises:
        ShardFormatError: a corrupt header or a member cut short.
    """
    seekable = bool(getattr(f, "seekable", lambda: False)())
    next_name: str | None = None
    while True:
        at = f.tell() if seekable else 0
        block = f.read(_BLOCK)
        if len(block) < _BLOCK:
            if block:
                raise ShardFormatError("tar archive cut short inside a member header", url)
            if seekable and f.seek(0, 2) < at:  # a seek went past the end: the last member is cut short
                raise ShardFormatError("tar archive cut short inside a member", url)
            return  # like tarfile: an archive may end without its two zero blocks
        if block.count(0) == _BLOCK:
            return
        if not _header_ok(block):
            raise ShardFormatError("not a tar archive (member header checksum mismatch)", url)
        size = _octal(block[124:136], url)
        kind = block[156:157]
        padded = size + (-size % _BLOCK)
        if kind in (b"x", b"L"):
            meta = f.read(padded)[:size]
            if len(meta) < size:
                raise ShardFormatError("tar archive cut short inside a member", url)
            next_name = _pax_path(meta) if kind == b"x" else meta.rstrip(b"\0").decode("utf-8")
            continue
        if next_name is not None:
            name, next_name = next_name, None
        else:
            name = block[0:100].split(b"\0", 1)[0].decode("utf-8")
            if block[257:262] == b"ustar" and block[345] != 0:
                name = block[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        if kind not in (b"0", b"\0", b"7") or (keep is not None and not keep(name)):
            if seekable:
                f.seek(padded, 1)
            else:
                while padded:
                    chunk = f.read(min(padded, 1 << 20))
                    if not chunk:
                        raise ShardFormatError(f"tar archive cut short inside member {name}", url)
                    padded -= len(chunk)
            if kind in (b"0", b"\0", b"7"):
                yield name, None
            continue
        data = bytearray(size)
        if f.readinto(data) != size:
            raise ShardFormatError(f"tar archive cut short inside member {name}", url)
        if padded != size:
            if seekable:
                f.seek(padded - size, 1)
            elif len(f.read(padded - size)) < padded - size:
                raise ShardFormatError(f"tar archive cut short inside member {name}", url)
        yield name, data


def shard_samples(sources: Iterable[Mapping[str, Any]], wanted: frozenset[str] | None = None,
                  vectors: frozenset[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """webdataset stage: ``{"url", "vectors_url"?}`` -> the shard's samples, grouped as webdataset's
    ``group_by_keys`` groups them: ``{"__key__", "__url__", EXT: data, ...}``.

    A member's key is its name up to the first dot after the last slash, the rest its
    extension (case kept). Members whose extension is not in ``wanted`` (None: all) are not
    read and appear with ``None`` as data, so a sample is never lost for lack of a wanted
    member. Where a shard has a ``vectors_url`` (the streams ``vectors`` in a shard set of their
    own), that tar is opened only when a vector stream is wanted, the shard itself only when
    something else is, and their samples are joined by key. ``__url__`` is always the shard's
    ``url``. Opens through fsspec and closes each shard when done.

    Raises:
        ShardFormatError: a corrupt shard, one extension twice in a sample, or a vector shard
            whose samples are not those of its shard, in the same order.
    """
    vector_ext = frozenset(f"{v}.npy" for v in vectors)
    for source in sources:
        url, vurl = source["url"], source.get("vectors_url")
        need_vectors = bool(vurl) and (wanted is None or bool(wanted & vector_ext))
        need_shard = not vurl or wanted is None or bool(wanted - vector_ext)
        if need_shard and need_vectors:
            yield from _joined(_grouped(url, url, wanted), _grouped(vurl, url, wanted), vurl)
        elif need_vectors:
            yield from _grouped(vurl, url, wanted)
        else:
            yield from _grouped(url, url, wanted)


def _grouped(url: str, label: str, wanted: frozenset[str] | None) -> Iterator[dict[str, Any]]:
    """One tar's samples, ``__url__`` set to ``label``."""
    keep = None if wanted is None else functools.partial(_keep_member, wanted=wanted)
    current: dict[str, Any] | None = None
    with storage.open_input(url) as f:
        for name, data in tar_members(f, url, keep):
            dot = name.find(".", name.rfind("/") + 1)
            if dot < 0:
                continue  # webdataset drops names without an extension too
            key, ext = name[:dot], name[dot + 1:]
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": label}
            elif ext in current:
                raise ShardFormatError(f"member {name} appears twice", url, key)
            current[ext] = data
    if current is not None:
        yield current


def _joined(samples: Iterator[dict[str, Any]], vector_samples: Iterator[dict[str, Any]],
            vectors_url: str) -> Iterator[dict[str, Any]]:
    """A shard's samples with the members of its vector shard added (same keys, same order;
    a sample without vector streams has no entry there)."""
    pending = next(vector_samples, None)
    for sample in samples:
        if pending is not None and pending["__key__"] == sample["__key__"]:
            for ext, data in pending.items():
                if ext.startswith("__"):
                    continue
                if ext in sample:
                    raise ShardFormatError(f"member {sample['__key__']}.{ext} is in both shard sets",
                                           vectors_url, sample["__key__"])
                sample[ext] = data
            pending = next(vector_samples, None)
        yield sample
    if pending is not None:
        raise ShardFormatError("the vector shard holds a sample its shard does not hold, or not in the same order",
                               vectors_url, pending["__key__"])


def _keep_member(name: str, wanted: frozenset[str]) -> bool:
    dot = name.find(".", name.rfind("/") + 1)
    return dot >= 0 and name[dot + 1:] in wanted


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER = re.compile(r"\{'descr': '([<|>]?[a-zA-Z]\d*)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \}\s*$")


def npy_array(data: bytes | bytearray) -> np.ndarray:
    """An ``.npy`` payload -> its array, without a copy where the header is the plain kind
    ``np.save`` writes (C order, a simple dtype); anything else goes through ``np.load``."""
    if data[:6] == _NPY_MAGIC and data[6] == 1:
        header_len = int.from_bytes(data[8:10], "little")
        match = _NPY_HEADER.match(bytes(data[10:10 + header_len]).decode("latin-1"))
        if match:
            dtype = np.dtype(match.group(1))
            shape = tuple(int(d) for d in match.group(2).replace(" ", "").split(",") if d)
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            offset = 10 + header_len
            if len(data) - offset == count * dtype.itemsize and not dtype.hasobject:
                return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    return np.load(io.BytesIO(bytes(data)), allow_pickle=False)


def decode_sample(raw: Mapping[str, Any], streams: Sequence[str] | None = None, meta: bool = True) -> TokenSample:
    """A grouped sample (``json`` and ``<stream>.npy`` bytes) -> TokenSample.

    Args:
        raw: from ``shard_samples`` (or webdataset's ``group_by_keys``).
        streams: the streams to decode (default: all); the others are dropped.
        meta: parse ``KEY.json`` and check each array against the shape and dtype it
            declares. Without it (``streams`` must be given) ``TokenSample.meta`` is empty and
            the arrays are taken as their ``.npy`` headers describe them.

    Raises:
        ShardFormatError: no metadata, a stream missing, or an array that does not match
            its declared shape and dtype.
    """
    key, url = raw.get("__key__", ""), raw.get("__url__", "")
    if not meta:
        if streams is None:
            raise ValueError("decode_sample: give the streams to read when not reading KEY.json")
        arrays = {}
        for name in streams:
            data = raw.get(f"{name}.npy")
            if data is None:
                has = sorted(e[:-4] for e in raw if e.endswith(".npy"))
                raise ShardFormatError(f"sample has no stream {name!r}; it has: {', '.join(has)}", url, key)
            arrays[name] = npy_array(data)
        return TokenSample(key=key, url=url, meta={}, streams=arrays)
    if raw.get("json") is None:
        raise ShardFormatError("sample has no KEY.json", url, key)
    info = json.loads(raw["json"])
    declared = info.get("streams", {})
    wanted = list(declared) if streams is None else list(streams)
    arrays = {}
    for name in wanted:
        if name not in declared:
            raise ShardFormatError(f"sample has no stream {name!r}; it has: {', '.join(sorted(declared))}", url, key)
        if raw.get(f"{name}.npy") is None:
            raise ShardFormatError(f"KEY.json declares stream {name!r}; the sample has no {name}.npy", url, key)
        array = npy_array(raw[f"{name}.npy"])
        d = declared[name]
        declared_shape, declared_dtype = d.get("shape", list(array.shape)), d.get("dtype", str(array.dtype))
        if list(array.shape) != list(declared_shape) or str(array.dtype) != declared_dtype:
            raise ShardFormatError(f"stream {name!r} is {array.dtype}{list(array.shape)}; "
                                   f"KEY.json declares {d.get('dtype')}{d.get('shape')}", url, key)
        arrays[name] = array
    return TokenSample(key=key, url=url, meta=info, streams=arrays)


def _wanted_members(streams: Sequence[str] | None, meta: bool) -> frozenset[str] | None:
    if streams is None:
        return None
    return frozenset(({"json"} if meta else set()) | {f"{s}.npy" for s in streams})


def sample_pipeline_stages(sources: Sequence[str | Mapping[str, str]], *, streams: Sequence[str] | None = None,
                           meta: bool = True, vectors: Iterable[str] = (), shuffle_shards: bool = False,
                           seed: int = 0, split: bool = True, shuffle_buffer: int = 0,
                           excluded: Mapping[str, frozenset[str]] | None = None) -> list:
    """The webdataset stages that read shards into TokenSamples (see ``sample_dataset``).

    Args:
        sources: shard URLs, or ``shard_sources`` entries (a shard with its vector shard).
        vectors: the streams that the ``vectors_url`` tars hold (``dataset.vector_streams``).
        excluded: from ``excluded_sources``.
    """
    import webdataset as wds

    if not meta and streams is None:
        raise ValueError("give the streams to read when not reading KEY.json (meta=False)")
    shards = [{"url": s} if isinstance(s, str) else dict(s) for s in sources]
    # A list is a source webdataset iterates once per epoch (its shard list class takes URLs only).
    stages: list = [shards]
    if shuffle_shards:
        # Same seed and epoch on every node and worker: one permutation, then split.
        stages.append(wds.detshuffle(bufsize=max(len(shards), 1), initial=max(len(shards), 1), seed=seed))
    if split:
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [
        functools.partial(shard_samples, wanted=_wanted_members(streams, meta), vectors=frozenset(vectors)),
        functools.partial(live_only, excluded=dict(excluded or {})),
        wds.map(functools.partial(decode_sample, streams=streams, meta=meta)),
    ]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed))
    return stages


def sample_dataset(output: str, *, streams: Sequence[str] | None = None, meta: bool = True,
                   shuffle_shards: bool = False, seed: int = 0, split: bool = True, shuffle_buffer: int = 0,
                   index: Mapping[str, Any] | None = None):
    """A ``webdataset.DataPipeline`` (a torch IterableDataset) of TokenSamples.

    Args:
        output: the dataset folder (holding ``index.json``), any fsspec URL.
        streams: streams to decode (default: all). Members of other streams are not read.
        meta: read ``KEY.json`` into ``TokenSample.meta`` and check the arrays against it;
            False (with ``streams``) reads the stream members alone, the fastest way.
        shuffle_shards: shuffle the shard order (deterministically: ``seed`` + epoch).
        seed: for the shard and sample shuffles.
        split: split shards by node and by DataLoader worker (turn off to read everything
            in one process whatever the environment says).
        shuffle_buffer: samples in the shuffle buffer (0: no sample shuffle).
        index: the index, when already read.
    """
    import webdataset as wds

    index = dataset.read_index(output) if index is None else index
    return wds.DataPipeline(sample_pipeline_stages(
        shard_sources(output, index), streams=streams, meta=meta,
        vectors=dataset.vector_streams(index.get("streams", {})), shuffle_shards=shuffle_shards, seed=seed,
        split=split, shuffle_buffer=shuffle_buffer, excluded=excluded_sources(output, index)))


def read_samples(output: str, *, streams: Sequence[str] | None = None, urls: Sequence[str] | None = None,
                 index: Mapping[str, Any] | None = None) -> Iterator[TokenSample]:
    """Every live sample of a dataset (or of its shards ``urls``, from ``shard_urls``), in
    shard order, in this process."""
    import webdataset as wds

    index = dataset.read_index(output) if index is None else index
    sources = shard_sources(output, index)
    if urls is not None:
        by_url = {s["url"]: s for s in sources}
        sources = [by_url.get(u, {"url": u}) for u in urls]
    yield from wds.DataPipeline(sample_pipeline_stages(sources, streams=streams, split=False,
                                                       vectors=dataset.vector_streams(index.get("streams", {})),
                                                       excluded=excluded_sources(output, index)))


def _documents(samples: Iterable[TokenSample], vocab: lm.VocabSpec, config: lm.SequenceConfig) -> Iterator[np.ndarray]:
    for s in samples:
        try:
            yield lm.sample_to_document(s.streams, vocab, config)
        except ValueError as e:
            raise ShardFormatError(str(e), s.url, s.key) from e


def pack_stage(samples: Iterable[TokenSample], vocab: lm.VocabSpec, config: lm.SequenceConfig, context_len: int,
               split_documents: bool = True, ignore_index: int = -100) -> Iterator[dict[str, np.ndarray]]:
    """webdataset stage: TokenSamples -> packed rows as dicts of numpy arrays [context_len]:
    ``tokens`` (int64), ``document_ids`` (int64), ``positions`` (int64), ``targets`` (int64,
    the next token of the same document, ``ignore_index`` elsewhere)."""
    for row in lm.pack_documents(_documents(samples, vocab, config), context_len, vocab.pad_id, split_documents):
        yield {
            "tokens": row.tokens.astype(np.int64),
            "document_ids": row.document_ids,
            "positions": row.positions.astype(np.int64),
            "targets": lm.next_token_targets(row.tokens, row.document_ids, ignore_index),
        }


def lm_dataset(output: str, config: lm.SequenceConfig, context_len: int, *, vocab: lm.VocabSpec | None = None,
               split_documents: bool = True, shuffle_shards: bool = False, seed: int = 0, split: bool = True,
               shuffle_buffer: int = 0, index: Mapping[str, Any] | None = None):
    """A ``webdataset.DataPipeline`` of packed LM rows (see ``pack_stage``), ready for a
    DataLoader (the default collate stacks the rows into [batch, context_len] tensors).

    Each worker packs the samples of its own shards: ``document_ids`` are unique within a
    worker's rows, which is all attention needs.

    Args:
        output: the dataset folder.
        config: which streams make a document, and how codes are flattened.
        context_len: tokens per row.
        vocab: the id layout (default: ``OUTPUT/vocab.json``, else built from the index).
        split_documents, shuffle_shards, seed, split, shuffle_buffer: see ``pack_documents``
            and ``sample_dataset``.
    """
    import webdataset as wds

    index = dataset.read_index(output) if index is None else index
    if vocab is None:
        vocab = lm.read_vocab(output) if storage.exists(storage.join(output, lm.VOCAB_NAME)) \
            else lm.build_vocab(index["streams"])
    for name in config.streams:
        vocab.stream(name)  # unknown or continuous streams fail here, not in a worker
    stages = sample_pipeline_stages(shard_sources(output, index), streams=config.streams, meta=False,
                                    vectors=dataset.vector_streams(index.get("streams", {})),
                                    shuffle_shards=shuffle_shards, seed=seed, split=split,
                                    shuffle_buffer=shuffle_buffer, excluded=excluded_sources(output, index))
    stages.append(functools.partial(pack_stage, vocab=vocab, config=config, context_len=context_len,
                                    split_documents=split_documents))
    return wds.DataPipeline(stages)
