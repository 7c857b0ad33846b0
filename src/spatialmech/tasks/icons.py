"""Eight object icons of our own, drawn with PIL primitives (the paper's PNGs are not redistributable).

Each icon has one dominant body colour (`ICON_COLORS`, distinct across icons: red apple, gold bell,
black bomb, purple hat, silver key, orange orange, blue pot, pink rose) plus small details in other
colours, so both colour and silhouette tell them apart. Painters draw into a transparent square
canvas of side `s` in unit coordinates scaled by `s`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import ImageDraw

Color = tuple[int, int, int]

ICON_COLORS: dict[str, Color] = {
    "apple": (214, 32, 38),
    "bell": (228, 178, 30),
    "bomb": (32, 32, 36),
    "hat": (118, 48, 168),
    "key": (158, 160, 170),
    "orange": (250, 138, 18),
    "pot": (38, 88, 190),
    "rose": (226, 44, 122),
}

LEAF = (46, 140, 52)
STEM = (110, 70, 30)
CLEAR = (0, 0, 0, 0)


def _darker(color: Color, factor: float = 0.6) -> Color:
    return tuple(int(c * factor) for c in color)


def _lighter(color: Color, amount: float = 0.5) -> Color:
    return tuple(int(c + (255 - c) * amount) for c in color)


def _box(s: int, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    return (x0 * s, y0 * s, x1 * s, y1 * s)


def _apple(d: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    d.ellipse(_box(s, 0.10, 0.26, 0.60, 0.92), fill=color)
    d.ellipse(_box(s, 0.40, 0.26, 0.90, 0.92), fill=color)
    d.ellipse(_box(s, 0.18, 0.34, 0.82, 0.96), fill=color)
    d.line([(0.5 * s, 0.34 * s), (0.46 * s, 0.10 * s)], fill=STEM, width=max(1, int(0.06 * s)))
    d.ellipse(_box(s, 0.52, 0.08, 0.82, 0.24), fill=LEAF)
    d.ellipse(_box(s, 0.24, 0.40, 0.34, 0.56), fill=_lighter(color, 0.55))


def _bell(d: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    d.ellipse(_box(s, 0.44, 0.04, 0.56, 0.16), fill=_darker(color, 0.75))
    d.ellipse(_box(s, 0.24, 0.12, 0.76, 0.60), fill=color)
    d.polygon([(0.24 * s, 0.38 * s), (0.76 * s, 0.38 * s), (0.88 * s, 0.80 * s), (0.12 * s, 0.80 * s)], fill=color)
    d.rounded_rectangle(_box(s, 0.06, 0.74, 0.94, 0.86), radius=0.05 * s, fill=_darker(color, 0.8))
    d.ellipse(_box(s, 0.42, 0.80, 0.58, 0.96), fill=(90, 60, 20))
    d.ellipse(_box(s, 0.34, 0.22, 0.44, 0.50), fill=_lighter(color, 0.5))


def _bomb(d: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    d.ellipse(_box(s, 0.08, 0.28, 0.80, 1.00), fill=color)
    d.rectangle(_box(s, 0.50, 0.22, 0.70, 0.38), fill=(90, 90, 96))
    d.line([(0.60 * s, 0.24 * s), (0.66 * s, 0.12 * s), (0.80 * s, 0.08 * s)], fill=STEM, width=max(1, int(0.045 * s)))
    cx, cy, outer, inner = 0.84 * s, 0.08 * s, 0.09 * s, 0.035 * s
    spark = [
        (cx + (outer if i % 2 == 0 else inner) * math.cos(i * math.pi / 4), cy + (outer if i % 2 == 0 else inner) * math.sin(i * math.pi / 4))
        for i in range(8)
    ]
    d.polygon(spark, fill=(255, 196, 0))
    d.ellipse(_box(s, 0.20, 0.42, 0.32, 0.56), fill=_lighter(color, 0.35))


def _hat(d: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    d.ellipse(_box(s, 0.02, 0.70, 0.98, 0.92), fill=color)
    d.rectangle(_box(s, 0.24, 0.16, 0.76, 0.80), fill=color)
    d.ellipse(_box(s, 0.24, 0.10, 0.76, 0.22), fill=_lighter(color, 0.25))
    d.rectangle(_box(s, 0.24, 0.60, 0.76, 0.70), fill=(30, 30, 30))


def _key(d: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    d.ellipse(_box(s, 0.04, 0.26, 0.48, 0.74), fill=color)
    d.ellipse(_box(s, 0.15, 0.39, 0.33, 0.61), fill=CLEAR)
    d.rectangle(_box(s, 0.42, 0.43, 0.96, 0.57), fill=color)
    d.rectangle(_box(s, 0.70, 0.55, 0.78, 0.72), fill=color)
    d.rectangle(_box(s, 0.84, 0.55, 0.92, 0.78), fill=color)
    d.ellipse(_box(s, 0.08, 0.30, 0.20, 0.42), fill=_lighter(color, 0.5))


def _orange(d: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    d.ellipse(_box(s, 0.08, 0.16, 0.92, 0.98), fill=color)
    for x, y in ((0.30, 0.40), (0.62, 0.34), (0.46, 0.62), (0.72, 0.68), (0.26, 0.74)):
        d.ellipse(_box(s, x - 0.015, y - 0.015, x + 0.015, y + 0.015), fill=_darker(color, 0.8))
    d.ellipse(_box(s, 0.46, 0.06, 0.74, 0.20), fill=LEAF)
    d.ellipse(_box(s, 0.46, 0.14, 0.54, 0.22), fill=STEM)


def _pot(d: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    d.rectangle(_box(s, 0.00, 0.46, 0.16, 0.54), fill=(60, 60, 66))
    d.rectangle(_box(s, 0.84, 0.46, 1.00, 0.54), fill=(60, 60, 66))
    d.rounded_rectangle(_box(s, 0.14, 0.34, 0.86, 0.90), radius=0.10 * s, fill=color)
    d.rectangle(_box(s, 0.10, 0.30, 0.90, 0.38), fill=_darker(color, 0.7))
    d.pieslice(_box(s, 0.18, 0.16, 0.82, 0.44), 180, 360, fill=_lighter(color, 0.3))
    d.ellipse(_box(s, 0.44, 0.10, 0.56, 0.20), fill=(60, 60, 66))


def _rose(d: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    d.line([(0.50 * s, 0.56 * s), (0.50 * s, 0.99 * s)], fill=LEAF, width=max(1, int(0.06 * s)))
    d.ellipse(_box(s, 0.18, 0.66, 0.48, 0.80), fill=LEAF)
    d.ellipse(_box(s, 0.52, 0.74, 0.82, 0.88), fill=LEAF)
    d.ellipse(_box(s, 0.14, 0.10, 0.58, 0.54), fill=color)
    d.ellipse(_box(s, 0.42, 0.10, 0.86, 0.54), fill=color)
    d.ellipse(_box(s, 0.22, 0.02, 0.78, 0.62), fill=color)
    dark = _darker(color, 0.65)
    width = max(1, int(0.035 * s))
    d.arc(_box(s, 0.34, 0.18, 0.66, 0.46), 200, 520, fill=dark, width=width)
    d.arc(_box(s, 0.42, 0.26, 0.58, 0.40), 20, 300, fill=dark, width=width)


ICON_PAINTERS: dict[str, Callable[[ImageDraw.ImageDraw, int, Color], None]] = {
    "apple": _apple,
    "bell": _bell,
    "bomb": _bomb,
    "hat": _hat,
    "key": _key,
    "orange": _orange,
    "pot": _pot,
    "rose": _rose,
}
