"""Loaders for the What'sUp benchmark files (Kamath et al., 2023) and the stitched 3-object task.

Formats (SPEC section 3), all read through `io.read_json` and checked for shape, so a wrong file gives
a one-line error naming the file and the entry:
- `controlled_images_dataset.json` (subset A) / `controlled_clevr_dataset.json` (subset B): a list of
  {"image_path": "data/controlled_images/<obj>_<left_of|right_of|on|under>_<ref>.jpeg",
  "caption_options": [correct, distractor, ...]}; image paths are relative to the What'sUp checkout.
- `coco_qa_one_obj.json`, `coco_qa_two_obj.json`, `vg_qa_one_obj.json`, `vg_qa_two_obj.json`: a list of
  [image_id, correct_caption, distractor_caption]; images `val2017/{id:012d}.jpg` (COCO) or
  `vg_images/{id}.jpg` (Visual Genome).

Files are looked for in the data root and in its `data/` folder (the What'sUp repository layout: its
download puts the JSON files and image folders in `data/`, and `image_path` values start with
`data/`), so `--data` may be the repository root or its `data/` folder. Every image path is resolved
with `io.resolve_under`, so no path written in a data file leads outside the data root.

The stitched task built from the controlled photos is `whatsup_stitched.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from spatialmech import io
from spatialmech.errors import UserInputError
from spatialmech.tasks.base import Item, SceneObject
from spatialmech.tasks.prompts import forced_choice_fields
from spatialmech.tasks.vocabulary import answer_variants

CONTROLLED_FILES = {"A": "controlled_images_dataset.json", "B": "controlled_clevr_dataset.json"}
QA_FILES = {
    ("coco", "one"): "coco_qa_one_obj.json",
    ("coco", "two"): "coco_qa_two_obj.json",
    ("vg", "one"): "vg_qa_one_obj.json",
    ("vg", "two"): "vg_qa_two_obj.json",
}
SEARCH_FOLDERS = ("", "data")

# Subset A: left_of / right_of / on / under; subset B (CLEVR) also in-front_of / behind (What'sUp's
# dataset_zoo/aro_datasets.py matches '_in-front_of_' and 'behind').
_CONTROLLED_NAME = re.compile(
    r"^(?P<obj>.+?)_(?P<rel>left_of|right_of|in-front_of|behind|on|under)_(?P<ref>[^_]+)\.(?:jpe?g|png)$", re.I
)
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
_CONTROLLED_RELATION = {"left_of": "left", "right_of": "right", "on": "on", "under": "under",
                        "in-front_of": "in front", "behind": "behind"}


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


def resolve_image(root: Path, relative: str) -> Path:
    """The image `relative` (as written in a data file) under the data root, never outside it.

    What'sUp writes paths from its repository root (`data/controlled_images/x.jpeg`) while its JSON
    files sit in `data/`, so `--data` may be the repository root or its `data/` folder: a leading
    `data/` is also tried without it (and a path without one, such as COCO's `val2017/...`, in `data/`).
    """
    tries = [relative]
    parts = Path(relative).parts
    if len(parts) > 1 and parts[0] == "data":
        tries.append(str(Path(*parts[1:])))
    else:
        tries.append(str(Path("data", relative)))
    for candidate in tries:
        file = io.resolve_under(root, candidate, what="image_path")
        if file.is_file():
            return file
    raise UserInputError(
        f"image {relative!r} does not exist under the data root {Path(root).resolve()} (nor in or without its data/)",
        "pass --data as the What'sUp repository root or its data/ folder, with the images the What'sUp download "
        "unpacked (data/controlled_images/, data/controlled_clevr/, COCO val2017/)",
    )


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
        file = resolve_image(root, entry["image_path"])
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
    """Controlled photos as forced-choice questions: left/right, and on/under asked as above/below
    (depth photos, subset B's in-front_of / behind, have no two-option axis here and are left out)."""
    records, _ = load_controlled(root, subset_name)
    items = []
    for record in records:
        if record.relation in ("in front", "behind"):
            continue
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
