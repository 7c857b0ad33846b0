"""The three grid tasks of the paper: squares, shapes, objects (SPEC section 3).

Each item is 3 objects in a row (horizontal axis) or column (vertical axis), centred on the model's
token grid, each exactly k x k tokens, k tokens apart, on white. The reference is always the middle
object; the question asks for its neighbour on one side. Item count = P(n_attributes, 3) orderings
x 2 axes x 2 query directions (squares/shapes 6P3 x 4 = 480, objects 8P3 x 4 = 1344).

`objects` of an item are listed in slot order along the axis (slot 0 = leftmost / topmost), and every
counterfactual keeps that slot order, so `clean.objects[cf.item.target]` is the clean object at the
counterfactual answer's slot (the "same ordinal" answer the last-token experiment tracks).
"""

from __future__ import annotations

import random
import zlib
from itertools import permutations

from PIL import Image

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
from spatialmech.tasks.drawing import FILLED_SQUARE, paste_glyph
from spatialmech.tasks.geometry import QWEN, GridGeometry
from spatialmech.tasks.vocabulary import (
    OBJECT_NAMES,
    OBJECTS_TEMPLATE,
    PIXTRAL_OBJECT_NAMES,
    PIXTRAL_SHAPE_COLORS,
    PIXTRAL_SQUARE_COLORS,
    RELATION_PHRASES,
    SHAPE_COLORS,
    SHAPES_TEMPLATE,
    SQUARE_COLORS,
    SQUARES_TEMPLATE,
    answer_variants,
)

WHITE = (255, 255, 255)
AXES = ("horizontal", "vertical")
RELATIONS_OF_AXIS = {"horizontal": ("left", "right"), "vertical": ("above", "below")}
REFERENCE_SLOT = 1


def subset(items: list[Item], n: int | None, seed: int) -> list[Item]:
    """All items (n None or >= total) or a deterministic seeded sample of n, kept in canonical order."""
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise UserInputError(f"--n must be positive, got {n}", "pass a positive number of items")
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


def render_objects(item: Item, background: Image.Image | None = None) -> Image.Image:
    """Draw an item's objects (in list order, later ones on top) onto white or a given background."""
    image = background if background is not None else Image.new("RGB", tuple(item.image_size), WHITE)
    for obj in item.objects:
        paste_glyph(image, obj.shape or FILLED_SQUARE, tuple(obj.color or (0, 0, 0)), tuple(obj.box_px))
    return image


class GridTask(Task):
    """Shared layout, prompts and counterfactuals of the three grid tasks; subclasses name attributes."""

    attributes: tuple[str, ...] = ()
    template: str = ""
    counterfactual_kinds: tuple[str, ...] = COUNTERFACTUAL_KINDS

    pixtral_attributes: tuple[str, ...] = ()  # Pixtral's variant (vocabulary.PIXTRAL_*), where it differs

    def __init__(self, geometry: GridGeometry | None = None):
        self.geometry = geometry or QWEN
        self._all: list[Item] | None = None
        # The authors draw Pixtral's stimuli with its own palette and object set (on its grid, or --grid).
        self.pixtral = "pixtral" in (self.geometry.family, self.geometry.name)
        if self.pixtral and self.pixtral_attributes:
            self.attributes = self.pixtral_attributes

    # ------------------------------------------------------------------ per-task vocabulary
    def reference_name(self, attribute: str) -> str:
        """How the prompt names the reference object."""
        raise NotImplementedError

    def object_name(self, attribute: str) -> str:
        return self.reference_name(attribute)

    def appearance(self, attribute: str) -> tuple[str, tuple[int, int, int]]:
        """(glyph kind, RGB colour) the object with this attribute is drawn with."""
        raise NotImplementedError

    def prompt(self, relation: str, reference_attribute: str) -> str:
        return self.template.format(relation=RELATION_PHRASES[relation], reference=self.reference_name(reference_attribute))

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        n = len(self.attributes)
        return n * (n - 1) * (n - 2) * len(AXES) * 2

    def _object(
        self, attribute: str, cells: tuple[int, int, int, int], ordinal: dict[str, int], geometry: GridGeometry
    ) -> SceneObject:
        kind, color = self.appearance(attribute)
        return SceneObject(
            name=self.object_name(attribute),
            attribute=attribute,
            box_px=geometry.cells_to_px(cells),
            box_cells=cells,
            ordinal=ordinal,
            color=color,
            shape=kind,
        )

    def layout_item(
        self,
        attributes: tuple[str, str, str],
        axis: str,
        relation: str,
        item_id: str | None = None,
        geometry: GridGeometry | None = None,
    ) -> Item:
        """The item with `attributes` in slots 0, 1, 2 along `axis`, asking `relation` of the middle one."""
        if AXIS_OF[relation] != axis:
            raise ValueError(f"relation {relation!r} is not on the {axis} axis")
        geometry = geometry or self.geometry
        objects = [
            self._object(attr, geometry.slot_cells(axis, slot), {axis: slot}, geometry) for slot, attr in enumerate(attributes)
        ]
        target = REFERENCE_SLOT - 1 if relation in ("left", "above") else REFERENCE_SLOT + 1
        answer = attributes[target]
        size = geometry.image_size
        return Item(
            id=item_id or f"{self.name}/{geometry.name}/{axis}/{'-'.join(attributes)}/{relation}",
            task=self.name,
            prompt=self.prompt(relation, attributes[REFERENCE_SLOT]),
            answer=answer,
            answer_variants=answer_variants(answer),
            axis=axis,
            relation=relation,
            reference=REFERENCE_SLOT,
            target=target,
            objects=objects,
            image_size=(size, size),
            grid=geometry.to_dict(),
            background={"kind": "white"},
            meta={
                "attributes": list(attributes),
                "strip_cells": [list(geometry.strip_cells(o.box_cells, axis)) for o in objects],
            },
        )

    def all_items(self) -> list[Item]:
        """Every item in canonical order: axis, then colour ordering, then query direction."""
        if self._all is None:
            self._all = [
                self.layout_item(attrs, axis, relation)
                for axis in AXES
                for attrs in permutations(self.attributes, 3)
                for relation in RELATIONS_OF_AXIS[axis]
            ]
        return self._all

    def items(self, n: int | None = None, seed: int = 0) -> list[Item]:
        return subset(self.all_items(), n, seed)

    def image(self, item: Item) -> Image.Image:
        return render_objects(item)

    # ------------------------------------------------------------------ counterfactuals
    def counterfactuals(self, item: Item, kind: str) -> list[Counterfactual]:
        attributes = tuple(item.meta["attributes"])
        geometry = self.geometry_of(item)
        if kind == CF_OPPOSITE_QUERY:
            # Fresh attributes (not in the clean item) at both non-reference slots, opposite query.
            unused = [a for a in self.attributes if a not in attributes]
            fresh = random.Random(zlib.crc32(item.id.encode())).sample(unused, 2)
            cf_attrs = (fresh[0], attributes[REFERENCE_SLOT], fresh[1])
            cf = self.layout_item(cf_attrs, item.axis, OPPOSITE[item.relation], f"{item.id}#{kind}", geometry)
            cf.meta["clean_id"] = item.id
            return [Counterfactual(kind, cf)]
        if kind == CF_REVERSED:
            cf = self.layout_item(attributes[::-1], item.axis, item.relation, f"{item.id}#{kind}", geometry)
            cf.meta["clean_id"] = item.id
            return [Counterfactual(kind, cf)]
        if kind == CF_ALONE:
            out = []
            for index, obj in enumerate(item.objects):
                alone = self._object(obj.attribute, geometry.centre_cells(), {}, geometry)
                cf = self._derived(item, f"{item.id}#{kind}{index}", [alone], 0, {"role": kind, "source_object": index})
                out.append(Counterfactual(kind, cf, source_object=index))
            return out
        if kind == CF_BLANK:
            return [Counterfactual(kind, self._derived(item, f"{item.id}#{kind}", [], -1, {"role": kind}))]
        raise UserInputError(f"unknown counterfactual kind {kind!r}", f"use one of {', '.join(COUNTERFACTUAL_KINDS)}")

    @staticmethod
    def geometry_of(item: Item) -> GridGeometry:
        return GridGeometry.from_dict(item.grid) if item.grid else QWEN

    @staticmethod
    def _derived(item: Item, item_id: str, objects: list[SceneObject], index: int, meta: dict) -> Item:
        """An image-only variant of `item` (alone / blank): same prompt and answer, other objects.

        Its `reference` and `target` are `index` (0 for the single alone object, -1 for a blank image
        with no objects): these inputs only supply tokens to patch in, they are not questions of their own.
        """
        return Item(
            id=item_id,
            task=item.task,
            prompt=item.prompt,
            answer=item.answer,
            answer_variants=list(item.answer_variants),
            axis=item.axis,
            relation=item.relation,
            reference=index,
            target=index,
            objects=objects,
            image_size=tuple(item.image_size),
            grid=dict(item.grid) if item.grid else None,
            background={"kind": "white"},
            meta={**meta, "clean_id": item.id},
        )


class SquaresTask(GridTask):
    name = "squares"
    description = "3 coloured squares in a row or column; 'The color of the square to the left of the green square is'"
    attributes = tuple(SQUARE_COLORS)
    pixtral_attributes = tuple(PIXTRAL_SQUARE_COLORS)
    template = SQUARES_TEMPLATE

    def reference_name(self, attribute: str) -> str:
        return attribute.lower()

    def object_name(self, attribute: str) -> str:
        return f"{attribute.lower()} square"

    def appearance(self, attribute: str) -> tuple[str, tuple[int, int, int]]:
        return FILLED_SQUARE, (PIXTRAL_SQUARE_COLORS if self.pixtral else SQUARE_COLORS)[attribute]


class ShapesTask(GridTask):
    """Shapes paired one to one with colours; an object's attribute is its colour, which names the answer."""

    name = "shapes"
    description = "3 shapes with fixed colours (Square/Red ... Heart/Gray); 'The color of the shape to the left of the red square is '"
    attributes = tuple(SHAPE_COLORS.values())
    pixtral_attributes = tuple(PIXTRAL_SHAPE_COLORS.values())
    template = SHAPES_TEMPLATE

    def shape_of(self, attribute: str) -> str:
        colours = PIXTRAL_SHAPE_COLORS if self.pixtral else SHAPE_COLORS
        return next(shape for shape, colour in colours.items() if colour == attribute)

    def reference_name(self, attribute: str) -> str:
        return f"{attribute.lower()} {self.shape_of(attribute).lower()}"

    def appearance(self, attribute: str) -> tuple[str, tuple[int, int, int]]:
        palette = PIXTRAL_SQUARE_COLORS if self.pixtral else SQUARE_COLORS
        return self.shape_of(attribute).lower(), palette[attribute]


class ObjectsTask(GridTask):
    name = "objects"
    description = "3 of 8 drawn object icons (apple, bell, ...); 'The object to the left of the key is a(n)'"
    attributes = OBJECT_NAMES
    pixtral_attributes = PIXTRAL_OBJECT_NAMES
    template = OBJECTS_TEMPLATE

    def reference_name(self, attribute: str) -> str:
        return attribute

    def appearance(self, attribute: str) -> tuple[str, tuple[int, int, int]]:
        from spatialmech.tasks.icons import ICON_COLORS

        return attribute, ICON_COLORS[attribute]
