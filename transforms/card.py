"""The dataset card: ``OUT/README.md``, ``OUT/stats.json`` and ``OUT/card/*.svg``.

``dataset_stats`` is the pure core (index + samples -> one JSON-able dict); ``render_plots``
turns the stats into SVG charts (``audiotok.transforms.svg``: no plotting library, a few KB
each, the same stats give the same bytes), ``render_readme`` into markdown, and
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
import json
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from audiotok.transforms import dataset, lm, storage, svg


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


def _label_w(names: Sequence[str]) -> float:
    return max((svg.text_width(n) for n in names), default=0.0) + 14


def _bar_panel_height(n: int) -> float:
    return 24.0 * max(n, 1)


def _barh_limit(values: Sequence[float], labels: Sequence[str], width: float) -> float:
    """An x range that leaves room for the longest bar's label at its end."""
    top = max([float(v) for v in values] + [0.0])
    room = max((svg.text_width(t, svg.FONT - 2) for t in labels), default=0.0) + 8
    return (top or 1.0) * width / max(width - room, width * 0.3)


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


def _plot_sources(stats: Mapping[str, Any]) -> bytes:
    rows = top_rows(stats["sources"]["by_source"])
    names = list(rows)
    left, w = _label_w(names), 320.0
    h = _bar_panel_height(len(names))
    top = 22 + svg.TITLE_H
    fig = svg.Figure(left + 2 * w + 40 + 2 * svg.PAD, top + h + svg.AXIS_H + svg.PAD)
    fig.text(fig.width / 2, 14, f"source = first folder below {stats['sources']['root'] or '/'}", size=9,
             anchor="middle", color="dimgray")
    minutes = [rows[n]["audio_s"] / 60 for n in names]
    labels = [f"{m:.1f} min" if m < 120 else f"{m / 60:.1f} h" for m in minutes]
    ax = fig.panel(left, top, w, h, xlim=(0.0, _barh_limit(minutes, labels, w)), ylim=(0.0, 1.0))
    ax.barh(names, minutes, labels, svg.BLUE)
    ax.frame()
    ax.xaxis("minutes of audio")
    ax.title("Audio per source")
    counts = [rows[n]["samples"] for n in names]
    labels = [str(c) for c in counts]
    ax = fig.panel(left + w + 40, top, w, h, xlim=(0.0, _barh_limit(counts, labels, w)), ylim=(0.0, 1.0))
    ax.barh(names, counts, labels, svg.GREEN, names_shown=False)
    ax.frame()
    ax.xaxis("samples (segments)", integer=True)
    ax.title("Samples per source")
    return fig.tobytes()


def _plot_durations(stats: Mapping[str, Any]) -> bytes:
    d = stats["durations"]
    edges = np.asarray(d["histogram"]["edges_s"], dtype=np.float64)
    counts = np.asarray(d["histogram"]["counts"])
    fig = svg.Figure(720, 320)
    top_count = float(counts.max()) if counts.size else 1.0
    xlim = (float(edges[0]), float(edges[-1])) if counts.size else (0.0, 1.0)
    ax = fig.panel(70, 40, 620, 230, xlim=xlim, ylim=(0.0, max(top_count, 1.0) * 1.08))
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        x0, x1 = ax.px(float(lo)), ax.px(float(hi))
        fig.rect(x0, ax.py(float(c)), max(x1 - x0 - 1, 0.5), ax.py(0.0) - ax.py(float(c)), svg.BLUE)
    if counts.size:
        x = ax.px(d["median_s"])
        fig.line(x, ax.y, x, ax.y + ax.h, svg.RED, dash=True, width=1.5)
        label = f"median {d['median_s']:.1f} s"
        fig.rect(ax.x + ax.w - svg.text_width(label) - 34, ax.y + 8, svg.text_width(label) + 28, 20, "white")
        fig.line(ax.x + ax.w - svg.text_width(label) - 30, ax.y + 18, ax.x + ax.w - svg.text_width(label) - 12,
                 ax.y + 18, svg.RED, dash=True, width=1.5)
        fig.text(ax.x + ax.w - svg.text_width(label) - 8, ax.y + 22, label)
    ax.frame()
    ax.xaxis("segment duration (s)")
    ax.yaxis("segments", integer=True)
    ax.title(f"Segment durations ({d['count']} segments, mean {d['mean_s']:.1f} s, max {d['max_s']:.1f} s)")
    return fig.tobytes()


def _plot_tokens(stats: Mapping[str, Any]) -> bytes:
    streams = stats["streams"]
    names = list(streams)
    left, w = _label_w(names), 520.0
    h = _bar_panel_height(len(names))
    tokens = [streams[n]["tokens"] for n in names]
    labels = [f"{t:,} ({streams[n]['tokens_per_s']:.0f}/s, {streams[n]['kind']})" for t, n in zip(tokens, names)]
    fig = svg.Figure(left + w + 2 * svg.PAD, svg.TITLE_H + 10 + h + svg.AXIS_H + svg.PAD)
    ax = fig.panel(left, svg.TITLE_H + 10, w, h, xlim=(0.0, _barh_limit(tokens, labels, w)))
    ax.barh(names, tokens, labels, [svg.ORANGE if streams[n]["kind"] == "vectors" else svg.BLUE for n in names])
    ax.frame()
    ax.xaxis("tokens (codes: K x T; units: T; vectors: T frames)", integer=True)
    ax.title("Tokens per stream")
    return fig.tobytes()


def _plot_codebooks(name: str, s: Mapping[str, Any], counts: np.ndarray) -> bytes:
    k_books, size = counts.shape
    fig = svg.Figure(1000, 340)
    ax = fig.panel(80, 40, 600, 240, xlim=(-0.5, size - 0.5))
    if k_books == 1:
        top = max(float(counts.max()), 1.0)
        ax.ylim = (0.0, top * 1.08)
        dead = counts[0] == 0
        bar_w = ax.w / size
        for code in np.flatnonzero(~dead):
            c = float(counts[0, code])
            fig.rect(ax.px(code - 0.5), ax.py(c), max(bar_w, 0.3), ax.py(0.0) - ax.py(c), svg.BLUE)
        for code in np.flatnonzero(dead):
            fig.rect(ax.px(code - 0.5), ax.py(top * 0.02), max(bar_w, 0.3), ax.py(0.0) - ax.py(top * 0.02), svg.RED)
        if dead.any():
            fig.text(ax.x + ax.w - 6, ax.y + 16, f"dead codes ({int(dead.sum())})", anchor="end", color=svg.RED)
        ax.yaxis("count", integer=True)
    else:
        ax.ylim = (k_books - 0.5, -0.5)
        image = np.log10(counts + 1.0)
        hi = float(image.max()) or 1.0
        rgb = svg.viridis(image / hi)
        rgb[counts == 0] = (214, 39, 40)
        fig.image(ax.x, ax.y, ax.w, ax.h, rgb)
        for k in range(k_books):
            if k_books <= 16 or k % 4 == 0:
                fig.text(ax.x - 6, ax.py(k) + 4, str(k), anchor="end")
        fig.vtext(40, ax.y + ax.h / 2, "codebook")
        bar_x = ax.x + ax.w + 8
        for i in range(64):
            fig.rect(bar_x, ax.y + ax.h * (1 - (i + 1) / 64), 10, ax.h / 64 + 0.3,
                     "#%02x%02x%02x" % tuple(svg.viridis(np.array((i + 0.5) / 64))))
        fig.text(bar_x + 14, ax.y + 8, f"{hi:.1f}", size=9)
        fig.text(bar_x + 14, ax.y + ax.h, "0", size=9)
        fig.vtext(bar_x + 52, ax.y + ax.h / 2, "log10(count + 1)", size=9)
    ax.frame()
    ax.xaxis("code", integer=True)
    ax.title(f"{name}: code usage (dead codes in red)")

    books = s["codebooks"]
    max_bits = books[0]["max_entropy_bits"]
    ex = fig.panel(820, 40, 160, 240, xlim=(-0.6, len(books) - 0.4), ylim=(0.0, max_bits * 1.15 + 1e-9))
    for i, b in enumerate(books):
        x0, x1 = ex.px(i - 0.3), ex.px(i + 0.3)
        fig.rect(x0, ex.py(b["entropy_bits"]), x1 - x0, ex.py(0.0) - ex.py(b["entropy_bits"]), svg.BLUE)
        if b["dead"]:
            fig.text(ex.px(i), ex.py(b["entropy_bits"]) - 3, f"{b['dead']} dead", size=8, anchor="middle",
                     color=svg.RED)
    fig.line(ex.x, ex.py(max_bits), ex.x + ex.w, ex.py(max_bits), svg.GRAY, dash=True)
    fig.text(ex.x + ex.w - 4, ex.py(max_bits) - 4, f"log2 {size}", size=9, anchor="end", color=svg.GRAY)
    ex.frame()
    step = max(1, math.ceil(len(books) / 8))
    ex.xaxis("codebook", ticks=list(range(0, len(books), step)))
    ex.yaxis("entropy (bits)")
    ex.title("Entropy per codebook")
    return fig.tobytes()


def _plot_failures(stats: Mapping[str, Any]) -> bytes:
    by_reason = stats["failures"]["by_reason"]
    title = f"Failures by reason ({stats['failures']['total']} in all)"
    if not by_reason:
        fig = svg.Figure(640, 120)
        ax = fig.panel(20, svg.TITLE_H + 10, 600, 70)
        ax.frame()
        fig.text(ax.x + ax.w / 2, ax.y + ax.h / 2 + 6, "no failures", size=16, anchor="middle")
        ax.title(title)
        return fig.tobytes()
    names = sorted(by_reason, key=lambda r: (-by_reason[r], r))
    counts = [by_reason[r] for r in names]
    labels = [str(c) for c in counts]
    left, w = _label_w(names), 480.0
    h = _bar_panel_height(len(names))
    fig = svg.Figure(left + w + 2 * svg.PAD, svg.TITLE_H + 10 + h + svg.AXIS_H + svg.PAD)
    ax = fig.panel(left, svg.TITLE_H + 10, w, h, xlim=(0.0, _barh_limit(counts, labels, w)))
    ax.barh(names, counts, labels, svg.RED)
    ax.frame()
    ax.xaxis("inputs dead-lettered", integer=True)
    ax.title(title)
    return fig.tobytes()


def render_plots(stats: Mapping[str, Any], usage_counts: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """Plot file name -> SVG bytes.

    Args:
        stats: from ``dataset_stats``.
        usage_counts: stream name -> int [K, N] code counts (the codebook plots).
    """
    plots = {
        "sources.svg": _plot_sources(stats),
        "durations.svg": _plot_durations(stats),
        "tokens.svg": _plot_tokens(stats),
    }
    for name, counts in usage_counts.items():
        plots[f"codebooks-{name}.svg"] = _plot_codebooks(name, stats["streams"][name], counts)
    plots["failures.svg"] = _plot_failures(stats)
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
    if "tokens.svg" in plot:
        lines += ["", plot["tokens.svg"]]
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
    if "sources.svg" in plot:
        lines += ["", plot["sources.svg"]]
    if src["by_speaker"]:
        lines += ["", "By manifest speaker:", ""]
        lines += _table(["speaker", "samples", "audio"], [(f"`{n}`", r["samples"], _duration(r["audio_s"]))
                                                          for n, r in top_rows(src["by_speaker"], 50).items()])
    d = stats["durations"]
    lines += ["", "## Segment durations", "",
              f"{d['count']:,} segments: min {d['min_s']:.2f} s, median {d['median_s']:.2f} s, "
              f"mean {d['mean_s']:.2f} s, "
              f"90th percentile {d['p90_s']:.2f} s, max {d['max_s']:.2f} s."]
    if "durations.svg" in plot:
        lines += ["", plot["durations.svg"]]
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
            if f"codebooks-{n}.svg" in plot:
                lines += ["", plot[f"codebooks-{n}.svg"]]
    f = stats["failures"]
    lines += ["", "## Failures", ""]
    if f["total"]:
        lines += [f"{f['total']} input(s) dead-lettered; one JSON line each under `failures/` "
                  "(uri, reason, message, stage).", ""]
        lines += _table(["reason", "inputs"], sorted(f["by_reason"].items(), key=lambda x: (-x[1], x[0])))
    else:
        lines += ["None."]
    if "failures.svg" in plot:
        lines += ["", plot["failures.svg"]]
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
    """Computes the stats of a dataset and writes ``README.md``, ``stats.json`` and ``card/*.svg``.

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
    plots = render_plots(stats, usage)
    plots_dir = storage.join(output, PLOTS_DIR)
    previous = _previous_plots(output)
    for name, data in plots.items():
        storage.write_atomic(storage.join(plots_dir, name), data)
    stats["plots"] = [f"{PLOTS_DIR}/{p}" for p in plots]
    storage.write_atomic(storage.join(output, STATS_NAME), json.dumps(stats, indent=1, sort_keys=True).encode("utf-8"))
    storage.write_atomic(storage.join(output, README_NAME),
                         render_readme(index, stats, vocab, list(plots)).encode("utf-8"))
    for rel in sorted(previous - set(stats["plots"])):  # plots of streams a previous card had; nothing else
        storage.remove(storage.join(output, rel))
    return stats


def _previous_plots(output: str) -> set[str]:
    """The plots the card on disk lists (``card/NAME.svg``, or ``.png`` from cards before SVG): the only
    files a new card removes."""
    try:
        listed = json.loads(storage.read_bytes(storage.join(output, STATS_NAME))).get("plots", [])
    except (FileNotFoundError, ValueError, AttributeError):
        return set()
    return {p for p in listed if isinstance(p, str) and p.startswith(PLOTS_DIR + "/") and "/" not in p[len(PLOTS_DIR) + 1:]
            and p.endswith((".svg", ".png")) and ".." not in p}
