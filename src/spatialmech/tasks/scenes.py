"""`scenes`: natural-looking two-object spatial questions, the bundled stand-in for COCO-spatial.

Unlike the grid tasks, objects have free sizes and positions; the picture has a photo-like background
(wall/floor gradient, low-frequency lighting blotches, sensor noise), soft shadows, 0-3 clutter
objects of other categories, and partial occlusion of the named objects by clutter. Each item asks
the forced-choice COCO-spatial question (`prompts.py`) about two named objects whose relation is
clear: their boxes do not overlap along the queried axis and their centres are at least twice as far
apart along it as across it.

Items are generated one by one from (seed, index), so the task is unbounded and `items(n)` is a
prefix of `items(m)` for n < m. `objects` = [subject, reference, *clutter]; `target` = 0 (the subject
asked about), `reference` = 1; `meta["draw_order"]` gives the painting order (occluders last).
"""

from __future__ import annotations

import copy
import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops

from spatialmech.errors import UserInputError
from spatialmech.tasks.base import (
    AXIS_OF,
    CF_ALONE,
    CF_BLANK,
    CF_OPPOSITE_QUERY,
    CF_REVERSED,
    COUNTERFACTUAL_KINDS,
    OPPOSITE,
    Counterfactual,
    Item,
    SceneObject,
    Task,
)
from spatialmech.tasks.drawing import glyph
from spatialmech.tasks.geometry import QWEN, GridGeometry
from spatialmech.tasks.icons import ICON_COLORS
from spatialmech.tasks.prompts import forced_choice_fields
from spatialmech.tasks.vocabulary import SCENE_NOUNS, SCENE_SHAPE_COLORS, answer_variants

DEFAULT_N = 500
MAX_CLUTTER = 3
MAX_OCCLUDED_FRACTION = 0.25  # at most this share of a named object's box may be covered by clutter
MIN_AXIS_RATIO = 2.0  # centre separation along the queried axis >= this x separation across it
NOISE_SIGMA = 8.0
SHADOW_OPACITY = 0.35

# Wall and floor colour families (muted, photo-like).
_WALLS = [(214, 206, 190), (190, 200, 210), (222, 214, 200), (176, 186, 170), (205, 190, 180), (160, 170, 185)]
_FLOORS = [(150, 120, 90), (120, 110, 100), (170, 150, 120), (110, 120, 105), (140, 100, 80), (95, 95, 105)]


def _jitter(rng: random.Random, color: tuple[int, int, int], amount: int) -> list[int]:
    return [max(0, min(255, c + rng.randint(-amount, amount))) for c in color]


def _overlap_area(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def relation_holds(subject: tuple[int, int, int, int], reference: tuple[int, int, int, int], relation: str, gap: int = 0) -> bool:
    """Is `subject` clearly `relation` of `reference`: separated along the axis, and mostly along it?"""
    (sx, sy), (rx, ry) = _centre(subject), _centre(reference)
    if relation == "left":
        separated = subject[2] + gap <= reference[0]
    elif relation == "right":
        separated = reference[2] + gap <= subject[0]
    elif relation == "above":
        separated = subject[3] + gap <= reference[1]
    else:
        separated = reference[3] + gap <= subject[1]
    along, across = (abs(sx - rx), abs(sy - ry)) if AXIS_OF[relation] == "horizontal" else (abs(sy - ry), abs(sx - rx))
    return separated and along >= MIN_AXIS_RATIO * across


def render_background(spec: dict, size: tuple[int, int]) -> Image.Image:
    """Draw a background from its spec: white, or a textured wall/floor scene from a seed.

    The smooth parts (wall/floor gradient, lighting blotches) are computed at quarter resolution and
    upsampled, which is what makes a scene cost a few milliseconds.
    """
    width, height = size
    if spec.get("kind", "white") == "white":
        return Image.new("RGB", size, (255, 255, 255))
    rng = np.random.default_rng(spec["seed"])
    small_w, small_h = max(8, width // 4), max(8, height // 4)
    rows = np.arange(small_h, dtype=np.float32)[:, None] / (small_h - 1)
    horizon = spec["horizon"]
    wall, floor = np.array(spec["wall"], np.float32), np.array(spec["floor"], np.float32)
    # A soft wall-to-floor transition, with the wall slightly darker towards the top.
    blend = np.clip((rows - horizon) / 0.04 + 0.5, 0, 1)
    column = (1 - blend) * wall * (0.9 + 0.1 * rows / max(horizon, 1e-3)).clip(0, 1) + blend * floor
    # Low-frequency lighting blotches: a coarse random field upsampled smoothly.
    coarse = rng.normal(0, spec["blotch"], (6, 6)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((small_w, small_h), Image.Resampling.BICUBIC))
    small = np.clip(column[:, None, :] + field[:, :, None], 0, 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BILINEAR)


_SHADOW_LUT = [int(a * SHADOW_OPACITY) for a in range(256)]


@lru_cache(maxsize=2048)
def _shadow_mask(kind: str, color: tuple[int, int, int], width: int, height: int) -> Image.Image:
    return glyph(kind, color, width, height).getchannel("A").point(_SHADOW_LUT)


NOISE_OFFSET = 64  # noise fields are stored as uint8 around this value, so one saturating add applies them


@lru_cache(maxsize=8)
def _noise_bank(width: int, height: int, sigma: float) -> list[Image.Image]:
    """A few fixed fields of Gaussian sensor noise per image size (grey, offset by NOISE_OFFSET)."""
    rng = np.random.default_rng(20260325)
    bank = []
    for _ in range(8):
        field = np.clip(np.round(rng.standard_normal((height, width)) * sigma) + NOISE_OFFSET, 0, 2 * NOISE_OFFSET)
        bank.append(Image.fromarray(field.astype(np.uint8), "L").convert("RGB"))
    return bank


def _add_noise(image: Image.Image, seed: int, sigma: float) -> Image.Image:
    """Photo-like sensor noise over the whole picture (a bank field picked and shifted by the seed)."""
    bank = _noise_bank(image.size[0], image.size[1], float(sigma))
    field = bank[seed % len(bank)]
    dx, dy = (seed // 8) % image.size[0], (seed // 8 // image.size[0]) % image.size[1]
    return ImageChops.add(image, ImageChops.offset(field, dx, dy), scale=1.0, offset=-NOISE_OFFSET)


def render_scene(item: Item) -> Image.Image:
    """Background, then each object (shadow first) in draw order, then sensor noise over everything."""
    size = tuple(item.image_size)
    image = render_background(item.background, size)
    order = item.meta.get("draw_order", list(range(len(item.objects))))
    textured = item.background.get("kind") == "texture"
    for index in order:
        obj = item.objects[index]
        x0, y0, x1, y1 = obj.box_px
        color = tuple(obj.color)
        if textured:
            shift = max(1, (x1 - x0) // 25)
            image.paste((20, 20, 20), (x0 + shift, y0 + shift), _shadow_mask(obj.shape, color, x1 - x0, y1 - y0))
        tile = glyph(obj.shape, color, x1 - x0, y1 - y0)
        image.paste(tile, (x0, y0), tile)
    if textured and item.background.get("noise", 0) > 0:
        image = _add_noise(image, item.background["seed"], item.background["noise"])
    return image


class ScenesTask(Task):
    """Unbounded procedurally generated scenes; deterministic from (seed, index)."""

    name = "scenes"
    description = "natural-looking scenes with clutter and occlusion; 'Using the key as the reference point, which side is the apple on?'"
    counterfactual_kinds = COUNTERFACTUAL_KINDS
    default_n = DEFAULT_N
    nouns = SCENE_NOUNS  # every object category a scene may contain (named or clutter)

    def __init__(self, geometry: GridGeometry | None = None):
        self.geometry = geometry or QWEN

    # ------------------------------------------------------------------ generation
    def items(self, n: int | None = None, seed: int = 0) -> list[Item]:
        count = DEFAULT_N if n is None else n
        if count < 1:
            raise UserInputError(f"--n must be at least 1, got {n}", "pass a positive number of items")
        return [self.make_item(seed, index) for index in range(count)]

    def _object(self, rng: random.Random, noun: str, box: tuple[int, int, int, int]) -> SceneObject:
        if noun in ICON_COLORS:
            color = ICON_COLORS[noun]
        else:
            color = SCENE_SHAPE_COLORS[rng.choice(sorted(SCENE_SHAPE_COLORS))]
        return SceneObject(
            name=noun, attribute=noun, box_px=box, box_cells=self.geometry.px_to_cells(box), color=color, shape=noun
        )

    def _random_box(self, rng: random.Random, low: float, high: float) -> tuple[int, int, int, int]:
        size = self.geometry.image_size
        margin = max(1, size // 50)
        side = int(size * rng.uniform(low, high))
        x0 = rng.randint(margin, size - margin - side)
        y0 = rng.randint(margin, size - margin - side)
        return (x0, y0, x0 + side, y0 + side)

    def make_item(self, seed: int, index: int) -> Item:
        """Item `index` of the stream for `seed` (independent of every other index)."""
        rng = random.Random(f"scenes/{seed}/{index}")
        size = self.geometry.image_size
        axis = rng.choice(("horizontal", "vertical"))
        relation = rng.choice(("left", "right") if axis == "horizontal" else ("above", "below"))
        nouns = rng.sample(SCENE_NOUNS, 2 + MAX_CLUTTER)
        subject_noun, reference_noun, clutter_nouns = nouns[0], nouns[1], nouns[2 : 2 + rng.randint(0, MAX_CLUTTER)]
        gap = max(1, size // 40)
        for _ in range(1000):
            subject_box = self._random_box(rng, 0.13, 0.30)
            reference_box = self._random_box(rng, 0.13, 0.30)
            if relation_holds(subject_box, reference_box, relation, gap):
                break
        else:  # pragma: no cover - the constraints are loose enough that this never happens in practice
            raise RuntimeError(f"could not place scene {seed}/{index}")
        objects = [self._object(rng, subject_noun, subject_box), self._object(rng, reference_noun, reference_box)]
        objects[0].ordinal = {axis: 0 if relation in ("left", "above") else 1}
        objects[1].ordinal = {axis: 1 - objects[0].ordinal[axis]}
        behind, in_front = [], []
        for noun in clutter_nouns:
            occluder = rng.random() < 0.5
            for _ in range(200):
                box = self._random_box(rng, 0.08, 0.22)
                if any(_overlap_area(box, o.box_px) > 0.3 * _area(box) for o in objects[2:]):
                    continue
                covers = [_overlap_area(box, o.box_px) / _area(o.box_px) for o in objects[:2]]
                if occluder and max(covers) > MAX_OCCLUDED_FRACTION:
                    continue
                if not occluder and max(covers) > 0.6:
                    continue
                objects.append(self._object(rng, noun, box))
                (in_front if occluder else behind).append(len(objects) - 1)
                break
        background = {
            "kind": "texture",
            "seed": rng.randrange(2**31),
            "wall": _jitter(rng, rng.choice(_WALLS), 12),
            "floor": _jitter(rng, rng.choice(_FLOORS), 12),
            "horizon": round(rng.uniform(0.35, 0.7), 3),
            "blotch": round(rng.uniform(4.0, 12.0), 2),
            "noise": NOISE_SIGMA,
        }
        return self._item(
            f"scenes/{self.geometry.name}/{seed}/{index}", axis, relation, objects, background,
            behind + [0, 1] + in_front, {"seed": seed, "index": index},
        )

    def _item(
        self, item_id: str, axis: str, relation: str, objects: list[SceneObject], background: dict,
        draw_order: list[int], meta: dict, subject: int = 0, reference: int = 1,
    ) -> Item:
        fields = forced_choice_fields(objects[subject].name, objects[reference].name, axis)
        size = self.geometry.image_size
        return Item(
            id=item_id,
            task=self.name,
            prompt=fields["prompt"],
            answer=relation,
            answer_variants=answer_variants(relation),
            axis=axis,
            relation=relation,
            reference=reference,
            target=subject,
            objects=objects,
            image_size=(size, size),
            grid=self.geometry.to_dict(),
            options=fields["options"],
            background=background,
            meta={**fields["meta"], **meta, "draw_order": draw_order},
        )

    def image(self, item: Item) -> Image.Image:
        return render_scene(item)

    # ------------------------------------------------------------------ counterfactuals
    def counterfactuals(self, item: Item, kind: str) -> list[Counterfactual]:
        """opposite_query: same picture, subject and reference swapped in the question (opposite answer);
        reversed: the two named objects trade boxes, same question (opposite answer);
        alone: each named object alone at the image centre on white; blank: a white image."""
        base_meta = {k: v for k, v in item.meta.items() if k in ("seed", "index")} | {"clean_id": item.id}
        order = item.meta["draw_order"]
        if kind == CF_OPPOSITE_QUERY:
            objects = copy.deepcopy(item.objects)
            cf = self._item(
                f"{item.id}#{kind}", item.axis, OPPOSITE[item.relation], objects, dict(item.background), order,
                base_meta, subject=item.reference, reference=item.target,
            )
            return [Counterfactual(kind, cf)]
        if kind == CF_REVERSED:
            objects = copy.deepcopy(item.objects)
            a, b = objects[item.target], objects[item.reference]
            a.box_px, b.box_px = b.box_px, a.box_px
            a.box_cells, b.box_cells = b.box_cells, a.box_cells
            a.ordinal, b.ordinal = b.ordinal, a.ordinal
            cf = self._item(
                f"{item.id}#{kind}", item.axis, OPPOSITE[item.relation], objects, dict(item.background), order,
                base_meta, subject=item.target, reference=item.reference,
            )
            return [Counterfactual(kind, cf)]
        if kind == CF_ALONE:
            out = []
            size = self.geometry.image_size
            for index in (item.target, item.reference):
                obj = item.objects[index]
                w, h = obj.box_px[2] - obj.box_px[0], obj.box_px[3] - obj.box_px[1]
                x0, y0 = (size - w) // 2, (size - h) // 2
                alone = SceneObject(**{**vars(obj), "box_px": (x0, y0, x0 + w, y0 + h), "ordinal": {}})
                alone.box_cells = self.geometry.px_to_cells(alone.box_px)
                cf = self._derived(item, f"{item.id}#{kind}{index}", [alone], 0, {"role": kind, "source_object": index})
                out.append(Counterfactual(kind, cf, source_object=index))
            return out
        if kind == CF_BLANK:
            return [Counterfactual(kind, self._derived(item, f"{item.id}#{kind}", [], -1, {"role": kind}))]
        raise UserInputError(f"unknown counterfactual kind {kind!r}", f"use one of {', '.join(COUNTERFACTUAL_KINDS)}")

    @staticmethod
    def _derived(item: Item, item_id: str, objects: list[SceneObject], index: int, meta: dict) -> Item:
        """An image-only variant on white (same prompt and answer); see `synthetic.GridTask._derived`."""
        return Item(
            id=item_id, task=item.task, prompt=item.prompt, answer=item.answer,
            answer_variants=list(item.answer_variants), axis=item.axis, relation=item.relation,
            reference=index, target=index, objects=objects, image_size=tuple(item.image_size),
            grid=dict(item.grid) if item.grid else None, options=list(item.options or []),
            background={"kind": "white"},
            meta={**meta, "clean_id": item.id, "draw_order": list(range(len(objects)))},
        )
