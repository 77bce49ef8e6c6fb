"""The dataset card: ``OUT/README.md``, ``OUT/stats.json`` and ``OUT/card/*.png``.

``dataset_stats`` is the pure core (index + samples -> one JSON-able dict); ``render_plots``
turns the stats into PNGs (matplotlib, Agg backend), ``render_readme`` into markdown, and
``write_card`` does all three for a dataset folder.

What counts as a *source*: the first folder below the input root, the deepest folder that
holds every input file (``corpus/en/a/x.wav`` and ``corpus/en/b/y.wav`` -> sources ``a`` and
``b``); files directly in the root count as ``(root)``. When samples carry a manifest
``speaker``, the card also breaks hours down by speaker.

Token counts, hours, sizes and failures come from ``index.json`` and are exact. Per-sample
statistics (sources, durations, codebook usage) read the shards; with ``max_shards`` they are
computed from that many evenly spaced shards, and the card says so.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from audiotok.transforms import dataset, lm, storage

logger = logging.getLogger(__name__)

README_NAME = "README.md"
STATS_NAME = "stats.json"
PLOTS_DIR = "card"
STATS_FORMAT = "audiotok-card-stats"
STATS_VERSION = 1
ROOT_SOURCE = "(root)"
# Dead-code lists in stats.json stop here (the count is always complete).
MAX_LISTED_DEAD_CODES = 256
DURATION_BINS = 30
# Shards a tokenize run reads for its card's per-sample statistics: the card must not cost
# as much as the run on a large dataset (``audiotok card OUT`` reads them all).
RUN_MAX_SHARDS = 64


# ---------------------------------------------------------------------------- sources


def common_root(uris: Iterable[str]) -> list[str]:
    """Path components of the deepest folder holding every URI."""
    root: list[str] | None = None
    for uri in uris:
        parts = uri.split("/")[:-1]
        if root is None:
            root = parts
            continue
        n = 0
        while n < min(len(root), len(parts)) and root[n] == parts[n]:
            n += 1
        root = root[:n]
    return root or []


def source_of(uri: str, root: Sequence[str]) -> str:
    """The source of a file: its first folder below ``root`` (``(root)`` for files in it)."""
    parts = uri.split("/")
    below = parts[len(root):]
    return below[0] if len(below) > 1 else ROOT_SOURCE


# ---------------------------------------------------------------------------- stats


@dataclasses.dataclass
class _CodebookCounter:
    size: int
    counts: np.ndarray
    out_of_range: int = 0

    @classmethod
    def new(cls, num_codebooks: int, size: int) -> "_CodebookCounter":
        return cls(size=size, counts=np.zeros((num_codebooks, size), dtype=np.int64))

    def add(self, codes: np.ndarray) -> None:
        grid = np.asarray(codes, dtype=np.int64).reshape(self.counts.shape[0], -1)
        ok = (grid >= 0) & (grid < self.size)
        self.out_of_range += int((~ok).sum())
        for k in range(grid.shape[0]):
            self.counts[k] += np.bincount(grid[k][ok[k]], minlength=self.size)


def codebook_usage(counts: np.ndarray) -> dict[str, Any]:
    """Usage of one codebook from its code counts (int [N]).

    Returns:
        used / dead code counts, entropy in bits (and its maximum log2 N), perplexity
        (2 ** entropy), the ten most frequent codes, and the dead codes (first
        ``MAX_LISTED_DEAD_CODES``).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    size = counts.size
    dead = np.flatnonzero(counts == 0)
    if total:
        p = counts[counts > 0] / total
        entropy = float(-(p * np.log2(p)).sum())
    else:
        entropy = 0.0
    top = np.argsort(-counts, kind="stable")[:10]
    return {
        "size": size,
        "tokens": total,
        "used": int(size - dead.size),
        "dead": int(dead.size),
        "dead_fraction": round(dead.size / size, 6) if size else 0.0,
        "entropy_bits": round(entropy, 6),
        "max_entropy_bits": round(math.log2(size), 6) if size else 0.0,
        "normalized_entropy": round(entropy / math.log2(size), 6) if size > 1 else 0.0,
        "perplexity": round(2.0 ** entropy, 3),
        "top_codes": [[int(c), int(counts[c])] for c in top if counts[c] > 0],
        "dead_codes": [int(c) for c in dead[:MAX_LISTED_DEAD_CODES]],
    }


def _quantile(sorted_values: np.ndarray, q: float) -> float:
    return float(np.quantile(sorted_values, q)) if sorted_values.size else 0.0


def _group_rows(groups: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    return {name: {"samples": len(v), "audio_s": round(sum(v), 3), "hours": round(sum(v) / 3600, 6)}
            for name, v in sorted(groups.items(), key=lambda kv: (-sum(kv[1]), kv[0]))}


def dataset_stats(index: Mapping[str, Any], samples: Iterable[Any],
                  shards_read: int | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Everything the card shows.

    Args:
        index: the dataset's ``index.json``.
        samples: objects with ``meta`` (KEY.json) and ``streams`` (the discrete streams' arrays),
            e.g. ``reader.TokenSample``; vectors may be left out.
        shards_read: how many shards ``samples`` come from (default: all of them).

    Returns:
        (stats: one JSON-able dict, usage: discrete stream name -> int64 [K, N] code counts).
    """
    specs = index.get("streams", {})
    totals = index.get("totals", {})
    counters = {name: _CodebookCounter.new(int(d.get("num_codebooks") or 1) if d["kind"] == "codes" else 1,
                                           int(d["codebook_size"]))
                for name, d in specs.items() if d.get("kind") in ("codes", "units") and d.get("codebook_size")}
    durations: list[float] = []
    uris: list[str] = []
    speakers: dict[str, list[float]] = {}
    frames: dict[str, int] = {name: 0 for name in specs}
    for s in samples:
        meta = s.meta
        d = float(meta.get("duration_s", 0.0))
        durations.append(d)
        uris.append(str(meta.get("source", {}).get("uri", "")))
        if meta.get("speaker") is not None:
            speakers.setdefault(str(meta["speaker"]), []).append(d)
        for name, array in s.streams.items():
            if name in counters:
                counters[name].add(array)
        for name, desc in meta.get("streams", {}).items():
            shape = desc.get("shape") or [0]
            if name in frames:
                frames[name] += int(shape[-1] if specs[name].get("kind") == "codes" else shape[0])
    root = common_root(uris)
    by_source: dict[str, list[float]] = {}
    for uri, d in zip(uris, durations):
        by_source.setdefault(source_of(uri, root), []).append(d)

    values = np.sort(np.asarray(durations, dtype=np.float64))
    if values.size:
        counts, edges = np.histogram(values, bins=DURATION_BINS, range=(0.0, max(float(values[-1]), 1e-3)))
    else:
        counts, edges = np.zeros(0, dtype=np.int64), np.zeros(0)

    audio_s = float(totals.get("audio_s", 0.0))
    streams_out = {}
    for name, d in specs.items():
        tokens = int(totals.get("tokens", {}).get(name, 0))
        row = {
            "kind": d.get("kind"), "tokenizer": d.get("tokenizer"), "fingerprint": d.get("fingerprint"),
            "frame_rate_hz": d.get("frame_rate_hz"), "dtype": d.get("dtype"),
            "num_codebooks": d.get("num_codebooks"), "codebook_size": d.get("codebook_size"), "dim": d.get("dim"),
            "tokens": tokens, "tokens_per_s": round(tokens / audio_s, 3) if audio_s else 0.0,
            "frames_read": frames.get(name, 0),
        }
        if name in counters and counters[name].counts.any():  # no tokens read: nothing to say about usage
            c = counters[name]
            row["codebooks"] = [{"index": k, **codebook_usage(c.counts[k])} for k in range(c.counts.shape[0])]
            row["out_of_range"] = c.out_of_range
        streams_out[name] = {k: v for k, v in row.items() if v is not None}

    n_shards = int(totals.get("shards", len(index.get("shards", []))))
    stats = {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "dataset": {
            "samples": int(totals.get("samples", 0)), "shards": n_shards, "bytes": int(totals.get("bytes", 0)),
            "audio_s": round(audio_s, 3), "hours": round(audio_s / 3600, 6), "failures": int(totals.get("failures", 0)),
        },
        "coverage": {"shards_read": n_shards if shards_read is None else shards_read, "shards_total": n_shards,
                     "samples_read": len(durations)},
        "sources": {
            "definition": "first folder below the input root (the deepest folder holding every input); "
                          f"files in the root itself: {ROOT_SOURCE}",
            "root": "/".join(root),
            "by_source": _group_rows(by_source),
            "by_speaker": _group_rows(speakers),
        },
        "durations": {
            "count": int(values.size),
            "total_s": round(float(values.sum()), 3),
            "min_s": round(float(values[0]), 6) if values.size else 0.0,
            "mean_s": round(float(values.mean()), 6) if values.size else 0.0,
            "median_s": round(_quantile(values, 0.5), 6),
            "p90_s": round(_quantile(values, 0.9), 6),
            "max_s": round(float(values[-1]), 6) if values.size else 0.0,
            "histogram": {"edges_s": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]},
        },
        "streams": streams_out,
        "failures": {"total": int(totals.get("failures", 0)),
                     "by_reason": dict(totals.get("failures_by_reason", {}))},
    }
    return stats, {name: c.counts for name, c in counters.items() if c.counts.any()}


def dead_code_warnings(stats: Mapping[str, Any]) -> list[str]:
    """One line per codebook with dead codes, and per stream with out-of-range codes."""
    lines = []
    for name, s in stats.get("streams", {}).items():
        for cb in s.get("codebooks", []):
            if cb["dead"]:
                lines.append(f"{name} codebook {cb['index']}: {cb['dead']} of {cb['size']} codes never used "
                             f"({100 * cb['dead_fraction']:.1f}%)")
        if s.get("out_of_range"):
            lines.append(f"{name}: {s['out_of_range']} codes outside [0, {s['codebook_size']})")
    return lines


# ---------------------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the dataset card's plots need matplotlib: pip install 'audiotok[card]' "
                          "(or pip install matplotlib)") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _bar_labels(ax, bars, labels: Sequence[str]) -> None:
    for bar, label in zip(bars, labels):
        ax.annotate(label, (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)


# Bars a per-source plot shows at most; the rest are summed into one "N others" bar
# (a corpus with thousands of folders would otherwise make a figure hundreds of inches tall).
MAX_PLOTTED_SOURCES = 20


def top_rows(rows: Mapping[str, Mapping[str, float]], limit: int = MAX_PLOTTED_SOURCES) -> dict[str, dict[str, float]]:
    """The first ``limit - 1`` rows (they come largest first) and one row summing the others,
    or ``rows`` as they are when there are at most ``limit``."""
    names = list(rows)
    if len(names) <= limit:
        return {n: dict(rows[n]) for n in names}
    kept = {n: dict(rows[n]) for n in names[:limit - 1]}
    rest = names[limit - 1:]
    kept[f"{len(rest)} others (all in stats.json)"] = {
        "samples": sum(rows[n]["samples"] for n in rest), "audio_s": sum(rows[n]["audio_s"] for n in rest)}
    return kept


def _plot_sources(plt, stats: Mapping[str, Any]) -> bytes:
    rows = top_rows(stats["sources"]["by_source"])
    names = list(rows)[::-1]
    fig, (ax_h, ax_n) = plt.subplots(1, 2, figsize=(10, 1.6 + 0.35 * max(len(names), 1)), sharey=True,
                                     layout="constrained")
    minutes = [rows[n]["audio_s"] / 60 for n in names]
    bars = ax_h.barh(names, minutes, color="tab:blue")
    _bar_labels(ax_h, bars, [f"{m:.1f} min" if m < 120 else f"{m / 60:.1f} h" for m in minutes])
    ax_h.set_xlabel("minutes of audio")
    ax_h.set_title("Audio per source")
    ax_n.xaxis.get_major_locator().set_params(integer=True)
    bars = ax_n.barh(names, [rows[n]["samples"] for n in names], color="tab:green")
    _bar_labels(ax_n, bars, [str(rows[n]["samples"]) for n in names])
    ax_n.set_xlabel("samples (segments)")
    ax_n.set_title("Samples per source")
    for ax in (ax_h, ax_n):
        ax.margins(x=0.2)
    fig.suptitle(f"source = first folder below {stats['sources']['root'] or '/'}", fontsize=9, color="dimgray")
    return _png(fig)


def _plot_durations(plt, stats: Mapping[str, Any]) -> bytes:
    d = stats["durations"]
    edges = np.asarray(d["histogram"]["edges_s"])
    counts = np.asarray(d["histogram"]["counts"])
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    if counts.size:
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
        ax.axvline(d["median_s"], color="tab:red", linestyle="--", label=f"median {d['median_s']:.1f} s")
        ax.legend()
    ax.set_xlabel("segment duration (s)")
    ax.set_ylabel("segments")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Segment durations ({d['count']} segments, mean {d['mean_s']:.1f} s, max {d['max_s']:.1f} s)")
    return _png(fig)


def _plot_tokens(plt, stats: Mapping[str, Any]) -> bytes:
    streams = stats["streams"]
    names = list(streams)[::-1]
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.45 * max(len(names), 1)), layout="constrained")
    tokens = [streams[n]["tokens"] for n in names]
    bars = ax.barh(names, tokens, color=["tab:orange" if streams[n]["kind"] == "vectors" else "tab:blue"
                                         for n in names])
    _bar_labels(ax, bars, [f"{t:,} ({streams[n]['tokens_per_s']:.0f}/s, {streams[n]['kind']})"
                           for t, n in zip(tokens, names)])
    ax.margins(x=0.45)
    ax.set_xlabel("tokens (codes: K x T; units: T; vectors: T frames)")
    ax.set_title("Tokens per stream")
    return _png(fig)


def _plot_codebooks(plt, name: str, s: Mapping[str, Any], counts: np.ndarray) -> bytes:
    k_books, size = counts.shape
    fig, (ax_u, ax_e) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 1]},
                                     layout="constrained")
    if k_books == 1:
        dead = counts[0] == 0
        ax_u.bar(np.arange(size), counts[0], width=1.0, color="tab:blue")
        if dead.any():
            ax_u.bar(np.flatnonzero(dead), np.full(dead.sum(), max(counts.max(), 1) * 0.02), width=1.0,
                     color="tab:red", label=f"dead codes ({int(dead.sum())})")
            ax_u.legend(loc="upper right")
        ax_u.set_xlabel("code")
        ax_u.set_ylabel("count")
        ax_u.set_xlim(-0.5, size - 0.5)
    else:
        image = np.log10(counts + 1.0)
        masked = np.ma.masked_where(counts == 0, image)
        cmap = plt.get_cmap("viridis").with_extremes(bad="tab:red")
        im = ax_u.imshow(masked, aspect="auto", interpolation="nearest", cmap=cmap)
        fig.colorbar(im, ax=ax_u, label="log10(count + 1)")
        ax_u.set_yticks(range(k_books))
        ax_u.set_xlabel("code")
        ax_u.set_ylabel("codebook")
    ax_u.set_title(f"{name}: code usage (dead codes in red)")
    books = s["codebooks"]
    idx = np.arange(len(books))
    ax_e.bar(idx, [b["entropy_bits"] for b in books], width=0.6, color="tab:blue")
    ax_e.axhline(books[0]["max_entropy_bits"], color="gray", linestyle="--", label=f"log2 {size}")
    for i, b in enumerate(books):
        if b["dead"]:
            ax_e.annotate(f"{b['dead']} dead", (i, b["entropy_bits"]), ha="center", va="bottom", fontsize=7,
                          color="tab:red")
    ax_e.set_xticks(idx)
    ax_e.set_xlabel("codebook")
    ax_e.set_ylabel("entropy (bits)")
    ax_e.set_ylim(0, books[0]["max_entropy_bits"] * 1.15 + 1e-9)
    ax_e.set_title("Entropy per codebook")
    ax_e.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _plot_failures(plt, stats: Mapping[str, Any]) -> bytes:
    by_reason = stats["failures"]["by_reason"]
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.4 * max(len(by_reason), 2)), layout="constrained")
    if by_reason:
        names = sorted(by_reason, key=lambda r: (by_reason[r], r))
        bars = ax.barh(names, [by_reason[r] for r in names], color="tab:red")
        _bar_labels(ax, bars, [str(by_reason[r]) for r in names])
        ax.margins(x=0.15)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("inputs dead-lettered")
    else:
        ax.text(0.5, 0.5, "no failures", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(f"Failures by reason ({stats['failures']['total']} in all)")
    return _png(fig)


def render_plots(stats: Mapping[str, Any], usage_counts: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """Plot file name -> PNG bytes.

    Args:
        stats: from ``dataset_stats``.
        usage_counts: stream name -> int [K, N] code counts (the codebook plots).
    """
    plt = _pyplot()
    plots = {
        "sources.png": _plot_sources(plt, stats),
        "durations.png": _plot_durations(plt, stats),
        "tokens.png": _plot_tokens(plt, stats),
    }
    for name, counts in usage_counts.items():
        plots[f"codebooks-{name}.png"] = _plot_codebooks(plt, name, stats["streams"][name], counts)
    plots["failures.png"] = _plot_failures(plt, stats)
    return plots


# ---------------------------------------------------------------------------- README


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    # GitHub tables split cells at every "|", code spans included, unless escaped.
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def render_readme(index: Mapping[str, Any], stats: Mapping[str, Any], vocab: lm.VocabSpec,
                  plots: Sequence[str]) -> str:
    """The card's markdown."""
    ds = stats["dataset"]
    cov = stats["coverage"]
    plot = {p: f"![{p}]({PLOTS_DIR}/{p})" for p in plots}
    lines = [
        "# audiotok dataset",
        "",
        f"{ds['samples']:,} samples, {_duration(ds['audio_s'])} of audio, in {ds['shards']} WebDataset shard(s) "
        f"({_human_bytes(ds['bytes'])}); {ds['failures']} input(s) failed. Written by audiotok "
        f"(`{index.get('format')}` v{index.get('version')}"
        + (f", dataset version {index['dataset_version']}" if index.get("dataset_version") is not None else "")
        + "); this card is regenerated by every run and by `audiotok card OUT`.",
        "",
    ]
    if cov["shards_read"] < cov["shards_total"]:
        lines += [f"> Per-sample statistics (sources, durations, codebook usage) come from {cov['shards_read']} of "
                  f"{cov['shards_total']} shards ({cov['samples_read']:,} samples), evenly spaced; totals are exact.",
                  ""]
    lines += ["## Tokenizers", ""]
    lines += _table(["tokenizer", "version", "family", "sample rate", "fingerprint", "weights"],
                    [(t.get("tokenizer"), t.get("version"), t.get("family"), t.get("sample_rate"),
                      f"`{t.get('fingerprint')}`", f"`{t.get('weights')}`" if t.get("weights") else "none")
                     for t in index.get("tokenizers", [])])
    lines += ["", "## Streams", ""]
    rows = []
    for name, s in stats["streams"].items():
        shape = {"codes": f"int16 [{s.get('num_codebooks')}, T]", "units": "int16 [T]",
                 "vectors": f"float16 [T, {s.get('dim')}]"}.get(s["kind"], f"{s.get('dtype')} [T]")
        size = (f"{s.get('num_codebooks', 1)} x {s['codebook_size']}" if s["kind"] == "codes"
                else str(s.get("codebook_size", "-")))
        rows.append((f"`{name}`", s["kind"], s.get("tokenizer"), f"{s.get('frame_rate_hz', 0):g} Hz", shape,
                     size, f"{s['tokens']:,}", f"{s['tokens_per_s'] * 3600:,.0f}"))
    lines += _table(["stream", "kind", "tokenizer", "frame rate", "array", "codebooks", "tokens", "tokens / hour"],
                    rows)
    if "tokens.png" in plot:
        lines += ["", plot["tokens.png"]]
    lines += ["", "## LM vocabulary (`vocab.json`)", ""]
    if vocab.streams:
        lines += [f"One flat vocabulary of {vocab.size:,} ids (fingerprint `{vocab.fingerprint()}`): specials, "
                  "one separator per stream, then each stream's codes codebook after codebook; code `c` of codebook "
                  "`k` is `offset + k * codebook_size + c`. A sample becomes "
                  "`<|bos|> <|stream:A|> A... <|stream:B|> B... <|eos|>` (see `transforms/lm.py`).", ""]
        lines += _table(["id", "token"], [(i, f"`{t}`") for t, i in sorted(vocab.specials.items(), key=lambda x: x[1])])
        lines += [""]
        lines += _table(["stream", "codebooks", "ids"],
                        [(f"`{s.name}`", f"{s.num_codebooks} x {s.codebook_size}",
                          f"{s.offset}..{s.offset + s.size - 1}") for s in vocab.streams])
    else:
        lines += ["No discrete stream: the vocabulary holds the special tokens only."]
    if vocab.not_in_vocab:
        lines += [""]
    for name, why in vocab.not_in_vocab.items():
        lines += [f"- `{name}`: not in the vocabulary ({why})."]
    src = stats["sources"]
    lines += ["", "## Sources", "", f"Source = {src['definition']}. Root: `{src['root'] or '/'}`.", ""]
    lines += _table(["source", "samples", "audio"], [(f"`{n}`", r["samples"], _duration(r["audio_s"]))
                                                     for n, r in top_rows(src["by_source"], 50).items()])
    if "sources.png" in plot:
        lines += ["", plot["sources.png"]]
    if src["by_speaker"]:
        lines += ["", "By manifest speaker:", ""]
        lines += _table(["speaker", "samples", "audio"], [(f"`{n}`", r["samples"], _duration(r["audio_s"]))
                                                          for n, r in top_rows(src["by_speaker"], 50).items()])
    d = stats["durations"]
    lines += ["", "## Segment durations", "",
              f"{d['count']:,} segments: min {d['min_s']:.2f} s, median {d['median_s']:.2f} s, "
              f"mean {d['mean_s']:.2f} s, "
              f"90th percentile {d['p90_s']:.2f} s, max {d['max_s']:.2f} s."]
    if "durations.png" in plot:
        lines += ["", plot["durations.png"]]
    coded = {n: s for n, s in stats["streams"].items() if "codebooks" in s}
    if coded:
        lines += ["", "## Codebook usage", "",
                  "Entropy of each codebook's code distribution over the samples read (max: log2 of its size); "
                  "perplexity = 2^entropy; dead codes never occur.", ""]
        lines += _table(["stream", "codebook", "used / size", "dead", "entropy (bits)", "max", "perplexity"],
                        [(f"`{n}`", cb["index"], f"{cb['used']} / {cb['size']}",
                          f"**{cb['dead']}**" if cb["dead"] else "0", f"{cb['entropy_bits']:.2f}",
                          f"{cb['max_entropy_bits']:.2f}", f"{cb['perplexity']:.1f}")
                         for n, s in coded.items() for cb in s["codebooks"]])
        warnings = dead_code_warnings(stats)
        if warnings:
            lines += ["", "Flagged:", ""] + [f"- {w}" for w in warnings]
        for n in coded:
            if f"codebooks-{n}.png" in plot:
                lines += ["", plot[f"codebooks-{n}.png"]]
    f = stats["failures"]
    lines += ["", "## Failures", ""]
    if f["total"]:
        lines += [f"{f['total']} input(s) dead-lettered; one JSON line each under `failures/` "
                  "(uri, reason, message, stage).", ""]
        lines += _table(["reason", "inputs"], sorted(f["by_reason"].items(), key=lambda x: (-x[1], x[0])))
    else:
        lines += ["None."]
    if "failures.png" in plot:
        lines += ["", plot["failures.png"]]
    settings = index.get("settings", {})
    if settings:
        lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=1, sort_keys=True), "```"]
    lines += [
        "", "## Layout and use", "",
        "- `index.json`: shards (url, samples, bytes, audio_s, tokens per stream), stream specs, totals, failures.",
        "- the shards the index lists (`shards/...tar`): per sample `KEY.json` (source uri, start_s, end_s, "
        "duration_s, streams' shape and dtype) and `KEY.<stream>.npy`. After an incremental refresh a shard row may "
        "list `excluded_sources`: samples of those sources are superseded (the audiotok reader skips them; other "
        "readers should too, or run `audiotok compact` first).",
        *_vector_set_lines(stats),
        "- `vocab.json`: the flat LM vocabulary; `stats.json`: every figure on this card; `card/`: the plots.",
        "",
        "```python",
        "from audiotok.transforms import lm, reader",
        "samples = reader.sample_dataset(OUT)                  # TokenSample(key, url, meta, streams)",
        f"rows = reader.lm_dataset(OUT, lm.SequenceConfig({tuple(s.name for s in vocab.streams)!r}), context_len=2048)",
        "# Hugging Face: datasets.load_dataset('webdataset', data_files={'train': reader.shard_urls(OUT)})",
        "```",
        "",
        "`audiotok verify OUT` checks every shard; `audiotok inspect OUT` prints a sample; "
        "`audiotok export OUT --format lhotse-shar -o DIR` writes a Lhotse Shar copy.",
        "",
    ]
    return "\n".join(lines)


def vector_shard_stats(rows: Iterable[Mapping[str, Any]], streams: Mapping[str, Mapping[str, Any]]) -> dict | None:
    """The vector shard set of a dataset's shard rows (``--separate-vectors``): its streams,
    files and bytes; None when the vector streams are in the shards."""
    rows = [r for r in rows if r.get("vectors_url")]
    if not rows:
        return None
    return {"streams": sorted(dataset.vector_streams(streams)), "files": len(rows),
            "bytes": sum(int(r.get("vectors_bytes", 0)) for r in rows)}


def _vector_set_lines(stats: Mapping[str, Any]) -> list[str]:
    vectors = stats.get("dataset", {}).get("vector_shards")
    if not vectors:
        return []
    names = ", ".join(f"`{n}`" for n in vectors["streams"])
    return [f"- the vector streams ({names}) are in a shard set of their own: `vectors-BBBBBB-NNNN.tar` beside each "
            f"`shard-BBBBBB-NNNN.tar` (its samples, same order; the rows' `vectors_url`), "
            f"{vectors['bytes'] / 2**20:.1f} MiB of the {stats['dataset']['bytes'] / 2**20:.1f} MiB. The audiotok "
            "reader opens them only when a vector stream is asked for; stock WebDataset readers read each set on "
            "its own (`reader.shard_urls(OUT, vectors=True)`)."]


# ---------------------------------------------------------------------------- the whole card


def pick_shards(n_total: int, max_shards: int | None) -> list[int]:
    """Indices of the shards to read: all, or ``max_shards`` evenly spaced ones."""
    if max_shards is None or max_shards >= n_total:
        return list(range(n_total))
    if max_shards < 1:
        raise ValueError(f"max_shards must be >= 1. Found: {max_shards}")
    return sorted({int(i) for i in np.linspace(0, n_total - 1, max_shards).round()})


def write_card(output: str, index: Mapping[str, Any] | None = None, max_shards: int | None = None) -> dict[str, Any]:
    """Computes the stats of a dataset and writes ``README.md``, ``stats.json`` and ``card/*.png``.

    Without matplotlib the card is written without plots (a warning says how to get them).

    Args:
        output: the dataset folder.
        index: its index, when already read.
        max_shards: read at most this many (evenly spaced) shards for per-sample statistics.

    Returns:
        The stats (as written to ``stats.json``).
    """
    from audiotok.transforms import reader

    index = dataset.read_index(output) if index is None else index
    urls = reader.shard_urls(output, index)
    picked = [urls[i] for i in pick_shards(len(urls), max_shards)]
    discrete = [n for n, d in index.get("streams", {}).items() if d.get("kind") in ("codes", "units")]
    samples = reader.read_samples(output, streams=discrete, urls=picked, index=index)
    stats, usage = dataset_stats(index, samples, shards_read=len(picked))
    vectors = vector_shard_stats(dataset.shard_rows(output, index), index.get("streams", {}))
    if vectors:
        stats["dataset"]["vector_shards"] = vectors
    vocab_url = storage.join(output, lm.VOCAB_NAME)
    vocab = lm.read_vocab(output) if storage.exists(vocab_url) else lm.build_vocab(index.get("streams", {}))
    try:
        plots = render_plots(stats, usage)
    except ImportError as e:
        logger.warning("dataset card without plots: %s", e)
        plots = {}
    plots_dir = storage.join(output, PLOTS_DIR)
    previous = _previous_plots(output)
    for name, png in plots.items():
        storage.write_atomic(storage.join(plots_dir, name), png)
    stats["plots"] = [f"{PLOTS_DIR}/{p}" for p in plots]
    storage.write_atomic(storage.join(output, STATS_NAME), json.dumps(stats, indent=1, sort_keys=True).encode("utf-8"))
    storage.write_atomic(storage.join(output, README_NAME),
                         render_readme(index, stats, vocab, list(plots)).encode("utf-8"))
    for rel in sorted(previous - set(stats["plots"])):  # plots of streams a previous card had; nothing else
        storage.remove(storage.join(output, rel))
    return stats


def _previous_plots(output: str) -> set[str]:
    """The plots the card on disk lists (``card/NAME.png``): the only files a new card removes."""
    try:
        listed = json.loads(storage.read_bytes(storage.join(output, STATS_NAME))).get("plots", [])
    except (FileNotFoundError, ValueError, AttributeError):
        return set()
    return {p for p in listed if isinstance(p, str) and p.startswith(PLOTS_DIR + "/") and "/" not in p[len(PLOTS_DIR) + 1:]
            and p.endswith(".png") and ".." not in p}
