"""``audiotok inspect OUT``: a dataset's summary and one decoded sample.

    audiotok inspect OUT                 # the first sample
    audiotok inspect OUT --key KEY       # a given one (reads shards until it is found)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, TextIO

import numpy as np

from audiotok.transforms import card, dataset, lm, reader, storage


def summary_lines(output: str, index: Mapping[str, Any], vocab: lm.VocabSpec) -> list[str]:
    t = index.get("totals", {})
    lines = [
        f"dataset {output}",
        f"  {t.get('samples', 0)} samples, {t.get('audio_s', 0.0) / 60:.1f} min of audio, "
        f"{t.get('shards', 0)} shard(s), "
        f"{t.get('bytes', 0) / 2**20:.1f} MiB; {t.get('failures', 0)} failure(s)"
        + (" (" + ", ".join(f"{r}: {n}" for r, n in t.get("failures_by_reason", {}).items()) + ")"
           if t.get("failures") else ""),
        "  streams:",
    ]
    vectors = card.vector_shard_stats(dataset.shard_rows(output, index), index.get("streams", {}))
    if vectors:
        lines.insert(-1, f"  vector streams ({', '.join(vectors['streams'])}) in a shard set of their own "
                         f"({vectors['files']} vectors-*.tar, {vectors['bytes'] / 2**20:.1f} MiB)")
    for name, s in index.get("streams", {}).items():
        shape = {"codes": f"[{s.get('num_codebooks')}, T]", "units": "[T]", "vectors": f"[T, {s.get('dim')}]"}.get(
            s.get("kind"), "[T]")
        size = f", codebook_size {s['codebook_size']}" if s.get("codebook_size") else ""
        lines.append(f"    {name}: {s.get('kind')} {s.get('dtype')} {shape} at {s.get('frame_rate_hz', 0):g} Hz{size}, "
                     f"{t.get('tokens', {}).get(name, 0):,} tokens; tokenizer {s.get('tokenizer')} "
                     f"(fingerprint {s.get('fingerprint')})")
    lines.append(f"  LM vocabulary: {vocab.size} ids (fingerprint {vocab.fingerprint()}); specials "
                 + ", ".join(f"{i}={tok}" for tok, i in sorted(vocab.specials.items(), key=lambda x: x[1])))
    for s in vocab.streams:
        lines.append(f"    {s.name}: ids {s.offset}..{s.offset + s.size - 1} "
                     f"({s.num_codebooks} x {s.codebook_size}, separator {s.separator_id})")
    return lines


def _preview(values: np.ndarray, n: int) -> str:
    flat = values.reshape(-1)[:n]
    text = " ".join(str(v) for v in flat.tolist())
    return text + (" ..." if values.size > n else "")


def sample_lines(sample: reader.TokenSample, vocab: lm.VocabSpec, n_tokens: int = 24,
                 pattern: str = lm.INTERLEAVE) -> list[str]:
    m = sample.meta
    src = m.get("source", {})
    lines = [f"sample {sample.key} ({sample.url})",
             f"  source: {src.get('uri')} [{m.get('start_s')} s - {m.get('end_s')} s], {m.get('duration_s')} s"]
    for field in ("id", "speaker", "language", "text"):
        if m.get(field) is not None:
            lines.append(f"  {field}: {m[field]}")
    for name, a in sample.streams.items():
        kind = m.get("streams", {}).get(name, {}).get("kind")
        head = f"  {name}: {kind} {a.dtype} {list(a.shape)}"
        if kind == "vectors":
            f32 = a.astype(np.float32)
            lines.append(f"{head}, mean {f32.mean():.3f}, std {f32.std():.3f}, "
                         f"min {f32.min():.3f}, max {f32.max():.3f}")
            if a.shape[0]:
                first = " ".join(f"{v:.2f}" for v in f32[0, :8].tolist())
                lines.append(f"    frame 0: {first}{' ...' if a.shape[1] > 8 else ''}")
        elif kind == "codes" and a.ndim == 2:
            lines.append(head)
            for k in range(a.shape[0]):
                lines.append(f"    codebook {k}: {_preview(a[k], n_tokens)}")
        else:
            lines.append(f"{head}: {_preview(a, n_tokens)}")
    discrete = tuple(s.name for s in vocab.streams if s.name in sample.streams)
    if discrete:
        config = lm.SequenceConfig(discrete, pattern=pattern)
        doc = lm.sample_to_document(sample.streams, vocab, config)
        names = " ".join(vocab.token_name(int(i)) for i in doc[:n_tokens])
        lines.append(f"  LM document ({pattern}, streams {', '.join(discrete)}): {doc.size} tokens")
        lines.append(f"    ids:    {_preview(doc, n_tokens)}")
        lines.append(f"    tokens: {names}{' ...' if doc.size > n_tokens else ''}")
    return lines


def find_sample(output: str, index: Mapping[str, Any], key: str | None) -> reader.TokenSample | None:
    for sample in reader.read_samples(output, index=index):
        if key is None or sample.key == key:
            return sample
    return None


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiotok inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the dataset folder (holding index.json); any fsspec URL")
    parser.add_argument("--key", help="the sample to show (default: the first)")
    parser.add_argument("--tokens", type=int, default=24, help="tokens shown per stream (default 24)")
    parser.add_argument("--pattern", default=lm.INTERLEAVE, choices=lm.PATTERNS,
                        help="how codes are flattened in the LM document shown (default interleave)")
    args = parser.parse_args(argv)
    out = sys.stdout if out is None else out
    try:
        index = dataset.read_index(args.output)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"audiotok inspect: cannot read {args.output}/{dataset.INDEX_NAME}: {e}", file=sys.stderr)
        return 1
    vocab = (lm.read_vocab(args.output) if storage.exists(storage.join(args.output, lm.VOCAB_NAME))
             else lm.build_vocab(index.get("streams", {})))
    print("\n".join(summary_lines(args.output, index, vocab)), file=out)
    sample = find_sample(args.output, index, args.key)
    if sample is None:
        print(f"audiotok inspect: no sample {args.key!r}" if args.key else "audiotok inspect: the dataset is empty",
              file=sys.stderr)
        return 1 if args.key else 0
    print("\n".join(sample_lines(sample, vocab, args.tokens, args.pattern)), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
