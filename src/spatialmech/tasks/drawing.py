"""Glyphs (filled squares, simple shapes, object icons) drawn with PIL primitives, cached as RGBA tiles.

Training renders thousands of images, so every glyph is drawn once per (kind, colour, size) at 4x and
downsampled (anti-aliased edges), then pasted; an image costs a few paste operations. Everything is
deterministic: same inputs, same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

from PIL import Image, ImageDraw

Color = tuple[int, int, int]
SUPERSAMPLE = 4
FILLED_SQUARE = "filled_square"  # the squares task: a solid block filling its whole box

# Unit-square drawing functions: (draw, size in px of the supersampled canvas, colour) -> None.
_Painter = Callable[[ImageDraw.ImageDraw, int, Color], None]


def _margin(size: int) -> float:
    return size * 0.06


def _square(draw: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    m = _margin(s)
    draw.rectangle((m, m, s - m, s - m), fill=color)


def _circle(draw: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    m = _margin(s)
    draw.ellipse((m, m, s - m, s - m), fill=color)


def _triangle(draw: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    m = _margin(s)
    draw.polygon([(s / 2, m), (s - m, s - m), (m, s - m)], fill=color)


def _star(draw: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    centre, outer, inner = s / 2, s / 2 - _margin(s), (s / 2 - _margin(s)) * 0.45
    points = []
    for i in range(10):
        radius = outer if i % 2 == 0 else inner
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((centre + radius * math.cos(angle), centre + 0.06 * s + radius * math.sin(angle)))
    draw.polygon(points, fill=color)


def _cross(draw: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    m, arm = _margin(s), s * 0.16
    draw.rectangle((m, s / 2 - arm, s - m, s / 2 + arm), fill=color)
    draw.rectangle((s / 2 - arm, m, s / 2 + arm, s - m), fill=color)


def _heart(draw: ImageDraw.ImageDraw, s: int, color: Color) -> None:
    m = _margin(s)
    r = (s - 2 * m) / 4
    draw.ellipse((m, m + r * 0.4, m + 2 * r, m + 2 * r + r * 0.4), fill=color)
    draw.ellipse((s / 2, m + r * 0.4, s / 2 + 2 * r, m + 2 * r + r * 0.4), fill=color)
    draw.polygon([(m + r * 0.08, m + r * 1.7), (s - m - r * 0.08, m + r * 1.7), (s / 2, s - m)], fill=color)


SHAPE_PAINTERS: dict[str, _Painter] = {
    "square": _square,
    "circle": _circle,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "heart": _heart,
}


MIN_MASTER_SIZE = 64  # icons and shapes are drawn once per power-of-two size >= 4x the box, then resized


@lru_cache(maxsize=256)
def _master(kind: str, color: Color, side: int) -> Image.Image:
    painter = SHAPE_PAINTERS.get(kind)
    if painter is None:
        from spatialmech.tasks.icons import ICON_PAINTERS

        painter = ICON_PAINTERS.get(kind)
    if painter is None:
        raise ValueError(f"no glyph named {kind!r}")
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    painter(ImageDraw.Draw(canvas), side, color)
    return canvas.convert("RGBa")  # premultiplied, so each resize skips two full-size conversions


@lru_cache(maxsize=4096)
def glyph(kind: str, color: Color, width: int, height: int) -> Image.Image:
    """An RGBA tile of `kind` ("filled_square", a shape name or an icon name) of the given size.

    Drawn once per kind and colour at >= 4x the target size and downsampled (anti-aliased edges).
    """
    if kind == FILLED_SQUARE:
        return Image.new("RGBA", (width, height), (*color, 255))
    side = max(MIN_MASTER_SIZE, 1 << (SUPERSAMPLE * max(width, height) - 1).bit_length())
    small = _master(kind, color, side).resize((width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return small.convert("RGBA")


def paste_glyph(image: Image.Image, kind: str, color: Color, box: tuple[int, int, int, int]) -> None:
    """Draw glyph `kind` into the pixel box (x0, y0, x1, y1) of an RGB image, alpha-blended."""
    x0, y0, x1, y1 = box
    tile = glyph(kind, tuple(color), x1 - x0, y1 - y0)
    if kind == FILLED_SQUARE:
        image.paste(tuple(color), box)
    else:
        image.paste(tile, (x0, y0), tile)
