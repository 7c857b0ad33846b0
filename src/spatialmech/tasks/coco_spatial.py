"""`coco-spatial`: What'sUp's COCO two-object questions joined with COCO's own boxes (SPEC section 3).

Data root layout (also accepted one level down in `data/`):
    coco_qa_two_obj.json                   What'sUp: [image_id, correct_caption, distractor]
    val2017/{image_id:012d}.jpg            COCO 2017 validation images
    annotations/instances_val2017.json     COCO 2017 validation instance annotations

All 440 entries of the authors' copy (150 left, 129 right, 86 above, 75 below) are items, as in their
coco_amplification code: each object's box is the largest COCO instance of its category in the image
(by box area, their `find_coco_bbox`), so an image with several chairs still gives an item. Where COCO
has no instance of a category they ask a Grounding-DINO detector; we run no detector, so such an entry
is dropped and counted in `stats["skipped"]["no_coco_box"]` (What'sUp wrote these captions from COCO's
own annotations, so on the real files none should be). Same-category pairs are kept (both get the same
box, `meta["boxes_agree"]` is then False, which the paper-protocol probe drops as they do).
Each item is the forced-choice question of `prompts.py` in the authors' COCO wording, styled for the
model family the task is built for (`prompts.PAPER_PROMPT_STYLE`: Gemma3 its own question, others the
reference-point one), with both option orders for strict scoring (chance 1/4). `objects` =
[subject, reference] with COCO boxes in pixels; `grid` is None.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

from spatialmech import io
from spatialmech.errors import UserInputError
from spatialmech.tasks.base import CF_BLANK, Counterfactual, DataTask, Item, SceneObject
from spatialmech.tasks.prompts import forced_choice_fields, prompt_style_for
from spatialmech.tasks.synthetic import subset
from spatialmech.tasks.vocabulary import answer_variants
from spatialmech.tasks.whatsup import QA_FILES, find_data_file, load_caption_questions, resolve_image

RELATIONS = ("left", "right", "above", "below")
ANNOTATIONS_FILE = "annotations/instances_val2017.json"
_SHAPE_FIX = 'it must be COCO instances JSON with "images", "annotations" and "categories" lists'


def _bad(path: Path, detail: str) -> UserInputError:
    return UserInputError(f"COCO annotation file {path} has the wrong shape ({detail})", _SHAPE_FIX)


def load_instances(path: Path) -> tuple[dict[int, tuple[int, int]], dict[int, dict[str, list[list[float]]]]]:
    """(image id -> (width, height), image id -> category name -> boxes [x, y, w, h]) from COCO JSON."""
    data = io.read_json(path, what="COCO annotation file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise _bad(path, "missing lists")
    names: dict[int, str] = {}
    for index, category in enumerate(data["categories"]):
        if not (isinstance(category, dict) and isinstance(category.get("id"), int) and isinstance(category.get("name"), str)):
            raise _bad(path, f"category {index}")
        names[category["id"]] = category["name"].strip().lower()
    sizes: dict[int, tuple[int, int]] = {}
    for index, image in enumerate(data["images"]):
        if not (isinstance(image, dict) and all(isinstance(image.get(k), int) for k in ("id", "width", "height"))):
            raise _bad(path, f"image {index}")
        sizes[image["id"]] = (image["width"], image["height"])
    boxes: dict[int, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for index, annotation in enumerate(data["annotations"]):
        bbox = annotation.get("bbox") if isinstance(annotation, dict) else None
        if not (
            isinstance(annotation, dict)
            and isinstance(annotation.get("image_id"), int)
            and annotation.get("category_id") in names
            and isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        ):
            raise _bad(path, f"annotation {index}")
        boxes[annotation["image_id"]][names[annotation["category_id"]]].append([float(v) for v in bbox])
    return sizes, boxes


def _pixel_box(bbox: list[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """COCO [x, y, w, h] (floats) as an integer (x0, y0, x1, y1) box covering it, inside the image."""
    x, y, w, h = bbox
    width, height = size
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(width, max(x0 + 1, int(-(-(x + w) // 1)))), min(height, max(y0 + 1, int(-(-(y + h) // 1))))
    return (x0, y0, x1, y1)


def largest_box(boxes: list[list[float]]) -> list[float]:
    """The COCO [x, y, w, h] box of largest area (w * h; the first of equals), as the authors pick."""
    return max(boxes, key=lambda box: box[2] * box[3])


def _boxes_agree(subject: tuple[int, int, int, int], reference: tuple[int, int, int, int], relation: str) -> bool:
    """Do the box centres order the two objects the way the caption says?"""
    axis = 0 if relation in ("left", "right") else 1
    s, r = (subject[axis] + subject[axis + 2]) / 2, (reference[axis] + reference[axis + 2]) / 2
    return s < r if relation in ("left", "above") else s > r


class CocoSpatialTask(DataTask):
    """COCO-spatial two-object questions with COCO boxes; strict scoring via both option orders."""

    name = "coco-spatial"
    description = "What'sUp COCO two-object left/right/above/below questions with COCO boxes"
    counterfactual_kinds = (CF_BLANK,)

    def _annotations_path(self) -> Path:
        for name in (ANNOTATIONS_FILE, "instances_val2017.json"):
            try:
                return find_data_file(self.root, name, "COCO annotation file")
            except UserInputError:
                continue
        return find_data_file(self.root, ANNOTATIONS_FILE, "COCO annotation file")  # raises with the usual message

    def check_data(self) -> None:
        self._annotations_path()
        find_data_file(self.root, QA_FILES[("coco", "two")], "What'sUp file")

    def all_items(self) -> list[Item]:
        if self._items is not None:
            return self._items
        questions = load_caption_questions(self.root, "coco", "two")
        sizes, boxes = load_instances(self._annotations_path())
        skipped: Counter[str] = Counter()
        items = []
        several = 0
        style = prompt_style_for(getattr(self.geometry, "family", None))
        root = self.root.resolve()
        for index, question in enumerate(questions):
            if question.relation not in RELATIONS or question.reference is None:
                skipped["relation"] += 1
                continue
            image_id = int(question.image_id)
            if image_id not in sizes:
                skipped["no_coco_box"] += 1
                continue
            per_category = boxes.get(image_id, {})
            subject_boxes, reference_boxes = per_category.get(question.subject, []), per_category.get(question.reference, [])
            if not subject_boxes or not reference_boxes:
                skipped["no_coco_box"] += 1
                continue
            several += len(subject_boxes) > 1 or len(reference_boxes) > 1
            file = resolve_image(self.root, question.image_path)
            size = sizes[image_id]
            subject_box, reference_box = (_pixel_box(largest_box(found), size) for found in (subject_boxes, reference_boxes))
            axis = "horizontal" if question.relation in ("left", "right") else "vertical"
            first = question.relation in ("left", "above")
            fields = forced_choice_fields(question.subject, question.reference, axis, style=style, paper=True)
            items.append(
                Item(
                    id=f"coco-spatial/{index}/{image_id}",
                    task=self.name,
                    prompt=fields["prompt"],
                    answer=question.relation,
                    answer_variants=answer_variants(question.relation),
                    axis=axis,
                    relation=question.relation,
                    reference=1,
                    target=0,
                    objects=[
                        SceneObject(question.subject, question.subject, subject_box, ordinal={axis: 0 if first else 1}),
                        SceneObject(question.reference, question.reference, reference_box, ordinal={axis: 1 if first else 0}),
                    ],
                    image_size=size,
                    image_path=str(file.relative_to(root)),
                    options=fields["options"],
                    meta={
                        **fields["meta"],
                        "image_id": image_id,
                        "captions": [question.correct, question.distractor],
                        "boxes_agree": _boxes_agree(subject_box, reference_box, question.relation),
                    },
                )
            )
        if not items:
            raise UserInputError(
                f"no usable COCO-spatial questions in {self.root} ({dict(skipped)} skipped)",
                "check that coco_qa_two_obj.json and instances_val2017.json (COCO 2017 val) belong together",
            )
        self.stats = {
            "entries": len(questions),
            "items": len(items),
            "horizontal": sum(i.axis == "horizontal" for i in items),
            "vertical": sum(i.axis == "vertical" for i in items),
            "per_relation": {r: sum(i.relation == r for i in items) for r in RELATIONS},
            "largest_of_several_instances": several,
            "prompt_style": style,
            "skipped": dict(skipped),
        }
        self._items = items
        return items

    def items(self, n: int | None = None, seed: int = 0) -> list[Item]:
        return subset(self.all_items(), n, seed)

    def image(self, item: Item) -> Image.Image:
        if item.image_path is None:  # a blank counterfactual
            return Image.new("RGB", tuple(item.image_size), (255, 255, 255))
        return io.open_image(io.resolve_under(self.root, item.image_path, "image_path"), "COCO image")

    def counterfactuals(self, item: Item, kind: str) -> list[Counterfactual]:
        if kind != CF_BLANK:
            raise UserInputError(f"task coco-spatial has no {kind!r} counterfactuals", "use the synthetic tasks for that experiment")
        blank = Item(**{**vars(item), "id": f"{item.id}#{kind}", "objects": [], "reference": -1, "target": -1,
                        "image_path": None, "meta": {"role": kind, "clean_id": item.id}})
        return [Counterfactual(kind, blank)]
