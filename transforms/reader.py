"""Reading an audiotok dataset back: samples as arrays, and packed LM rows, on top of the stock
``webdataset`` pipeline.

The stages are webdataset's own (``SimpleShardList``, ``detshuffle``, ``split_by_node``,
``split_by_worker``, ``tar_file_expander``, ``group_by_keys``, ``shuffle``); only opening a
shard is ours, through ``audiotok.transforms.storage`` (fsspec: local paths, ``gs://``, ``s3://``, ...;
never ``pipe:``), instead of ``gopen``, which shells out to ``gsutil``/``curl``.

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


def _shard_url(output: str, row: Mapping[str, Any]) -> str:
    url = row["url"]
    return url if "://" in url or url.startswith("/") else storage.join(output, url)


def shard_urls(output: str, index: Mapping[str, Any] | None = None) -> list[str]:
    """The shards of a dataset, as URLs (relative index entries resolved against ``output``)."""
    return [_shard_url(output, row) for row in dataset.shard_rows(output, index)]


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


def open_shards(sources: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset stage: ``{"url": ...}`` -> the shard's tar members ``{"fname", "data", "__url__"}``,
    then the end-of-shard marker ``{}``. Opens through fsspec and closes each shard when done."""
    from webdataset.tariterators import tar_file_expander

    for source in sources:
        url = source["url"]
        with storage.open_input(url) as f:
            yield from tar_file_expander([{"url": url, "stream": f}])


def decode_sample(raw: Mapping[str, Any], streams: Sequence[str] | None = None) -> TokenSample:
    """A grouped webdataset sample (``json`` and ``<stream>.npy`` bytes) -> TokenSample.

    Args:
        raw: from ``group_by_keys``.
        streams: the streams to decode (default: all); the others are dropped.

    Raises:
        ShardFormatError: no metadata, a stream it declares missing, or an array that does not
            match its declared shape and dtype.
    """
    key, url = raw.get("__key__", ""), raw.get("__url__", "")
    if "json" not in raw:
        raise ShardFormatError("sample has no KEY.json", url, key)
    meta = json.loads(raw["json"])
    declared = meta.get("streams", {})
    wanted = list(declared) if streams is None else list(streams)
    arrays = {}
    for name in wanted:
        if name not in declared or f"{name}.npy" not in raw:
            raise ShardFormatError(f"sample has no stream {name!r}; it has: {', '.join(sorted(declared))}", url, key)
        array = np.load(io.BytesIO(raw[f"{name}.npy"]), allow_pickle=False)
        d = declared[name]
        declared_shape, declared_dtype = d.get("shape", list(array.shape)), d.get("dtype", str(array.dtype))
        if list(array.shape) != list(declared_shape) or str(array.dtype) != declared_dtype:
            raise ShardFormatError(f"stream {name!r} is {array.dtype}{list(array.shape)}; "
                                   f"KEY.json declares {d.get('dtype')}{d.get('shape')}", url, key)
        arrays[name] = array
    return TokenSample(key=key, url=url, meta=meta, streams=arrays)


def _stream_selector(streams: Sequence[str] | None) -> Callable[[str], bool] | None:
    if streams is None:
        return None
    wanted = {"json"} | {f"{s}.npy" for s in streams}
    return lambda fname: fname.split(".", 1)[-1] in wanted


def _select_members(members: Iterable[dict], keep: Callable[[str], bool] | None) -> Iterator[dict]:
    for m in members:
        if keep is None or not m or keep(m["fname"]):
            yield m


def _no_shards() -> Iterator[dict]:
    return iter(())


def sample_pipeline_stages(urls: Sequence[str], *, streams: Sequence[str] | None = None,
                           shuffle_shards: bool = False, seed: int = 0, split: bool = True,
                           shuffle_buffer: int = 0, excluded: Mapping[str, frozenset[str]] | None = None) -> list:
    """The webdataset stages that read ``urls`` into TokenSamples (see ``sample_dataset``);
    ``excluded``: from ``excluded_sources``."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys

    # webdataset's shard list refuses an empty list; a dataset whose inputs all failed has no shards.
    stages: list = [wds.SimpleShardList(list(urls)) if urls else _no_shards]
    if shuffle_shards:
        # Same seed and epoch on every node and worker: one permutation, then split.
        stages.append(wds.detshuffle(bufsize=max(len(urls), 1), initial=max(len(urls), 1), seed=seed))
    if split:
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [
        open_shards,
        functools.partial(_select_members, keep=_stream_selector(streams)),
        functools.partial(group_by_keys, lcase=False),  # stream names keep their case
        functools.partial(live_only, excluded=dict(excluded or {})),
        wds.map(functools.partial(decode_sample, streams=streams)),
    ]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed))
    return stages


def sample_dataset(output: str, *, streams: Sequence[str] | None = None, shuffle_shards: bool = False,
                   seed: int = 0, split: bool = True, shuffle_buffer: int = 0,
                   index: Mapping[str, Any] | None = None):
    """A ``webdataset.DataPipeline`` (a torch IterableDataset) of TokenSamples.

    Args:
        output: the dataset folder (holding ``index.json``), any fsspec URL.
        streams: streams to decode (default: all). Members of other streams are skipped.
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
        shard_urls(output, index), streams=streams, shuffle_shards=shuffle_shards, seed=seed, split=split,
        shuffle_buffer=shuffle_buffer, excluded=excluded_sources(output, index)))


def read_samples(output: str, *, streams: Sequence[str] | None = None, urls: Sequence[str] | None = None,
                 index: Mapping[str, Any] | None = None) -> Iterator[TokenSample]:
    """Every live sample of a dataset (or of its shards ``urls``), in shard order, in this process."""
    import webdataset as wds

    index = dataset.read_index(output) if index is None else index
    urls = shard_urls(output, index) if urls is None else list(urls)
    yield from wds.DataPipeline(sample_pipeline_stages(urls, streams=streams, split=False,
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
    stages = sample_pipeline_stages(shard_urls(output, index), streams=config.streams,
                                    shuffle_shards=shuffle_shards, seed=seed, split=split,
                                    shuffle_buffer=shuffle_buffer, excluded=excluded_sources(output, index))
    stages.append(functools.partial(pack_stage, vocab=vocab, config=config, context_len=context_len,
                                    split_documents=split_documents))
    return wds.DataPipeline(stages)
