"""Loaders for the What'sUp benchmark files (Kamath et al., 2023) and the stitched 3-object task.

Formats (SPEC section 3), all read through `io.read_json` and checked for shape, so a wrong file gives
a one-line error naming the file and the entry:
- `controlled_images_dataset.json` (subset A) / `controlled_clevr_dataset.json` (subset B): a list of
  {"image_path": "data/controlled_images/<obj>_<left_of|right_of|on|under>_<ref>.jpeg",
  "caption_options": [correct, distractor, ...]}; image paths are relative to the What'sUp checkout.
- `coco_qa_one_obj.json`, `coco_qa_two_obj.json`, `vg_qa_one_obj.json`, `vg_qa_two_obj.json`: a list of
  [image_id, correct_caption, distractor_caption]; images `val2017/{id:012d}.jpg` (COCO) or
  `vg_images/{id}.jpg` (Visual Genome).

Files are looked for in the data root and in its `data/` folder (the What'sUp repository layout).
Every image path is resolved with `io.resolve_under`, so nothing outside the data root is read.

The stitched task (`whatsup`): for each reference object R, a photo of "X to the left of R" is joined
with the right half of a photo of "Y to the right of R", giving X | R | Y, three objects in a row
(horizontal only). We pair every left-of photo with every right-of photo of the same reference whose
object differs, and ask both directions ("The object on the floor to the left of the chair is a(n)" ->
X; "... to the right of ..." -> Y). The paper's 1074 composites came from the authors' own pairing, which
SPEC does not give, so our count depends on the photos present. Object boxes are the composite's
thirds (the photos are staged that way), so they are approximate (`meta["approximate_boxes"]`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from spatialmech import io
from spatialmech.errors import UserInputError
from spatialmech.tasks.base import CF_BLANK, Counterfactual, DataTask, Item, SceneObject
from spatialmech.tasks.prompts import forced_choice_fields
from spatialmech.tasks.synthetic import subset
from spatialmech.tasks.vocabulary import RELATION_PHRASES, WHATSUP_TEMPLATE, answer_variants

CONTROLLED_FILES = {"A": "controlled_images_dataset.json", "B": "controlled_clevr_dataset.json"}
QA_FILES = {
    ("coco", "one"): "coco_qa_one_obj.json",
    ("coco", "two"): "coco_qa_two_obj.json",
    ("vg", "one"): "vg_qa_one_obj.json",
    ("vg", "two"): "vg_qa_two_obj.json",
}
SEARCH_FOLDERS = ("", "data")

_CONTROLLED_NAME = re.compile(r"^(?P<obj>.+?)_(?P<rel>left_of|right_of|on|under)_(?P<ref>[^_]+)\.(?:jpe?g|png)$", re.I)
# The two-object captions: "A photo of a dog to the left of a cat", "... above a ...", "... behind ...".
_TWO_OBJECT = re.compile(
    r"^(?:a photo of )?(?:an? |the )?(?P<subj>.+?) (?P<rel>to the left of|to the right of|on the left of|"
    r"on the right of|left of|right of|above|below|under|on top of|on|behind|in front of) (?:an? |the )?(?P<obj>.+?)\.?$",
    re.I,
)
_ONE_OBJECT = re.compile(r"^(?:a photo of )?(?:an? |the )?(?P<subj>.+?) on the (?P<rel>left|right|top|bottom)\.?$", re.I)
_RELATION_WORD = {
    "to the left of": "left", "on the left of": "left", "left of": "left",
    "to the right of": "right", "on the right of": "right", "right of": "right",
    "above": "above", "on top of": "above", "on": "on",
    "below": "below", "under": "under", "behind": "behind", "in front of": "in front",
    "left": "left", "right": "right", "top": "top", "bottom": "bottom",
}
_CONTROLLED_RELATION = {"left_of": "left", "right_of": "right", "on": "on", "under": "under"}


def find_data_file(root: str | Path, name: str, what: str) -> Path:
    """`name` in the data root or its `data/` folder, or a one-line error saying where it was looked for."""
    base = Path(root)
    if not base.is_dir():
        raise UserInputError(f"data root {base} is not a folder", "pass --data pointing at the data folder")
    for folder in SEARCH_FOLDERS:
        candidate = base / folder / name
        if candidate.is_file():
            io.resolve_under(base, Path(folder) / name, what=what)  # a symlink out of the data root is refused
            return candidate
    raise UserInputError(f"{what} {name} not found in {base} or {base / 'data'}", "download it into the data folder")


def resolve_image(root: Path, relative: str, extra_bases: tuple[Path, ...] = ()) -> Path:
    """The image file `relative` under the data root (or another base inside it), never outside it."""
    first = io.resolve_under(root, relative, what="image_path")
    if first.is_file():
        return first
    for base in extra_bases:
        candidate = io.resolve_under(base, relative, what="image_path")
        if root.resolve() not in candidate.parents:
            raise UserInputError(f"image_path {relative} escapes the data root {root.resolve()}", "fix the data file")
        if candidate.is_file():
            return candidate
    raise UserInputError(f"image {first} (from {relative!r}) does not exist", "check the data folder or re-download the data set")


def noun(text: str) -> str:
    """File-name object ('beer-bottle') as prompt text ('beer bottle')."""
    return re.sub(r"[-_]+", " ", text).strip().lower()


# ------------------------------------------------------------------------------ controlled images


@dataclass(frozen=True)
class ControlledImage:
    """One What'sUp controlled photo: `subject` is `relation` ('left', 'right', 'on', 'under') of `reference`."""

    image_path: str  # as written in the JSON
    file: Path  # resolved under the data root
    subject: str
    relation: str
    reference: str
    caption_options: tuple[str, ...]


def load_controlled(root: str | Path, subset_name: str = "A") -> tuple[list[ControlledImage], dict[str, int]]:
    """Parse a controlled subset (A: real photos, B: CLEVR renders). Returns the records and skip counts."""
    if subset_name not in CONTROLLED_FILES:
        raise UserInputError(f"unknown What'sUp controlled subset {subset_name!r}", "use A or B")
    root = Path(root)
    path = find_data_file(root, CONTROLLED_FILES[subset_name], "What'sUp file")
    data = io.read_json(path, what="What'sUp file")
    shape_fix = 'it must be a JSON list of {"image_path": ..., "caption_options": [...]} objects'
    if not isinstance(data, list):
        raise UserInputError(f"What'sUp file {path} has the wrong shape", shape_fix)
    records, skipped = [], {"unparsed_name": 0}
    for index, entry in enumerate(data):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("image_path"), str)
            and isinstance(entry.get("caption_options"), list)
            and entry["caption_options"]
            and all(isinstance(c, str) for c in entry["caption_options"])
        ):
            raise UserInputError(f"What'sUp file {path} entry {index} has the wrong shape", shape_fix)
        match = _CONTROLLED_NAME.match(Path(entry["image_path"]).name)
        if not match:
            skipped["unparsed_name"] += 1
            continue
        file = resolve_image(root, entry["image_path"], (path.parent, path.parent.parent))
        records.append(
            ControlledImage(
                image_path=entry["image_path"],
                file=file,
                subject=noun(match["obj"]),
                relation=_CONTROLLED_RELATION[match["rel"].lower()],
                reference=noun(match["ref"]),
                caption_options=tuple(entry["caption_options"]),
            )
        )
    return records, skipped


def controlled_items(root: str | Path, subset_name: str = "A") -> list[Item]:
    """Controlled photos as forced-choice questions: left/right, and on/under asked as above/below."""
    records, _ = load_controlled(root, subset_name)
    items = []
    for record in records:
        relation = {"on": "above", "under": "below"}.get(record.relation, record.relation)
        axis = "horizontal" if relation in ("left", "right") else "vertical"
        fields = forced_choice_fields(record.subject, record.reference, axis)
        with Image.open(record.file) as image:
            size = image.size
        items.append(
            Item(
                id=f"whatsup-{subset_name}/{Path(record.image_path).stem}",
                task=f"whatsup-{subset_name}",
                prompt=fields["prompt"],
                answer=relation,
                answer_variants=answer_variants(relation),
                axis=axis,
                relation=relation,
                reference=1,
                target=0,
                objects=[
                    SceneObject(name=record.subject, attribute=record.subject, box_px=(0, 0, size[0], size[1])),
                    SceneObject(name=record.reference, attribute=record.reference, box_px=(0, 0, size[0], size[1])),
                ],
                image_size=size,
                image_path=str(record.file.relative_to(Path(root).resolve())),
                options=fields["options"],
                meta={**fields["meta"], "caption_options": list(record.caption_options), "boxes": "unknown"},
            )
        )
    return items


# ------------------------------------------------------------------------------ caption QA (COCO / VG)


@dataclass(frozen=True)
class CaptionQuestion:
    """One [image_id, correct, distractor] entry, with the relation parsed from the correct caption."""

    image_id: int | str
    image_path: str  # relative to the data root
    correct: str
    distractor: str
    subject: str | None
    relation: str | None  # left/right/above/below/on/under/behind/in front/top/bottom, None if unparsed
    reference: str | None  # None for one-object captions


def parse_caption(caption: str) -> tuple[str | None, str | None, str | None]:
    """(subject, relation, reference) of a What'sUp caption; reference None for one-object captions."""
    text = caption.strip()
    one = _ONE_OBJECT.match(text)
    if one:
        return noun(one["subj"]), _RELATION_WORD[one["rel"].lower()], None
    two = _TWO_OBJECT.match(text)
    if two:
        return noun(two["subj"]), _RELATION_WORD[two["rel"].lower()], noun(two["obj"])
    return None, None, None


def image_relative_path(source: str, image_id: int | str) -> str:
    if source == "coco":
        return f"val2017/{int(image_id):012d}.jpg"
    return f"vg_images/{image_id}.jpg"


def load_caption_questions(root: str | Path, source: str = "coco", objects: str = "two") -> list[CaptionQuestion]:
    """Parse `{coco,vg}_qa_{one,two}_obj.json` (entries [image_id, correct_caption, distractor])."""
    if (source, objects) not in QA_FILES:
        raise UserInputError(f"unknown What'sUp QA file {source}/{objects}", "use source coco or vg and objects one or two")
    path = find_data_file(root, QA_FILES[(source, objects)], "What'sUp file")
    data = io.read_json(path, what="What'sUp file")
    shape_fix = "it must be a JSON list of [image_id, correct_caption, distractor_caption] entries"
    if not isinstance(data, list):
        raise UserInputError(f"What'sUp file {path} has the wrong shape", shape_fix)
    questions = []
    for index, entry in enumerate(data):
        if not (
            isinstance(entry, list)
            and len(entry) >= 3
            and isinstance(entry[0], (int, str))
            and not isinstance(entry[0], bool)
            and isinstance(entry[1], str)
            and isinstance(entry[2], str)
        ):
            raise UserInputError(f"What'sUp file {path} entry {index} has the wrong shape", shape_fix)
        image_id = entry[0]
        if source == "coco":
            if isinstance(image_id, str) and not image_id.isdigit():
                raise UserInputError(f"What'sUp file {path} entry {index} has a non-numeric COCO image id {image_id!r}", shape_fix)
            image_id = int(image_id)
        subject, relation, reference = parse_caption(entry[1])
        questions.append(
            CaptionQuestion(image_id, image_relative_path(source, image_id), entry[1], entry[2], subject, relation, reference)
        )
    return questions


# ------------------------------------------------------------------------------ the stitched task


class WhatsUpStitchedTask(DataTask):
    """What'sUp Controlled_Images_A photos stitched into X | R | Y composites (horizontal only)."""

    name = "whatsup"
    description = "What'sUp photos stitched into 3-object rows; 'The object on the floor to the left of the chair is a(n)'"
    counterfactual_kinds = (CF_BLANK,)

    def check_data(self) -> None:
        find_data_file(self.root, CONTROLLED_FILES["A"], "What'sUp file")

    def all_items(self) -> list[Item]:
        if self._items is None:
            records, skipped = load_controlled(self.root, "A")
            lefts = [r for r in records if r.relation == "left"]
            rights = [r for r in records if r.relation == "right"]
            items = []
            for left in lefts:
                for right in rights:
                    if right.reference != left.reference or right.subject == left.subject:
                        continue
                    for relation in ("left", "right"):
                        items.append(self._item(left, right, relation))
            if not items:
                raise UserInputError(
                    f"no What'sUp photo pairs to stitch in {self.root}",
                    "the data needs '<obj>_left_of_<ref>' and '<obj>_right_of_<ref>' photos sharing a reference",
                )
            self.stats = {"photos": len(records), "left_of": len(lefts), "right_of": len(rights), "skipped": skipped, "items": len(items)}
            self._items = items
        return self._items

    def items(self, n: int | None = None, seed: int = 0) -> list[Item]:
        return subset(self.all_items(), n, seed)

    def _composite_size(self) -> tuple[int, int]:
        """Width = the geometry's image side; height = half of it (two 4:3 halves and one half photo)
        rounded to whole tokens."""
        width = self.geometry.image_size
        p = self.geometry.pixels_per_token
        return width, max(p, round(width / 2 / p) * p)

    def _item(self, left: ControlledImage, right: ControlledImage, relation: str) -> Item:
        width, height = self._composite_size()
        thirds = [0, width // 3, 2 * width // 3, width]
        names = [left.subject, left.reference, right.subject]
        objects = [
            SceneObject(
                name=name,
                attribute=name,
                box_px=(thirds[slot], 0, thirds[slot + 1], height),
                box_cells=self.geometry.px_to_cells((thirds[slot], 0, thirds[slot + 1], height)),
                ordinal={"horizontal": slot},
            )
            for slot, name in enumerate(names)
        ]
        target = 0 if relation == "left" else 2
        answer = names[target]
        prompt = WHATSUP_TEMPLATE.format(relation=RELATION_PHRASES[relation], reference=left.reference)
        root = self.root.resolve()
        sources = [str(left.file.relative_to(root)), str(right.file.relative_to(root))]
        return Item(
            id=f"whatsup/{Path(left.image_path).stem}+{Path(right.image_path).stem}/{relation}",
            task=self.name,
            prompt=prompt,
            answer=answer,
            answer_variants=answer_variants(answer),
            axis="horizontal",
            relation=relation,
            reference=1,
            target=target,
            objects=objects,
            image_size=(width, height),
            grid={**self.geometry.to_dict(), "rows": height // self.geometry.pixels_per_token},
            meta={"sources": sources, "approximate_boxes": True},
        )

    def image(self, item: Item) -> Image.Image:
        """The left-of photo in full, then the right half of the right-of photo, scaled to the item size."""
        width, height = item.image_size
        if not item.meta.get("sources"):  # a blank counterfactual
            return Image.new("RGB", (width, height), (255, 255, 255))
        root = self.root.resolve()
        left_photo, right_photo = (io.open_image(io.resolve_under(root, s, "image_path"), "What'sUp image") for s in item.meta["sources"])
        photo_height = min(left_photo.height, right_photo.height)
        left_photo = left_photo.resize((round(left_photo.width * photo_height / left_photo.height), photo_height))
        right_photo = right_photo.resize((round(right_photo.width * photo_height / right_photo.height), photo_height))
        half = right_photo.crop((right_photo.width // 2, 0, right_photo.width, photo_height))
        canvas = Image.new("RGB", (left_photo.width + half.width, photo_height))
        canvas.paste(left_photo, (0, 0))
        canvas.paste(half, (left_photo.width, 0))
        return canvas.resize((width, height), Image.Resampling.BICUBIC)

    def counterfactuals(self, item: Item, kind: str) -> list[Counterfactual]:
        if kind != CF_BLANK:
            raise UserInputError(f"task whatsup has no {kind!r} counterfactuals", "use the synthetic tasks for that experiment")
        blank = Item(**{**vars(item), "id": f"{item.id}#{kind}", "objects": [], "reference": -1, "target": -1,
                        "meta": {"role": kind, "clean_id": item.id}})
        return [Counterfactual(kind, blank)]

