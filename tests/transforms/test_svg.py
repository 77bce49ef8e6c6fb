"""The card's SVG charts (transforms/svg.py): ticks, the PNG encoder, escaping."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest

from audiotok.transforms import svg


@pytest.mark.parametrize("lo, hi, integer, expected", [
    (0.0, 1.0, False, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.0, 10_000.0, False, [0.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0]),
    (0.0, 3.0, True, [0.0, 1.0, 2.0, 3.0]),
    (0.0, 0.9, True, [0.0]),
    (-0.5, 99.5, True, [0.0, 20.0, 40.0, 60.0, 80.0]),
    (5.0, 5.0, False, [5.0, 5.2, 5.4, 5.6, 5.8, 6.0]),  # an empty range still gets an axis
])
def test_ticks_are_round_and_inside_the_range(lo, hi, integer, expected):
    assert svg.nice_ticks(lo, hi, integer=integer) == pytest.approx(expected)


def test_tick_labels():
    assert [svg.fmt(v) for v in (0.0, 2000.0, 0.2, 1.5e-3)] == ["0", "2,000", "0.2", "0.0015"]


def _png_pixels(data: bytes) -> np.ndarray:
    """Decodes what ``svg.png`` writes (8-bit RGB, filter 0), checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = body
        pos += 12 + length
    w, h, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color) == (8, 2) and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_png_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    assert (_png_pixels(svg.png(rgb)) == rgb).all()


def test_viridis_ends_and_is_monotone_in_lightness():
    colors = svg.viridis(np.linspace(0, 1, 9))
    assert colors[0].tolist() == [68, 1, 84] and colors[-1].tolist() == [253, 231, 37]
    assert svg.viridis(np.array([-1.0, 2.0])).tolist() == [[68, 1, 84], [253, 231, 37]]  # clipped
    assert np.all(np.diff(colors.astype(int).sum(axis=1)) > 0)


def test_text_is_escaped_and_the_document_parses():
    fig = svg.Figure(200, 100)
    ax = fig.panel(40, 20, 150, 50, xlim=(0.0, 10.0))
    ax.barh(["<a & b>", "c"], [3.0, 10.0], ["3", "10"])
    ax.frame()
    ax.xaxis("x & y", integer=True)
    fig.image(0, 0, 4, 4, np.zeros((2, 2, 3), np.uint8))
    root = ET.fromstring(fig.tobytes())
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "<a & b>" in texts and "x & y" in texts
    bars = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("fill") == svg.BLUE]
    assert [float(b.get("width")) for b in bars] == pytest.approx([45.0, 150.0])  # 3/10 and 10/10 of the panel
