"""Tiny data sets written per test in the real files' forms (What'sUp repository layout, the authors'
COCO-spatial entries, COCO instances JSON), so conformance tests need no downloads.

- What'sUp: `<root>/data/controlled_images_dataset.json` whose `image_path` values read
  `data/controlled_images/<obj>_<left_of|right_of|on|under>_<ref>.jpeg` (relative to the repository
  root, as What'sUp's dataset_zoo/aro_datasets.py writes them), and subset B
  `data/controlled_clevr_dataset.json` with `in-front_of` / `behind` names. Each photo: the reference
  (brown) centred across the midline, the side object (its own colour) on its side.
- COCO: `coco_qa_two_obj.json` entries `[image_id, "A photo of a X to the left of a Y", distractor]`
  like the authors' copy, `val2017/{id:012d}.jpg`, `annotations/instances_val2017.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REFERENCE_COLOR = (120, 70, 20)
SIDE_COLORS = {"pot": (220, 30, 30), "hat": (30, 60, 220), "orange": (240, 140, 0), "beer-bottle": (150, 40, 170),
               "mug": (30, 170, 60), "apple": (200, 0, 120), "rose": (90, 200, 200), "cube": (10, 10, 10),
               "sphere": (250, 250, 0), "plant": (0, 120, 0), "cup": (255, 255, 255)}
PHOTO = (160, 120)  # width, height (What'sUp photos are 4:3)


def photo(side: str, relation: str) -> Image.Image:
    """Reference block centred over the midline; the side object left or right of it (or above/below)."""
    image = Image.new("RGB", PHOTO, (210, 210, 210))
    draw = ImageDraw.Draw(image)
    draw.rectangle((60, 40, 100, 100), fill=REFERENCE_COLOR)
    box = {"left_of": (8, 60, 40, 100), "right_of": (120, 60, 152, 100), "on": (68, 5, 92, 35),
           "under": (68, 102, 92, 118), "in-front_of": (66, 90, 94, 118), "behind": (70, 10, 90, 38)}[relation]
    draw.rectangle(box, fill=SIDE_COLORS[side])
    return image


def write_whatsup(root: Path, photos: list[tuple[str, str, str]], clevr: list[tuple[str, str, str]] = ()) -> Path:
    """A What'sUp checkout at `root` (the JSON files and images in `root/data`, as its download leaves them)."""
    for name, folder, entries in (("controlled_images_dataset.json", "controlled_images", photos),
                                  ("controlled_clevr_dataset.json", "controlled_clevr", clevr)):
        rows = []
        for side, relation, reference in entries:
            image_path = f"data/{folder}/{side}_{relation}_{reference}.jpeg"
            (root / image_path).parent.mkdir(parents=True, exist_ok=True)
            photo(side, relation).save(root / image_path, quality=95)
            text = f"A {side.replace('-', ' ')} {relation.replace('_', ' ').replace('-', ' ')} a {reference}"
            rows.append({"image_path": image_path, "caption_options": [text, text + " (distractor)"]})
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "data" / name).write_text(json.dumps(rows))
    return root


@pytest.fixture
def whatsup_root(tmp_path: Path) -> Path:
    """chair: pot, hat, orange with both photos, beer-bottle (several tokens for any tokenizer here) with
    both, mug only left-of; armchair: apple and rose; table: orange only (no pair)."""
    entries = []
    for side in ("pot", "hat", "orange", "beer-bottle"):
        entries += [(side, "left_of", "chair"), (side, "right_of", "chair")]
    entries += [("mug", "left_of", "chair"), ("pot", "on", "chair"), ("hat", "under", "chair")]
    for side in ("apple", "rose"):
        entries += [(side, "left_of", "armchair"), (side, "right_of", "armchair")]
    entries += [("orange", "left_of", "table"), ("orange", "right_of", "table")]
    clevr = [("cube", "left_of", "sphere"), ("cube", "in-front_of", "sphere"), ("sphere", "behind", "cube")]
    return write_whatsup(tmp_path / "whatsup_vlms", entries, clevr)


COCO_ENTRIES = [
    # (image id, correct caption, distractor) in the authors' wording; several chairs in image 1.
    (1, "A photo of a dining table to the left of a refrigerator", "A photo of a dining table to the right of a refrigerator"),
    (1, "A photo of a chair to the right of a dining table", "A photo of a chair to the left of a dining table"),
    (1, "A photo of a chair below a refrigerator", "A photo of a chair above a refrigerator"),
    (2, "A photo of a cup above a dog", "A photo of a cup below a dog"),
    (2, "A photo of a dog to the left of a bird", "A photo of a dog to the right of a bird"),  # no bird in COCO
]
COCO_BOXES = {  # image id -> [(category, [x, y, w, h])]
    1: [("dining table", [10, 60, 60, 40]), ("refrigerator", [120, 10, 60, 120]),
        ("chair", [80, 100, 10, 10]), ("chair", [75, 140, 40, 35]), ("chair", [5, 5, 8, 8])],
    2: [("cup", [20, 10, 30, 30]), ("dog", [10, 80, 100, 60])],
}


def write_coco(root: Path) -> Path:
    """A COCO-spatial data root: the QA file, val2017 images and instances JSON."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "coco_qa_two_obj.json").write_text(json.dumps([list(e) for e in COCO_ENTRIES]))
    names = sorted({c for boxes in COCO_BOXES.values() for c, _ in boxes} | {"bird"})
    ids = {name: i + 1 for i, name in enumerate(names)}
    annotations = []
    for image_id, boxes in COCO_BOXES.items():
        Image.new("RGB", (200, 180), (90, 90, 90)).save(root / "val2017" / f"{image_id:012d}.jpg")
        annotations += [{"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[c], "bbox": b} for c, b in boxes]
    instances = {"images": [{"id": i, "width": 200, "height": 180} for i in COCO_BOXES],
                 "annotations": annotations, "categories": [{"id": i, "name": n} for n, i in ids.items()]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    return root
