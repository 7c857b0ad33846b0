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
"""

from __future__ import annotations

SOURCE_REPO = "github.com/Nix07/spatial-variable-binding"
SIDE_OBJECTS_SOURCE = "behavioral_analysis/src/tasks/whatsup.py (MIDDLE_OBJECTS)"
REGIONS_SOURCE = "criss_cross_patching/src/regions.py (WHATSUP_OBJECT_REGIONS, WHATSUP_STRIP_REGIONS)"

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
