"""Training examples for the bundled model, drawn from the same renderers as the evaluation tasks.

Held-out by construction (documented in the model card):
- grid tasks (squares, shapes, objects): the task's evaluation items all use one fixed layout (3
  objects centred, spacing k). Half of the 3-object training images (`EVALUATION_LAYOUT_SHARE`) use
  that layout, but only with attribute combinations that are not held out
  (`is_held_out_combination`); the rest are *random layouts* (1-3 objects of the task's k x k size
  anywhere on a row or column, random gaps, never the evaluation layout, any combination), drawn
  with the task's own glyphs and prompt templates. So the held-out combinations' evaluation images
  are never seen in training.
- scenes: training items come from seeds >= `SCENES_TRAIN_SEED_BASE`; evaluation uses small seeds.

Besides its questions, each training image carries dense labels for the vision stage: the identity
of what covers each LM-token cell (the "what is at this grid cell" head); for every cell, the ordinal
(1st/2nd/3rd along the layout's axis) of the object whose strip holds it, background included (the
paper's "strips": a layout signal spread over all image tokens); and, for object cells, the identity
of the object's nearest neighbour on each side along its line (a dense relational caption).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from spatialmech.tasks import get_task
from spatialmech.tasks.base import Item, SceneObject
from spatialmech.tasks.geometry import QWEN, GridGeometry
from spatialmech.tasks.synthetic import AXES, RELATIONS_OF_AXIS, GridTask, render_objects
from spatialmech.tasks.vocabulary import SCENE_NOUNS, answer_variants

GRID_TASKS = ("squares", "shapes", "objects")
SCENES_TASK = "scenes"
SCENES_TRAIN_SEED_BASE = 100_000  # scenes items for training come from seeds at or above this
SIDES = ("left", "right", "above", "below")  # order of the neighbour heads
IGNORE = -100  # label for cells a head does not supervise
FIXED_SPACING_SHARE = 0.75  # share of random grid layouts drawn with the geometry's spacing (else random gaps)
EVALUATION_LAYOUT_SHARE = 0.5  # share of 3-object grid images drawn in the evaluation layout (non-held-out combinations)
THREE_OBJECT_SHARE = 0.85  # share of grid images with three objects (when three are allowed); the rest have two
# Relative sampling weight of each task's images. scenes gets half a grid task's share: its strict
# forced-choice score stays near chance on a model this small, and its images cost as much as a grid image.
TASK_WEIGHTS = {"squares": 1.0, "shapes": 1.0, "objects": 1.0, SCENES_TASK: 0.5}


def data_shares() -> dict[str, float]:
    """The sampling shares of the grid training images (recorded in the training log and model card)."""
    return {
        "three_object_share": THREE_OBJECT_SHARE,
        "evaluation_layout_share": EVALUATION_LAYOUT_SHARE,
        "fixed_spacing_share": FIXED_SPACING_SHARE,
        **{f"task_weight_{name}": weight for name, weight in TASK_WEIGHTS.items()},
    }


@dataclass
class TrainingImage:
    """One rendered image with its dense vision labels and every question we ask about it."""

    task: str
    image: Image.Image
    cell_labels: np.ndarray  # (tokens, tokens) identity class per LM-token cell, 0 = background
    neighbour_labels: np.ndarray  # (tokens, tokens, 4) class of the nearest neighbour per side, 0 = none
    ordinal_labels: np.ndarray  # (tokens, tokens) 1 + ordinal of the object whose strip holds the cell, 0 = none
    questions: list[tuple[str, str]] = field(default_factory=list)  # (prompt, answer word)
    n_objects: int = 0


class ClassVocabulary:
    """The identity classes of the dense heads: ("background",) + one per (task, attribute)."""

    def __init__(self, entries: list[str]):
        self.names = ["background", *entries]
        self.index = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def of(self, task: str, attribute: str) -> int:
        return self.index.get(f"{task}:{attribute}", 0)


def class_vocabulary(tasks: tuple[str, ...]) -> ClassVocabulary:
    entries: list[str] = []
    for name in tasks:
        attributes = SCENE_NOUNS if name == SCENES_TASK else get_task(name, geometry=QWEN).attributes
        entries.extend(f"{name}:{attribute}" for attribute in attributes)
    return ClassVocabulary(entries)


# ----------------------------------------------------------------------------------------- labels


def _cells_of_box(box_px: tuple[int, int, int, int], geometry: GridGeometry) -> list[tuple[int, int]]:
    """Grid cells whose centre lies inside a pixel box."""
    x0, y0, x1, y1 = box_px
    p, n = geometry.pixels_per_token, geometry.tokens_per_side
    cells = []
    for row in range(n):
        cy = (row + 0.5) * p
        if not y0 <= cy < y1:
            continue
        for col in range(n):
            cx = (col + 0.5) * p
            if x0 <= cx < x1:
                cells.append((row, col))
    return cells


def _centre(obj: SceneObject) -> tuple[float, float]:
    x0, y0, x1, y1 = obj.box_px
    return ((x0 + x1) / 2, (y0 + y1) / 2)


def nearest_neighbour(objects: list[SceneObject], index: int, side: str) -> int | None:
    """Index of the nearest object on `side` of object `index` that shares its row (left/right) or
    column (above/below), i.e. overlaps it across the axis; None if there is none."""
    x, y = _centre(objects[index])
    box = objects[index].box_px
    best, best_distance = None, float("inf")
    for j, other in enumerate(objects):
        if j == index:
            continue
        ox, oy = _centre(other)
        obox = other.box_px
        if side in ("left", "right"):
            overlaps = obox[1] < box[3] and box[1] < obox[3]
            distance = x - ox if side == "left" else ox - x
        else:
            overlaps = obox[0] < box[2] and box[0] < obox[2]
            distance = y - oy if side == "above" else oy - y
        if overlaps and distance > 0 and distance < best_distance:
            best, best_distance = j, distance
    return best


def dense_labels(
    item: Item, vocabulary: ClassVocabulary, geometry: GridGeometry, with_neighbours: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Identity per cell and nearest-neighbour identity per object cell (IGNORE elsewhere)."""
    n = geometry.tokens_per_side
    cells = np.zeros((n, n), dtype=np.int64)
    neighbours = np.full((n, n, len(SIDES)), IGNORE, dtype=np.int64)
    for index, obj in enumerate(item.objects):
        label = vocabulary.of(item.task, obj.attribute)
        covered = _cells_of_box(tuple(obj.box_px), geometry)
        for row, col in covered:
            cells[row, col] = label
        if not with_neighbours:
            continue
        sides = []
        for side in SIDES:
            j = nearest_neighbour(item.objects, index, side)
            sides.append(0 if j is None else vocabulary.of(item.task, item.objects[j].attribute))
        for row, col in covered:
            neighbours[row, col] = sides
    return cells, neighbours


def strip_ordinal_labels(item: Item, geometry: GridGeometry) -> np.ndarray:
    """Per cell, 1 + the ordinal along the item's axis of the object whose strip (its extent along the
    axis, across the whole image) holds the cell; 0 between strips. Objects of one line never share
    a strip, so the label is unique."""
    n = geometry.tokens_per_side
    labels = np.zeros((n, n), dtype=np.int64)
    for index, obj in enumerate(item.objects):
        row0, col0, row1, col1 = geometry.px_to_cells(tuple(obj.box_px))
        ordinal = obj.ordinal.get(item.axis, index) + 1
        if item.axis == "horizontal":
            labels[:, col0:col1] = ordinal
        else:
            labels[row0:row1, :] = ordinal
    return labels


# ----------------------------------------------------------------------------------------- grid tasks


def _random_starts(rng: random.Random, n_objects: int, k: int, side: int, spacing: int | None = None) -> list[int]:
    """Start cells along the axis of n objects of size k: `spacing` empty cells between neighbours
    (the task geometry's spacing) at a random offset, or, with spacing None, random gaps >= 1."""
    if spacing is not None:
        span = n_objects * k + (n_objects - 1) * spacing
        first = rng.randint(0, side - span)
        return [first + i * (k + spacing) for i in range(n_objects)]
    free = side - n_objects * k - (n_objects - 1)  # cells left after the minimum layout
    cuts = sorted(rng.randint(0, free) for _ in range(n_objects))
    starts, position, previous = [], 0, 0
    for i, cut in enumerate(cuts):
        position += cut - previous + (0 if i == 0 else k + 1)
        previous = cut
        starts.append(position)
    return starts


def _is_evaluation_layout(task: GridTask, axis: str, starts: list[int], across: int, geometry: GridGeometry) -> bool:
    """True if this layout is the task's fixed evaluation layout (then it is never used in training)."""
    if len(starts) != 3:
        return False
    canonical = [geometry.slot_cells(axis, slot) for slot in range(3)]
    along_index, across_index = (1, 0) if axis == "horizontal" else (0, 1)
    return starts == [c[along_index] for c in canonical] and across == canonical[0][across_index]


def is_held_out_combination(attributes: list[str] | tuple[str, ...]) -> bool:
    """A quarter of the attribute combinations (unordered sets) are held out: never drawn in the
    evaluation layout during training, so those evaluation items are unseen in every respect."""
    key = "+".join(sorted(attributes))
    return zlib.crc32(key.encode()) % 4 == 0


def random_grid_item(task: GridTask, rng: random.Random, n_objects: int, geometry: GridGeometry = QWEN) -> Item:
    """A training layout of `n_objects` of the task's glyphs on one row or column.

    With probability `EVALUATION_LAYOUT_SHARE` (3 objects) it is the evaluation layout, with an
    attribute combination that is not held out; otherwise a random layout that is not the evaluation
    layout (any attributes).
    """
    k, side = geometry.object_tokens, geometry.tokens_per_side
    if n_objects == 3 and rng.random() < EVALUATION_LAYOUT_SHARE:
        axis = rng.choice(AXES)
        canonical = [geometry.slot_cells(axis, slot) for slot in range(3)]
        along_index, across_index = (1, 0) if axis == "horizontal" else (0, 1)
        starts = [c[along_index] for c in canonical]
        across = canonical[0][across_index]
        while True:
            attributes = rng.sample(list(task.attributes), n_objects)
            if not is_held_out_combination(attributes):
                break
        return _grid_item(task, axis, starts, across, attributes, geometry)
    while True:
        axis = rng.choice(AXES)
        spacing = geometry.spacing_tokens if rng.random() < FIXED_SPACING_SHARE else None
        starts = _random_starts(rng, n_objects, k, side, spacing)
        across = rng.randint(0, side - k)
        if not _is_evaluation_layout(task, axis, starts, across, geometry):
            break
    attributes = rng.sample(list(task.attributes), n_objects)
    return _grid_item(task, axis, starts, across, attributes, geometry)


def _grid_item(
    task: GridTask, axis: str, starts: list[int], across: int, attributes: list[str], geometry: GridGeometry
) -> Item:
    k = geometry.object_tokens
    objects = []
    for slot, (start, attribute) in enumerate(zip(starts, attributes)):
        cells = (across, start, across + k, start + k) if axis == "horizontal" else (start, across, start + k, across + k)
        kind, color = task.appearance(attribute)
        objects.append(
            SceneObject(
                name=task.object_name(attribute),
                attribute=attribute,
                box_px=geometry.cells_to_px(cells),
                box_cells=cells,
                ordinal={axis: slot},
                color=color,
                shape=kind,
            )
        )
    size = geometry.image_size
    first = objects[0].attribute
    return Item(
        id=f"train/{task.name}/{axis}/{'-'.join(attributes)}/{starts}/{across}",
        task=task.name,
        prompt="",
        answer=first,
        answer_variants=answer_variants(first),
        axis=axis,
        relation=RELATIONS_OF_AXIS[axis][0],
        reference=0,
        target=0,
        objects=objects,
        image_size=(size, size),
        grid=geometry.to_dict(),
        background={"kind": "white"},
        meta={"attributes": attributes, "train_layout": True},
    )


def grid_questions(task: GridTask, item: Item) -> list[tuple[str, str]]:
    """Every question with a unique answer: each relation of the axis, each reference with a neighbour."""
    questions = []
    for relation in RELATIONS_OF_AXIS[item.axis]:
        for index, obj in enumerate(item.objects):
            j = nearest_neighbour(item.objects, index, relation)
            if j is not None:
                questions.append((task.prompt(relation, obj.attribute), item.objects[j].attribute))
    return questions


# ----------------------------------------------------------------------------------------- generator


class TrainingSource:
    """Deterministic stream of training images over the grid tasks (and scenes, when available)."""

    def __init__(self, tasks: tuple[str, ...], seed: int, geometry: GridGeometry = QWEN):
        self.tasks = tasks
        self.geometry = geometry
        self.seed = seed
        self.vocabulary = class_vocabulary(tasks)
        self._tasks = {name: get_task(name, geometry=geometry) for name in tasks}
        self._weights = [TASK_WEIGHTS.get(name, 1.0) for name in tasks]

    def sample(self, rng: random.Random, max_objects: int = 3, task: str | None = None) -> TrainingImage:
        name = task or rng.choices(self.tasks, weights=self._weights)[0]
        if name == SCENES_TASK:
            return self._scene_image(rng)
        grid_task = self._tasks[name]
        if max_objects >= 3:
            n_objects = 3 if rng.random() < THREE_OBJECT_SHARE else 2
        else:
            n_objects = max(1, max_objects)
        item = random_grid_item(grid_task, rng, n_objects, self.geometry)
        cells, neighbours = dense_labels(item, self.vocabulary, self.geometry)
        return TrainingImage(
            task=name,
            image=render_objects(item),
            cell_labels=cells,
            neighbour_labels=neighbours,
            ordinal_labels=strip_ordinal_labels(item, self.geometry),
            questions=grid_questions(grid_task, item),
            n_objects=n_objects,
        )

    def _scene_image(self, rng: random.Random) -> TrainingImage:
        """A scenes item from the training seed stream (never the evaluation seeds), both option orders."""
        task = self._tasks[SCENES_TASK]
        item = task.make_item(SCENES_TRAIN_SEED_BASE + self.seed, rng.randrange(10**9))
        cells, neighbours = dense_labels(item, self.vocabulary, self.geometry, with_neighbours=False)
        swapped = item.meta.get("prompt_swapped")
        questions = [(item.prompt, item.answer)] + ([(swapped, item.answer)] if swapped else [])
        return TrainingImage(
            task=SCENES_TASK,
            image=task.image(item),
            cell_labels=cells,
            neighbour_labels=neighbours,
            ordinal_labels=np.full_like(cells, IGNORE),  # scenes are not laid out on one line
            questions=questions,
            n_objects=2,  # two named objects (clutter is not asked about)
        )
