"""`whatsup`: What'sUp Controlled_Images_A photos stitched into X | R | Y rows, as the authors built them.

Protocol (SPEC section 7; `whatsup_data.py` cites their files):
- For each reference R in (chair, table, armchair), their side-object list for R, kept only where the
  name is one token for the model's tokenizer (lower-case and capitalised; the answer is one next
  token) and both `<X>_left_of_<R>` and `<X>_right_of_<R>` photos are in the data. Dropped names are
  counted in `task.stats["side_objects"]` (and a stderr line), never an error. A tokenizer under which
  that rule leaves no pair at all (the bundled model's splits capitalised names) is asked the
  lower-case spelling only (`stats["one_token_rule"]`). Without a tokenizer (`render`) none is dropped.
- Every ordered pair (target, distractor) of kept names, asked in both directions: "left" shows the
  target's left-of photo beside the distractor's right-of photo (answer: target), "right" the
  distractor's left-of photo beside the target's right-of photo.
- The composite is square: both photos resized to S x S (bilinear), the left half of the left-of photo
  beside the right half of the right-of photo, so the reference (centred in each photo) appears once.
  S is the authors' per-model size (Qwen 336, Gemma 896, Pixtral 512), or the geometry's image side
  for other models.
- Objects' boxes (left, reference, right): the boxes the authors' probe reads, labelled per reference
  as fractions of the image (`whatsup_data.probe_box`), so they fit any grid. The criss-cross regions
  they hand-labelled on the 12x12 and 16x16 grids (object and strip) are in `meta["regions"]`.
- `probe_items()`: the probe's images as theirs: every (left, reference, right) with both photos (any
  object, no side list or tokenizer filter: the probe asks nothing), shuffled with seed 42, the first 120.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from spatialmech import io
from spatialmech.errors import UserInputError
from spatialmech.tasks.base import CF_BLANK, Counterfactual, DataTask, Item, SceneObject
from spatialmech.tasks.synthetic import subset
from spatialmech.tasks.vocabulary import RELATION_PHRASES, WHATSUP_TEMPLATE, answer_variants
from spatialmech.tasks.whatsup import CONTROLLED_FILES, find_data_file, load_controlled, noun
from spatialmech.tasks.whatsup_data import (
    PROBE_IMAGES,
    PROBE_SEED,
    PROBE_SOURCE,
    REFERENCES,
    SIDE_OBJECTS,
    STITCH_PX,
    probe_box,
    regions,
)


def one_token_filter(tokenizer: Any, capitalised: bool = True) -> Callable[[str], bool]:
    """Is a word one token for this tokenizer, lower-case and (the authors' test) capitalised?"""

    def count(text: str) -> int:
        if hasattr(tokenizer, "tokenize"):
            return len(tokenizer.tokenize(text))
        return len(tokenizer.encode(text, add_special_tokens=False))

    return lambda word: count(word) == 1 and (not capitalised or count(word[:1].upper() + word[1:]) == 1)


def stitch(left_photo: Image.Image, right_photo: Image.Image, size: int) -> Image.Image:
    """Left half of `left_photo` beside the right half of `right_photo`, each resized to size x size."""
    left = left_photo.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    right = right_photo.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (size, size))
    out.paste(left.crop((0, 0, size // 2, size)), (0, 0))
    out.paste(right.crop((size // 2, 0, size, size)), (size // 2, 0))
    return out


class WhatsUpStitchedTask(DataTask):
    """What'sUp Controlled_Images_A photos stitched into square 3-object composites (horizontal only)."""

    name = "whatsup"
    description = "What'sUp photos stitched into 3-object rows; 'The object on the floor to the left of the chair is a(n)'"
    counterfactual_kinds = (CF_BLANK,)
    uses_tokenizer = True

    def __init__(self, data_root: str | Path, geometry: Any = None, tokenizer: Any = None):
        super().__init__(data_root, geometry)
        self.tokenizer = tokenizer
        self._photos: dict[str, Path] | None = None
        self._controlled: tuple[list[Any], dict[str, int]] = ([], {})  # load_controlled: (records, skipped)

    def check_data(self) -> None:
        find_data_file(self.root, CONTROLLED_FILES["A"], "What'sUp file")

    @property
    def canvas_px(self) -> int:
        return STITCH_PX.get(self.geometry.name, self.geometry.image_size)

    def _photo_files(self) -> dict[str, Path]:
        """Subset A's photos, file name (lower case) -> file, read once for every use."""
        if self._photos is None:
            self._controlled = load_controlled(self.root, "A")
            self._photos = {Path(r.image_path).name.lower(): r.file for r in self._controlled[0]}
        return self._photos

    def all_items(self) -> list[Item]:
        if self._items is None:
            photos = self._photo_files()
            records, skipped = self._controlled
            rule = "authors" if self.tokenizer is not None else "none"
            side_stats = self._side_objects(photos, rule)
            if rule == "authors" and all(len(s["kept"]) < 2 for s in side_stats.values()):
                # A small tokenizer (the bundled model's) may split every capitalised name; rather than
                # no task at all, ask only the lower-case spelling, and say so in the stats.
                rule = "lower-case"
                side_stats = self._side_objects(photos, rule)
            items: list[Item] = []
            for reference, stats in side_stats.items():
                for target in stats["kept"]:
                    for distractor in stats["kept"]:
                        if target != distractor:
                            items.extend(self._item(reference, target, distractor, relation, photos)
                                         for relation in ("left", "right"))
            if not items:
                raise UserInputError(
                    f"no What'sUp composites to build in {self.root} (side objects kept per reference: "
                    + ", ".join(f"{r} {len(s['kept'])}" for r, s in side_stats.items()) + ")",
                    "the data needs '<obj>_left_of_<ref>' and '<obj>_right_of_<ref>' photos of at least two of "
                    "the authors' side objects whose names are one token for the model",
                )
            self.stats = {
                "photos": len(records),
                "skipped": skipped,
                "items": len(items),
                "items_per_direction": len(items) // 2,
                "canvas_px": self.canvas_px,
                "one_token_rule": rule,
                "dropped_multi_token": sum(len(s["dropped_multi_token"]) for s in side_stats.values()),
                "dropped_no_photos": sum(len(s["dropped_no_photos"]) for s in side_stats.values()),
                "side_objects": side_stats,
            }
            if self.stats["dropped_multi_token"]:
                print(f"spatialmech: whatsup: {len(items) // 2} composites per direction from "
                      + ", ".join(f"{r} {len(s['kept'])}" for r, s in side_stats.items())
                      + f" side objects; {self.stats['dropped_multi_token']} names dropped as several tokens for this "
                      f"tokenizer ({rule} rule), {self.stats['dropped_no_photos']} without both photos", file=sys.stderr)
            self._items = items
        return self._items

    def _side_objects(self, photos: dict[str, Path], rule: str) -> dict[str, dict[str, Any]]:
        """Per reference: the authors' side objects kept, and those dropped (several tokens under
        `rule`: "authors" = lower-case and capitalised, "lower-case", "none"; or a photo missing)."""
        keep = (lambda word: True) if rule == "none" else one_token_filter(self.tokenizer, capitalised=rule == "authors")
        out: dict[str, dict[str, Any]] = {}
        for reference in REFERENCES:
            kept, multi_token, no_photos = [], [], []
            for side in SIDE_OBJECTS[reference]:
                if any(f"{side}_{rel}_{reference}.jpeg" not in photos for rel in ("left_of", "right_of")):
                    no_photos.append(side)
                elif not keep(side):
                    multi_token.append(side)
                else:
                    kept.append(side)
            out[reference] = {"listed": len(SIDE_OBJECTS[reference]), "kept": kept,
                              "dropped_multi_token": multi_token, "dropped_no_photos": no_photos}
        return out

    def items(self, n: int | None = None, seed: int = 0) -> list[Item]:
        return subset(self.all_items(), n, seed)

    def composite(self, reference: str, left_side: str, right_side: str, relation: str, item_id: str | None = None) -> Item:
        """The item of one composite given by names (file stems): `left_side`'s left-of photo beside
        `right_side`'s right-of photo of `reference`, asking `relation` (for pairs read from a file)."""
        photos = self._photo_files()
        for side, rel in ((left_side, "left_of"), (right_side, "right_of")):
            if f"{side}_{rel}_{reference}.jpeg" not in photos:
                raise UserInputError(f"What'sUp photo {side}_{rel}_{reference}.jpeg is not in {self.root}",
                                     "use the full What'sUp controlled_images download")
        target, distractor = (left_side, right_side) if relation == "left" else (right_side, left_side)
        item = self._item(reference, target, distractor, relation, photos)
        if item_id:
            item.id = item_id
        return item

    def _item(self, reference: str, target: str, distractor: str, relation: str, photos: dict[str, Path]) -> Item:
        size = self.canvas_px
        p = self.geometry.pixels_per_token
        tokens = size // p
        left_side, right_side = (target, distractor) if relation == "left" else (distractor, target)
        object_boxes = regions(tokens, reference, "object")
        names = [noun(left_side), noun(reference), noun(right_side)]
        objects = []
        for slot, (name, position) in enumerate(zip(names, ("left", "middle", "right"))):
            cells = probe_box(reference, position, tokens)
            row0, col0, row1, col1 = cells
            objects.append(SceneObject(name=name, attribute=name, box_px=(col0 * p, row0 * p, col1 * p, row1 * p),
                                       box_cells=cells, ordinal={"horizontal": slot}))
        target_index = 0 if relation == "left" else 2
        root = self.root.resolve()
        sources = [
            str(photos[f"{left_side}_left_of_{reference}.jpeg"].relative_to(root)),
            str(photos[f"{right_side}_right_of_{reference}.jpeg"].relative_to(root)),
        ]
        meta: dict[str, Any] = {"sources": sources, "side_names": [left_side, right_side], "boxes_source": PROBE_SOURCE}
        if object_boxes is not None:
            meta["regions"] = {"object": object_boxes, "strip": regions(tokens, reference, "strip"),
                               "source": "hand-labelled by the authors (criss_cross_patching/src/regions.py)"}
        return Item(
            id=f"whatsup/{reference}/{target}-vs-{distractor}/{relation}",
            task=self.name,
            prompt=WHATSUP_TEMPLATE.format(relation=RELATION_PHRASES[relation], reference=noun(reference)),
            answer=names[target_index],
            answer_variants=answer_variants(names[target_index]),
            axis="horizontal",
            relation=relation,
            reference=1,
            target=target_index,
            objects=objects,
            image_size=(size, size),
            grid={**self.geometry.to_dict(), "tokens_per_side": tokens, "rows": tokens},
            meta=meta,
        )

    def probe_items(self) -> list[Item]:
        """The ordinal probe's images in the authors' order (probing/src/whatsup.py `list_tuples`, then
        `build_split`'s shuffle and cap): per reference, every ordered pair of the objects with both a
        left-of and a right-of photo (sorted names), shuffled with seed 42, the first 120. Each item
        asks "left" (its answer is the left object); the probe reads only the picture."""
        import random
        from itertools import permutations

        photos = self._photo_files()  # every photo: the probe asks nothing, so no side list or tokenizer filter
        tuples = []
        for reference in REFERENCES:
            sides = {rel: {name[: -len(f"_{rel}_{reference}.jpeg")] for name in photos
                           if name.endswith(f"_{rel}_{reference}.jpeg")} for rel in ("left_of", "right_of")}
            valid = sorted(sides["left_of"] & sides["right_of"])
            tuples.extend((left, reference, right) for left, right in permutations(valid, 2))
        random.Random(PROBE_SEED).shuffle(tuples)
        return [self._item(reference, left, right, "left", photos) for left, reference, right in tuples[:PROBE_IMAGES]]

    def image(self, item: Item) -> Image.Image:
        width, height = item.image_size
        if not item.meta.get("sources"):  # a blank counterfactual
            return Image.new("RGB", (width, height), (255, 255, 255))
        root = self.root.resolve()
        left, right = (io.open_image(io.resolve_under(root, s, "image_path"), "What'sUp image") for s in item.meta["sources"])
        return stitch(left, right, width)

    def counterfactuals(self, item: Item, kind: str) -> list[Counterfactual]:
        if kind != CF_BLANK:
            raise UserInputError(f"task whatsup has no {kind!r} counterfactuals", "use the synthetic tasks for that experiment")
        blank = Item(**{**vars(item), "id": f"{item.id}#{kind}", "objects": [], "reference": -1, "target": -1,
                        "meta": {"role": kind, "clean_id": item.id}})
        return [Counterfactual(kind, blank)]
