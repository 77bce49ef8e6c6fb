"""The README's tokenizer table, computed from the tokenizers' own metadata.

    python -m pipelines.tokenizer_table > table.md

One row per stream of every registered tokenizer at its default options (no weights are
loaded): family, sample rate, frames per second, tokens per second, and the bytes an hour of
audio takes in the shards' ``.npy`` payloads (headers excluded).
"""

from __future__ import annotations

import sys
from typing import Any

from transforms.tokenizers import base, registry

_DTYPE_BYTES = {"int16": 2, "float16": 2, "float32": 4, "int32": 4}


def stream_rates(spec: base.StreamSpec) -> dict[str, float]:
    """Frames, tokens and bytes per second of one stream.

    Tokens count as the shards' index counts them: K per frame for codes, one per frame for
    units, durations and vectors. Run-length deduplicated units are at most these figures.
    """
    itemsize = _DTYPE_BYTES[spec.dtype]
    values = spec.shape(1)  # values per frame: (K, 1), (1,) or (1, D)
    per_frame = 1
    for n in values:
        per_frame *= n
    tokens = spec.frame_rate_hz * ((spec.num_codebooks or 1) if spec.kind == base.CODES else 1)
    return {"frames_per_s": spec.frame_rate_hz, "tokens_per_s": tokens,
            "bytes_per_s": spec.frame_rate_hz * per_frame * itemsize}


def tokenizer_rows() -> list[dict[str, Any]]:
    rows = []
    for name, entry in registry.entries().items():
        tok = entry.factory(entry.config_class.from_dict(dict(entry.defaults)))
        for spec in tok.streams:
            rates = stream_rates(spec)
            rows.append({
                "tokenizer": name, "family": tok.family, "sample_rate": tok.sample_rate, "stream": spec.name,
                "kind": spec.kind, "shape": _shape(spec), **rates, "bytes_per_hour": rates["bytes_per_s"] * 3600,
            })
    return rows


def _shape(spec: base.StreamSpec) -> str:
    if spec.kind == base.CODES:
        return f"{spec.dtype} [{spec.num_codebooks}, T] of {spec.codebook_size}"
    if spec.kind == base.VECTORS:
        return f"{spec.dtype} [T, {spec.dim}]"
    if spec.codebook_size:
        return f"{spec.dtype} [T] of {spec.codebook_size}"
    return f"{spec.dtype} [T]"


def _number(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.4g}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def tokenizer_table_markdown() -> str:
    """A Markdown table: one row per stream of every registered tokenizer (default options)."""
    header = ["tokenizer", "family", "sample rate", "stream", "array", "frames/s", "tokens/s", "bytes/hour"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 5 + ["---:"] * 3) + "|"]
    for r in tokenizer_rows():
        lines.append("| " + " | ".join([
            f"`{r['tokenizer']}`", r["family"], f"{r['sample_rate'] / 1000:g} kHz", f"`{r['stream']}`", r["shape"],
            _number(r["frames_per_s"]), _number(r["tokens_per_s"]), _size(r["bytes_per_hour"]),
        ]) + " |")
    lines.append("")
    lines.append("Defaults shown; `num_codebooks`, `k`, `layer`, ... change them "
                 "(`audiotok tokenize --tokenizer help`). Bytes/hour: `.npy` payloads, before tar and metadata; "
                 "deduplicated units take less.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    print(tokenizer_table_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
