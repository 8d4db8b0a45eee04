"""Draw Gapshape's icon and the window's small pictures as PNG files, in pure Python.

    python Assets/make_icon.py        # rewrites the PNG files next to this script

Shapes are signed distance functions (negative inside, in pixels); a pixel's coverage is
`clamp(0.5 - distance)`, which anti-aliases edges with one sample per pixel. PNGs are
written with zlib: 8-bit RGBA, filter 0 on every row.

Files: icon-16/32/64/256.png (the application icon: a speech bubble with a keyhole on an
indigo-to-sky gradient), lock.png and lock@2x.png (marks private messages),
status-<online|away|dnd>.png and @2x (the member list's dots).
"""
from __future__ import annotations

import math
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent

Colour = tuple[float, float, float]
Pixel = tuple[float, float, float, float]  # premultiplied by nothing: r, g, b in 0..1, alpha
Shader = Callable[[float, float], Pixel]


# -- PNG ----------------------------------------------------------------------------------

def png_bytes(width: int, height: int, rows: list[bytes]) -> bytes:
    """An RGBA PNG from rows of width*4 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + row for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def render(size: int, shader: Shader) -> bytes:
    """Evaluate `shader` at each pixel centre (coordinates in 0..1) into a PNG."""
    rows = []
    for y in range(size):
        row = bytearray()
        for x in range(size):
            r, g, b, a = shader((x + 0.5) / size, (y + 0.5) / size)
            row += bytes(round(max(0.0, min(1.0, v)) * 255) for v in (r, g, b, a))
        rows.append(bytes(row))
    return png_bytes(size, size, rows)


# -- shapes -------------------------------------------------------------------------------

def rounded_box(px: float, py: float, cx: float, cy: float, hw: float, hh: float, r: float) -> float:
    qx, qy = abs(px - cx) - hw + r, abs(py - cy) - hh + r
    outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
    return outside + min(max(qx, qy), 0.0) - r


def circle(px: float, py: float, cx: float, cy: float, r: float) -> float:
    return math.hypot(px - cx, py - cy) - r


def polygon(px: float, py: float, points: list[tuple[float, float]]) -> float:
    """Signed distance to a simple polygon (negative inside)."""
    best = float("inf")
    inside = False
    for i, (ax, ay) in enumerate(points):
        bx, by = points[i - 1]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        t = max(0.0, min(1.0, (wx * ex + wy * ey) / (ex * ex + ey * ey)))
        best = min(best, math.hypot(wx - ex * t, wy - ey * t))
        if (ay > py) != (by > py) and px < (bx - ax) * (py - ay) / (by - ay) + ax:
            inside = not inside
    return -best if inside else best


def coverage(distance_px: float) -> float:
    return max(0.0, min(1.0, 0.5 - distance_px))


def over(top: Pixel, bottom: Pixel) -> Pixel:
    """Porter-Duff 'over' for straight (not premultiplied) colours."""
    ta, ba = top[3], bottom[3]
    a = ta + ba * (1 - ta)
    if a <= 0:
        return (0.0, 0.0, 0.0, 0.0)
    mix = [(top[i] * ta + bottom[i] * ba * (1 - ta)) / a for i in range(3)]
    return (mix[0], mix[1], mix[2], a)


def hex_colour(text: str) -> Colour:
    return tuple(int(text[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


# -- the pictures -------------------------------------------------------------------------

INDIGO, SKY, WHITE = hex_colour("#4338ca"), hex_colour("#0ea5e9"), (1.0, 1.0, 1.0)


def icon_shader(size: int) -> Shader:
    scale = float(size)

    def gradient(x: float, y: float) -> Colour:
        t = max(0.0, min(1.0, (x + y) / 2))
        return tuple(INDIGO[i] + (SKY[i] - INDIGO[i]) * t for i in range(3))  # type: ignore[return-value]

    tail = [(0.30, 0.60), (0.46, 0.66), (0.24, 0.82)]

    def shade(x: float, y: float) -> Pixel:
        pixel: Pixel = (0.0, 0.0, 0.0, 0.0)
        bg = coverage(rounded_box(x, y, 0.5, 0.5, 0.47, 0.47, 0.22) * scale)
        if bg:
            pixel = over((*gradient(x, y), bg), pixel)
        bubble = min(rounded_box(x, y, 0.5, 0.45, 0.31, 0.23, 0.13), polygon(x, y, tail))
        cover = coverage(bubble * scale)
        if cover:
            pixel = over((*WHITE, cover), pixel)
        keyhole = min(circle(x, y, 0.5, 0.41, 0.07),
                      polygon(x, y, [(0.47, 0.42), (0.53, 0.42), (0.555, 0.56), (0.445, 0.56)]))
        cover = coverage(keyhole * scale)
        if cover:
            pixel = over((*gradient(x, y), cover), pixel)
        return pixel

    return shade


def lock_shader(size: int, colour: str = "#6d28d9") -> Shader:
    ink = hex_colour(colour)
    scale = float(size)

    def shade(x: float, y: float) -> Pixel:
        body = rounded_box(x, y, 0.5, 0.68, 0.36, 0.27, 0.08)
        ring = abs(circle(x, y, 0.5, 0.38, 0.22)) - 0.07
        shackle = ring if y < 0.45 else float("inf")
        for side in (0.28, 0.72):  # the shackle's legs down into the body
            if 0.38 <= y <= 0.5:
                shackle = min(shackle, abs(x - side) - 0.07)
        hole = circle(x, y, 0.5, 0.64, 0.075)
        shape = max(min(body, shackle), -hole)
        return (*ink, coverage(shape * scale))

    return shade


def dot_shader(size: int, colour: str) -> Shader:
    ink = hex_colour(colour)
    scale = float(size)

    def shade(x: float, y: float) -> Pixel:
        return (*ink, coverage(circle(x, y, 0.5, 0.5, 0.42) * scale))

    return shade


STATUS_COLOURS = {"online": "#2e9e4f", "away": "#e0a100", "dnd": "#d93025"}  # as chatview


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for size in (16, 32, 64, 256):
        files[f"icon-{size}.png"] = render(size, icon_shader(size))
    files["lock.png"] = render(14, lock_shader(14))
    files["lock@2x.png"] = render(28, lock_shader(28))
    for status, colour in STATUS_COLOURS.items():
        files[f"status-{status}.png"] = render(10, dot_shader(10, colour))
        files[f"status-{status}@2x.png"] = render(20, dot_shader(20, colour))
    for name, data in files.items():
        (out / name).write_bytes(data)
        print(f"wrote {out / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
