"""The authors' What'sUp facts, kept as data (facts only; the code that uses them is ours).

Source: GitHub `Nix07/spatial-variable-binding` (the paper's code):
- `SIDE_OBJECTS`: `behavioral_analysis/src/tasks/whatsup.py` (`MIDDLE_OBJECTS`): the side objects they
  pair around each reference object, as What'sUp file-name stems. Each model keeps only the names that
  are one token for its tokenizer (lower-case and capitalised), so the answer is one next token.
- `STITCH_PX`: the same file (`WHATSUP_IMAGE_SIZE`): the square composite's side per model.
- `OBJECT_REGIONS` / `STRIP_REGIONS`: `criss_cross_patching/src/regions.py` (`WHATSUP_OBJECT_REGIONS`,
  `WHATSUP_STRIP_REGIONS`): left/right token boxes hand-labelled per reference object on Qwen2-VL's
  12x12 and Gemma3's 16x16 grids (no Pixtral map). Their lists of flat indices are all rectangles, so
  we keep them as cell boxes (row0, col0, row1, col1), exclusive ends, in this package's convention.
- `PROBE_BOXES`, `PROBE_SEED`, `PROBE_IMAGES`: `probing/src/whatsup.py` (`WHATSUP_BBOX_NORM`,
  `build_split`): the left / middle / right object boxes the ordinal probe reads, per reference, as
  fractions of the image (labelled on a 64x64 grid), mapped to any model's grid by `probe_box`; and
  the probe's images: every (left, reference, right) with both photos, shuffled with seed 42, the
  first 120, split 75/25 in that order.
"""

from __future__ import annotations

SOURCE_REPO = "github.com/Nix07/spatial-variable-binding"
SIDE_OBJECTS_SOURCE = "behavioral_analysis/src/tasks/whatsup.py (MIDDLE_OBJECTS)"
REGIONS_SOURCE = "criss_cross_patching/src/regions.py (WHATSUP_OBJECT_REGIONS, WHATSUP_STRIP_REGIONS)"
PROBE_SOURCE = "probing/src/whatsup.py (WHATSUP_BBOX_NORM, build_split)"

REFERENCES: tuple[str, ...] = ("chair", "table", "armchair")

SIDE_OBJECTS: dict[str, tuple[str, ...]] = {
    "chair": (
        "bottle-of-orange-juice", "oven-mitt", "toy-cactus", "plate", "headphones", "pot",
        "water-bottle", "box", "plant", "banana", "mug", "blanket", "beer-bottle", "book",
        "cap", "orange", "bottle", "laptop", "knife", "scissors", "cup", "pan",
        "bottle-of-mustard", "pillow", "vase", "kettle", "bowl", "sunglasses", "water-filter",
        "lemon", "hat", "toilet-roll", "dragonfruit", "remote", "spatula", "painting",
        "helmet", "photograph", "shoes", "microphone", "scarf", "wineglass", "can",
        "ball-of-yarn",
    ),
    "table": (
        "kettle", "bowl", "dog", "sunglasses", "lamp", "chair", "toilet-roll", "dragonfruit",
        "spatula", "lemon", "helmet", "painting", "scarf", "wineglass", "ball-of-yarn",
        "plate", "plant", "banana", "chair2", "mug", "book", "phone", "orange", "cap",
        "bottle", "scissors", "cup", "pillow", "knife",
    ),
    "armchair": (
        "yarn", "water-bottle", "pan", "orange", "scarf", "cap", "bowl", "apple", "mug",
        "book", "soda-can", "beer-bottle", "glass", "cup", "glove", "tape", "bread",
        "bottle", "wineglass", "glasses", "can", "rose", "phone", "notepad", "plate",
        "headphones", "banjo", "remote", "sunglasses", "pillow", "laptop",
    ),
}

# Composite side in pixels per model (keyed by our geometry preset names).
STITCH_PX: dict[str, int] = {"qwen": 336, "gemma": 896, "pixtral": 512}

Box = tuple[int, int, int, int]

# tokens per side -> reference -> side -> cell box (row0, col0, row1, col1).
OBJECT_REGIONS: dict[int, dict[str, dict[str, Box]]] = {
    12: {
        "chair": {"left": (8, 1, 11, 4), "right": (8, 8, 11, 11)},
        "table": {"left": (6, 0, 11, 3), "right": (6, 9, 11, 12)},
        "armchair": {"left": (9, 1, 11, 4), "right": (9, 8, 11, 11)},
    },
    16: {
        "chair": {"left": (12, 3, 15, 6), "right": (12, 10, 15, 13)},
        "table": {"left": (10, 2, 15, 4), "right": (10, 12, 15, 14)},
        "armchair": {"left": (13, 2, 15, 5), "right": (13, 11, 15, 14)},
    },
}

STRIP_REGIONS: dict[int, dict[str, dict[str, Box]]] = {
    12: {
        "chair": {"left": (0, 0, 12, 4), "right": (0, 8, 12, 12)},
        "table": {"left": (0, 0, 12, 3), "right": (0, 9, 12, 12)},
        "armchair": {"left": (0, 0, 12, 4), "right": (0, 8, 12, 12)},
    },
    16: {
        "chair": {"left": (0, 0, 16, 6), "right": (0, 10, 16, 16)},
        "table": {"left": (0, 0, 16, 6), "right": (0, 12, 16, 16)},
        "armchair": {"left": (0, 0, 16, 5), "right": (0, 11, 16, 16)},
    },
}


def regions(tokens_per_side: int, reference: str, kind: str = "object") -> dict[str, Box] | None:
    """The hand-labelled {left, right} cell boxes for one reference object, or None where the authors
    labelled none (grids other than 12x12 and 16x16, e.g. Pixtral)."""
    table = OBJECT_REGIONS if kind == "object" else STRIP_REGIONS
    if kind not in ("object", "strip"):
        raise ValueError(f"kind must be 'object' or 'strip', got {kind!r}")
    return table.get(tokens_per_side, {}).get(reference)


def box_indices(box: Box, tokens_per_side: int) -> list[int]:
    """A cell box as flat raster indices (row * N + col), the authors' form of a region."""
    row0, col0, row1, col1 = box
    return [r * tokens_per_side + c for r in range(row0, row1) for c in range(col0, col1)]


# reference -> position -> (row0, row1, col0, col1) in 64ths of the image side (their 64x64 labelling grid).
PROBE_BOXES: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "chair": {"left": (48, 60, 12, 24), "middle": (16, 60, 24, 40), "right": (48, 60, 40, 52)},
    "table": {"left": (40, 60, 8, 16), "middle": (20, 60, 16, 48), "right": (40, 60, 48, 56)},
    "armchair": {"left": (52, 60, 8, 20), "middle": (24, 60, 20, 44), "right": (52, 60, 44, 56)},
}
PROBE_SEED = 42
PROBE_IMAGES = 120


def probe_box(reference: str, position: str, tokens_per_side: int) -> Box:
    """Their box of `position` (left/middle/right) around `reference` as a cell box on an N x N grid:
    start rows/columns rounded down, ends rounded to nearest, at least one cell, within the grid."""
    r0, r1, c0, c1 = (v / 64 for v in PROBE_BOXES[reference][position])
    n = tokens_per_side

    def span(start: float, end: float) -> tuple[int, int]:
        first = max(0, int(start * n))
        return first, max(first + 1, min(n, round(end * n)))

    (row0, row1), (col0, col1) = span(r0, r1), span(c0, c1)
    return row0, col0, row1, col1
