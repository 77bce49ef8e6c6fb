"""Codes back to audio: ``audiotok decode SHARD KEY -o out.wav``.

Reads one sample from a shard, finds the codec that made its codes (the dataset's
``index.json`` records every tokenizer's config; the sample records each stream's weights),
loads that codec with the same weights, and writes what it decodes as a WAV file.

    audiotok decode out/shards/v000001/shard-000000-0000.tar us_0001-000000 -o us_0001.wav
    audiotok decode shard.tar KEY -o x.wav --tokenizer 'encodec-24k[model=/models/encodec]'

A plain function (no Beam): decoding one sample is a debugging and listening aid.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tarfile
from typing import Any, Mapping

import numpy as np

from audiotok.transforms import dataset, storage
from audiotok.transforms.tokenizers import base, registry
from audiotok.transforms.tokenizers.codecs import CodecTokenizer

logger = logging.getLogger(__name__)


class DecodeError(ValueError):
    """A sample that cannot be decoded; names the shard and key."""


def read_sample(shard_url: str, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, stream name -> array) of one sample of a WebDataset shard."""
    dataset.check_key(key)
    meta: dict[str, Any] | None = None
    arrays: dict[str, np.ndarray] = {}
    prefix = f"{key}."
    with storage.open_input(shard_url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            data = tar.extractfile(member).read()
            suffix = member.name[len(prefix):]
            if suffix == "json":
                meta = json.loads(data)
            elif suffix.endswith(".npy"):
                arrays[suffix[:-len(".npy")]] = np.load(io.BytesIO(data), allow_pickle=False)
    if meta is None:
        raise DecodeError(f"{shard_url}: no sample {key!r}")
    return meta, arrays


def default_index_url(shard_url: str) -> str:
    """``OUTPUT/index.json`` for a shard anywhere under ``OUTPUT/shards/`` (``shards/vN/shard-N.tar``);
    the shard's own folder when it is not under a ``shards`` folder."""
    parts = shard_url.rstrip("/").split("/")
    folder = "/".join(parts[:-1])
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == dataset.SHARDS_DIR:
            folder = "/".join(parts[:i])
            break
    return storage.join(folder, dataset.INDEX_NAME) if folder else dataset.INDEX_NAME


def codec_streams(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Tokenizer name -> {stream name: description} for the codec streams of a sample."""
    out: dict[str, dict[str, Any]] = {}
    for name, desc in meta.get("streams", {}).items():
        if desc.get("family") == base.CODEC:
            out.setdefault(desc["tokenizer"], {})[name] = desc
    return out


def tokenizer_for(meta: Mapping[str, Any], index: Mapping[str, Any] | None, choice: str | None,
                  where: str) -> CodecTokenizer:
    """The codec tokenizer that made a sample's codes, rebuilt from the index or from ``choice``.

    Args:
        meta: the sample's metadata.
        index: the dataset's index.json (None when unavailable).
        choice: a tokenizer name (to pick among several codecs) or a full spec (to rebuild it
            without the index, or with its weights read from elsewhere).
        where: shard and key, for messages.

    Raises:
        DecodeError: no codec streams, an ambiguous choice, or weights other than the ones the
            codes were made with.
    """
    codecs = codec_streams(meta)
    if not codecs:
        kinds = sorted({d.get("tokenizer", "?") for d in meta.get("streams", {}).values()})
        raise DecodeError(f"{where}: no codec streams to decode (streams come from {', '.join(kinds) or 'nothing'}); "
                          "only codec tokens turn back into audio")
    name = registry.parse_spec(choice)[0] if choice else None
    if name is None:
        if len(codecs) > 1:
            raise DecodeError(f"{where}: several codecs ({', '.join(sorted(codecs))}); pick one with --tokenizer")
        name = next(iter(codecs))
    if name not in codecs:
        raise DecodeError(f"{where}: no {name!r} streams; codec streams come from {', '.join(sorted(codecs))}")
    recorded = next(iter(codecs[name].values()))
    if choice and "[" in choice:
        tok = registry.create(choice)
    else:
        described = _described(index, recorded["fingerprint"]) if index else None
        if described is None:
            raise DecodeError(
                f"{where}: the dataset index with {name}'s config is not available; pass --index URL, or "
                f"--tokenizer '{name}[model=...,...]' with the options the codes were made with")
        tok = registry.create(name, **described["config"])
    if not isinstance(tok, CodecTokenizer):
        raise DecodeError(f"{where}: {tok.name} is not a codec")
    if tok.weights_identity() != recorded.get("weights"):
        raise DecodeError(
            f"{where}: the codes were made with weights {recorded.get('weights')}; {tok.config.model} "
            f"holds {tok.weights_identity()}. Point --tokenizer at the original weights")
    return tok


def _described(index: Mapping[str, Any], fingerprint: str) -> dict[str, Any] | None:
    return next((t for t in index.get("tokenizers", []) if t.get("fingerprint") == fingerprint), None)


def decode_sample(shard_url: str, key: str, choice: str | None = None, index_url: str | None = None,
                  device: str = "cpu") -> tuple[np.ndarray, int]:
    """Decodes one sample's codec streams.

    Returns:
        (float32 [channels, samples], sample rate).
    """
    meta, arrays = read_sample(shard_url, key)
    index_url = index_url or default_index_url(shard_url)
    index = json.loads(storage.read_bytes(index_url)) if storage.exists(index_url) else None
    tok = tokenizer_for(meta, index, choice, f"{shard_url} {key}")
    tok.load(device)
    streams = {s.name: arrays[s.name] for s in tok.streams if s.name in arrays}
    num_samples = int(round(float(meta.get("duration_s", 0)) * tok.sample_rate)) or None
    return tok.decode(streams, num_samples=num_samples), tok.sample_rate


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV of float32 [channels, samples] audio (clipped to [-1, 1])."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.clip(audio, -1.0, 1.0).T, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiotok decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("shard", help="shard URL (local path, gs://, s3://, ...)")
    parser.add_argument("key", help="sample key")
    parser.add_argument("-o", "--output", required=True, help="WAV file to write (any fsspec URL)")
    parser.add_argument("--tokenizer", default=None,
                        help="codec name when the sample has several; or a full spec 'name[model=...,...]' "
                             "to rebuild it without the index")
    parser.add_argument("--index", default=None, help="the dataset's index.json (default: next to shards/)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        audio, rate = decode_sample(args.shard, args.key, args.tokenizer, args.index, args.device)
    except (DecodeError, ValueError, OSError) as e:
        print(f"audiotok decode: {e}", file=sys.stderr)
        return 1
    storage.write_bytes(storage.check_url(args.output), wav_bytes(audio, rate))
    print(f"wrote {args.output}: {audio.shape[-1] / rate:.2f} s, {rate} Hz, {audio.shape[0]} channel(s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
