"""Where synthetic objects go on a model's token grid.

The paper draws every synthetic stimulus so that objects sit exactly on LM tokens (SPEC section 3,
Table 4): an object covers k x k tokens, neighbours are k tokens apart, and a "strip" (the band of
background tokens that shares an object's position along the axis) is object + spacing tokens wide.
The geometry is a property of the model (its token grid), so it comes from the adapter's `GridSpec`
for any model, with the paper's two geometries as named presets.

Cell boxes are (row0, col0, row1, col1) and pixel boxes (x0, y0, x1, y1), both with exclusive ends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from spatialmech.errors import UserInputError

SLOTS = 3  # objects per synthetic layout


@dataclass(frozen=True)
class GridGeometry:
    """A square token grid plus the object size, spacing and strip width used on it (all in tokens)."""

    tokens_per_side: int
    pixels_per_token: int
    object_tokens: int
    spacing_tokens: int
    strip_tokens: int
    name: str = "custom"
    note: str = ""
    family: str | None = None  # the model family whose grid this is (tasks pick the authors' per-family prompt by it)  # why this is not the size asked for (e.g. a processor capped below the preset)

    def __post_init__(self) -> None:
        if min(self.tokens_per_side, self.pixels_per_token, self.object_tokens) < 1 or self.spacing_tokens < 0:
            raise UserInputError(f"invalid grid geometry {self}", "use positive token counts and pixel sizes")
        if self.span_tokens > self.tokens_per_side:
            raise UserInputError(
                f"grid geometry {self.name!r}: 3 objects of {self.object_tokens} tokens spaced {self.spacing_tokens} "
                f"apart need {self.span_tokens} tokens but the grid has {self.tokens_per_side} per side",
                "use a smaller object size or spacing, or a model with a larger token grid",
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_grid_spec(cls, spec: Any, name: str | None = None) -> GridGeometry:
        """The geometry for a model grid: the authors' preset when the grid is the preset's (the spec
        names it in `preset`), else the paper's rule object = spacing = k = tokens_per_side // 5, strip = 2k.

        `spec` is a `models.base.GridSpec` (or anything with `tokens_per_side` and `pixels_per_token`,
        or a dict with those keys).
        """
        get = spec.get if isinstance(spec, dict) else (lambda key: getattr(spec, key, None))
        tokens, pixels = get("tokens_per_side"), get("pixels_per_token")
        note, family = get("note") or "", get("family")
        known = PRESETS.get(get("preset") or "")
        if known is not None and (known.tokens_per_side, known.pixels_per_token) == (tokens, pixels):
            return replace(known, note=note, family=family)
        if not isinstance(tokens, int) or not isinstance(pixels, int) or tokens < 1 or pixels < 1:
            raise UserInputError(f"grid spec {spec!r} has no valid tokens_per_side / pixels_per_token", "pass a model GridSpec")
        k = tokens // 5
        if k < 1:
            raise UserInputError(
                f"a {tokens}x{tokens} token grid is too small for 3 objects (needs at least 5 tokens per side)",
                "use a model (or image size) with a larger token grid",
            )
        return cls(tokens, pixels, k, k, 2 * k, name=name or f"grid{tokens}x{pixels}px", note=note, family=family)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridGeometry:
        fields = ("tokens_per_side", "pixels_per_token", "object_tokens", "spacing_tokens", "strip_tokens", "name", "note", "family")
        return cls(**{key: data[key] for key in fields if key in data})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------ sizes
    @property
    def image_size(self) -> int:
        """Side of the square image in pixels."""
        return self.tokens_per_side * self.pixels_per_token

    @property
    def span_tokens(self) -> int:
        """Tokens covered along the axis by the 3 objects and the 2 gaps between them."""
        return SLOTS * self.object_tokens + (SLOTS - 1) * self.spacing_tokens

    # ------------------------------------------------------------------ layout
    def slot_cells(self, axis: str, slot: int) -> tuple[int, int, int, int]:
        """Cell box of object `slot` (0, 1, 2 along the axis) of a 3-object layout centred on the grid."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot must be 0..{SLOTS - 1}, got {slot}")
        k = self.object_tokens
        along = (self.tokens_per_side - self.span_tokens) // 2 + slot * (k + self.spacing_tokens)
        across = (self.tokens_per_side - k) // 2
        if axis == "horizontal":
            return (across, along, across + k, along + k)
        if axis == "vertical":
            return (along, across, along + k, across + k)
        raise ValueError(f"axis must be 'horizontal' or 'vertical', got {axis!r}")

    def centre_cells(self) -> tuple[int, int, int, int]:
        """Cell box of one object alone at the (token-aligned) centre of the grid."""
        k = self.object_tokens
        start = (self.tokens_per_side - k) // 2
        return (start, start, start + k, start + k)

    def cells_to_px(self, cells: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        row0, col0, row1, col1 = cells
        p = self.pixels_per_token
        return (col0 * p, row0 * p, col1 * p, row1 * p)

    def px_to_cells(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """The cells a pixel box touches (exact for token-aligned boxes, covering otherwise)."""
        x0, y0, x1, y1 = box
        p, n = self.pixels_per_token, self.tokens_per_side
        return (
            max(0, y0 // p), max(0, x0 // p), min(n, -(-y1 // p)), min(n, -(-x1 // p)),
        )

    def strip_cells(self, cells: tuple[int, int, int, int], axis: str) -> tuple[int, int, int, int]:
        """The strip of an object: the full-height column band (horizontal axis) or full-width row band
        (vertical axis) of `strip_tokens` centred on the object, clipped to the grid."""
        row0, col0, row1, col1 = cells
        n = self.tokens_per_side
        if axis == "horizontal":
            start = max(0, col0 - (self.strip_tokens - (col1 - col0)) // 2)
            return (0, start, n, min(n, start + self.strip_tokens))
        start = max(0, row0 - (self.strip_tokens - (row1 - row0)) // 2)
        return (start, 0, min(n, start + self.strip_tokens), n)

    def strip_bands(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """The three strips that tile the grid along an axis, as the authors' criss-cross
        (criss_cross_patching/src/regions.py): middle = object + spacing, the two outer strips equal,
        (N - middle) // 2 each, the middle taking the remainder: Qwen 4/4/4, Gemma 5/6/5, Pixtral 5/5/5.
        Equal outer strips make the end swap pair tokens 1:1. As (start, end) token ranges."""
        n = self.tokens_per_side
        outer = (n - (self.object_tokens + self.spacing_tokens)) // 2
        return ((0, outer), (outer, n - outer), (n - outer, n))

    def tiling_strip_cells(self, cells: tuple[int, int, int, int], axis: str) -> tuple[int, int, int, int]:
        """The cell box of the `strip_bands` strip holding the object's centre (full band across)."""
        row0, col0, row1, col1 = cells
        n = self.tokens_per_side
        centre = (col0 + col1 - 1) / 2 if axis == "horizontal" else (row0 + row1 - 1) / 2
        start, end = next(band for band in self.strip_bands() if band[0] <= centre < band[1])
        return (0, start, n, end) if axis == "horizontal" else (start, 0, end, n)


# The authors' geometries (their shared/experiment_config.py GEOM and STRIP_WIDTH, shared/GEOMETRY.md):
# Qwen2-VL and Gemma3 as the paper's Table 4; Pixtral 15x15 tokens of 16 px (its patch stride; Table 4
# says 16x15, the code explains why 15x16). Adapters name theirs (`VLMAdapter.paper_preset`).
QWEN = GridGeometry(tokens_per_side=12, pixels_per_token=28, object_tokens=2, spacing_tokens=2, strip_tokens=4, name="qwen")
GEMMA = GridGeometry(tokens_per_side=16, pixels_per_token=56, object_tokens=3, spacing_tokens=3, strip_tokens=3, name="gemma")
PIXTRAL = GridGeometry(tokens_per_side=15, pixels_per_token=16, object_tokens=2, spacing_tokens=2, strip_tokens=2, name="pixtral")
PRESETS: dict[str, GridGeometry] = {"qwen": QWEN, "gemma": GEMMA, "pixtral": PIXTRAL}


def preset(name: str) -> GridGeometry:
    """A named geometry (case-insensitive), with a one-line error listing the presets."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise UserInputError(f"unknown geometry {name!r}", f"use one of {', '.join(PRESETS)} or --model")
    return PRESETS[key]
