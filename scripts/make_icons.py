"""Render the PWA PNG icons from simple geometry with the standard library only.

Run once when the logo changes: python scripts/make_icons.py
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src/fieldlink/cloud/static/fieldlink/icons"
BRAND = (0x0B, 0x53, 0x94)
WHITE = (0xFF, 0xFF, 0xFF)
AMBER = (0xFF, 0xBF, 0x47)
LINE = [(10, 40), (22, 28), (32, 36), (44, 20), (54, 26)]  # the SVG's polyline, in 64-unit space


def _dist_to_segment(px: float, py: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return float(((px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2) ** 0.5)


def render(size: int, *, maskable: bool) -> bytes:
    # A maskable icon keeps its drawing inside the central 80 % safe zone.
    scale = 0.8 if maskable else 1.0
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            u = ((x + 0.5) / size - 0.5) / scale * 64 + 32
            v = ((y + 0.5) / size - 0.5) / scale * 64 + 32
            color = BRAND
            if min(_dist_to_segment(u, v, a, b) for a, b in zip(LINE, LINE[1:], strict=False)) < 2.5:
                color = WHITE
            if (u - 44) ** 2 + (v - 20) ** 2 < 25:
                color = AMBER
            row.extend(color)
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 9)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "icon-192.png").write_bytes(render(192, maskable=False))
    (OUT / "icon-512.png").write_bytes(render(512, maskable=False))
    (OUT / "icon-maskable-512.png").write_bytes(render(512, maskable=True))
