"""Small SVG charts for the dataset card: horizontal and vertical bars, a heat map, axes with
round ticks. No plotting library: a card is drawn in milliseconds, the files are a few KB, and
the same stats give the same bytes (no timestamps, fixed number formats).

A :class:`Figure` holds panels side by side; each :class:`Panel` maps data to its plot area.
Text widths are estimated (``CHAR_W`` of the font size per character), which is what the layout
needs to leave room for labels; viewers render the text in their own sans-serif font.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import struct
import zlib
from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np

BLUE, ORANGE, GREEN, RED, GRAY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#808080"
FONT = 11  # px
CHAR_W = 0.6  # estimated glyph width, in font sizes
TITLE_H = 22  # px above a panel for its title
AXIS_H = 34  # px below a panel for tick labels and the axis label
PAD = 8

# viridis at 9 evenly spaced points (its published anchor colours), interpolated between.
_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


def text_width(text: str, size: float = FONT) -> float:
    return len(text) * size * CHAR_W


def fmt(value: float) -> str:
    """A tick label: integers without a decimal point, others with the digits they need."""
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.6g}"


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    n = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(n)]


def viridis(t: np.ndarray) -> np.ndarray:
    """[...] values in [0, 1] -> [..., 3] uint8 RGB."""
    x = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    i = np.minimum(x.astype(np.int64), len(_VIRIDIS) - 2)
    f = (x - i)[..., None]
    return np.rint(_VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> a PNG file (8-bit RGB, no filter, zlib level 9)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _n(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


@dataclasses.dataclass
class Panel:
    """A plot area at (``x``, ``y``) of ``w`` x ``h`` px with data ranges ``xlim`` and ``ylim``."""

    figure: "Figure"
    x: float
    y: float
    w: float
    h: float
    xlim: tuple[float, float] = (0.0, 1.0)
    ylim: tuple[float, float] = (0.0, 1.0)

    def px(self, v: float) -> float:
        lo, hi = self.xlim
        return self.x + (v - lo) / ((hi - lo) or 1.0) * self.w

    def py(self, v: float) -> float:
        lo, hi = self.ylim
        return self.y + self.h - (v - lo) / ((hi - lo) or 1.0) * self.h

    def title(self, text: str) -> None:
        self.figure.text(self.x + self.w / 2, self.y - 8, text, size=FONT + 1, anchor="middle", bold=True)

    def frame(self) -> None:
        self.figure.add(f'<rect x="{_n(self.x)}" y="{_n(self.y)}" width="{_n(self.w)}" height="{_n(self.h)}" '
                        'fill="none" stroke="#444" stroke-width="0.8"/>')

    def xaxis(self, label: str, ticks: Sequence[float] | None = None, integer: bool = False,
              labels: Sequence[str] | None = None) -> None:
        ticks = nice_ticks(*self.xlim, integer=integer) if ticks is None else ticks
        bottom = self.y + self.h
        for i, t in enumerate(ticks):
            if not self.xlim[0] - 1e-9 <= t <= self.xlim[1] + 1e-9:
                continue
            x = self.px(t)
            self.figure.line(x, bottom, x, bottom + 4, color="#444")
            self.figure.text(x, bottom + 15, labels[i] if labels else fmt(t), anchor="middle")
        self.figure.text(self.x + self.w / 2, bottom + 30, label, anchor="middle")

    def yaxis(self, label: str, integer: bool = False) -> None:
        ticks = nice_ticks(*self.ylim, integer=integer)
        for t in ticks:
            if not self.ylim[0] - 1e-9 <= t <= self.ylim[1] + 1e-9:
                continue
            y = self.py(t)
            self.figure.line(self.x - 4, y, self.x, y, color="#444")
            self.figure.text(self.x - 6, y + 4, fmt(t), anchor="end")
        self.figure.vtext(self.x - 14 - max((text_width(fmt(t)) for t in ticks), default=0), self.y + self.h / 2,
                          label)

    def barh(self, names: Sequence[str], values: Sequence[float], labels: Sequence[str],
             colors: Sequence[str] | str = BLUE, names_shown: bool = True) -> None:
        """One horizontal bar per name, the first at the top, its label at its end."""
        colors = [colors] * len(names) if isinstance(colors, str) else list(colors)
        slot = self.h / max(len(names), 1)
        for i, (name, value, label, color) in enumerate(zip(names, values, labels, colors)):
            top = self.y + i * slot + slot * 0.15
            x0, x1 = self.px(0.0), self.px(value)
            self.figure.rect(x0, top, max(x1 - x0, 0.0), slot * 0.7, color)
            self.figure.text(x1 + 3, top + slot * 0.35 + 4, label, size=FONT - 2)
            if names_shown:
                self.figure.text(self.x - 6, top + slot * 0.35 + 4, name, anchor="end")


class Figure:
    """An SVG document of ``width`` x ``height`` px built element by element."""

    def __init__(self, width: float, height: float):
        self.width, self.height = width, height
        self._parts: list[str] = []

    def add(self, element: str) -> None:
        self._parts.append(element)

    def panel(self, x: float, y: float, w: float, h: float, **limits) -> Panel:
        return Panel(self, x, y, w, h, **limits)

    def text(self, x: float, y: float, text: str, size: float = FONT, anchor: str = "start", color: str = "#222",
             bold: bool = False) -> None:
        weight = ' font-weight="bold"' if bold else ""
        self.add(f'<text x="{_n(x)}" y="{_n(y)}" font-size="{_n(size)}" text-anchor="{anchor}" fill="{color}"{weight}>'
                 f"{escape(text)}</text>")

    def vtext(self, x: float, y: float, text: str, size: float = FONT) -> None:
        """Text read bottom to top, centred on (x, y): a vertical axis' label."""
        self.add(f'<text x="{_n(x)}" y="{_n(y)}" font-size="{_n(size)}" text-anchor="middle" fill="#222" '
                 f'transform="rotate(-90 {_n(x)} {_n(y)})">{escape(text)}</text>')

    def rect(self, x: float, y: float, w: float, h: float, color: str) -> None:
        self.add(f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" fill="{color}"/>')

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = "#222", dash: bool = False,
             width: float = 1.0) -> None:
        extra = ' stroke-dasharray="5,3"' if dash else ""
        self.add(f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{color}" '
                 f'stroke-width="{_n(width)}"{extra}/>')

    def image(self, x: float, y: float, w: float, h: float, rgb: np.ndarray) -> None:
        """A raster (e.g. a heat map) stretched over the box, pixels kept sharp."""
        data = base64.b64encode(png(rgb)).decode("ascii")
        self.add(f'<image x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" preserveAspectRatio="none" '
                 f'style="image-rendering:pixelated" href="data:image/png;base64,{data}"/>')

    def tobytes(self) -> bytes:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(self.width)}" height="{_n(self.height)}" '
                f'viewBox="0 0 {_n(self.width)} {_n(self.height)}" font-family="DejaVu Sans, Arial, sans-serif">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n')
        return (head + "\n".join(self._parts) + "\n</svg>\n").encode("utf-8")
