"""What every task item is, whatever produced it (a synthetic generator or a real data set loader).

An `Item` is plain data (JSON-serialisable through `to_dict`), so `items.jsonl` is the item. Its image
is produced by `Task.image(item)` (rendered for synthetic tasks, loaded from disk for real data), so
counterfactual items carry only their layout and cost nothing until used.

Coordinates: pixel boxes are (x0, y0, x1, y1) with x1/y1 exclusive; grid-cell boxes are
(row0, col0, row1, col1) on the token grid the stimulus was drawn for, exclusive ends; `None` for
real photos that are not drawn on a grid. `box_fraction` is the pixel box over the image size, the
form the model adapters' token boxes use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Axis = Literal["horizontal", "vertical"]
Relation = Literal["left", "right", "above", "below"]

AXIS_OF: dict[str, Axis] = {"left": "horizontal", "right": "horizontal", "above": "vertical", "below": "vertical"}
OPPOSITE: dict[str, Relation] = {"left": "right", "right": "left", "above": "below", "below": "above"}

# Counterfactual kinds every synthetic item can produce (SPEC section 4).
CF_OPPOSITE_QUERY = "opposite_query"  # last-token: other attributes at the non-reference slots, opposite query
CF_REVERSED = "reversed"  # criss-cross: attributes reversed along the axis, same query
CF_ALONE = "alone"  # ablate-vision/backup: each object rendered alone at the image centre (one item per object)
CF_BLANK = "blank"  # ablate-vision/backup: blank (white) image, same prompt
COUNTERFACTUAL_KINDS = (CF_OPPOSITE_QUERY, CF_REVERSED, CF_ALONE, CF_BLANK)


@dataclass
class SceneObject:
    """One object in an image."""

    name: str  # what the prompt calls it ("green square", "key", "dog")
    attribute: str  # the answer word this object stands for ("Green", "key", "dog")
    box_px: tuple[int, int, int, int]
    box_cells: tuple[int, int, int, int] | None = None
    ordinal: dict[str, int] = field(default_factory=dict)  # axis -> 0-based order along it (left->right, top->bottom)
    color: tuple[int, int, int] | None = None
    shape: str | None = None


@dataclass
class Item:
    """One question about one image, with everything experiments need to score and intervene."""

    id: str
    task: str
    prompt: str  # user text; the adapter adds the image slot and chat template
    answer: str  # canonical answer word
    answer_variants: list[str]  # spellings counted as the same answer (" Red", "Red", "red", " red")
    axis: Axis
    relation: Relation  # the queried relation ("left" in "left of the green square")
    reference: int  # index into objects of the reference object
    target: int  # index into objects of the correct answer object
    objects: list[SceneObject]
    image_size: tuple[int, int]  # (width, height) in pixels
    grid: dict[str, int] | None = None  # geometry used to draw it (tokens_per_side, pixels_per_token, ...)
    image_path: str | None = None  # for real data: path relative to the data root
    options: list[str] | None = None  # for forced-choice questions (e.g. ["left", "right"])
    background: dict[str, Any] = field(default_factory=dict)  # how to redraw the background (synthetic)
    meta: dict[str, Any] = field(default_factory=dict)

    def box_fraction(self, index: int) -> tuple[float, float, float, float]:
        width, height = self.image_size
        x0, y0, x1, y1 = self.objects[index].box_px
        return (x0 / width, y0 / height, x1 / width, y1 / height)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Item:
        data = dict(data)
        data["objects"] = [SceneObject(**{**o, "box_px": tuple(o["box_px"]),
                                          "box_cells": tuple(o["box_cells"]) if o.get("box_cells") else None,
                                          "color": tuple(o["color"]) if o.get("color") else None})
                           for o in data["objects"]]
        data["image_size"] = tuple(data["image_size"])
        return cls(**data)


@dataclass
class Counterfactual:
    """A counterfactual of an item for one experiment: the other input and what it should answer."""

    kind: str
    item: Item  # the counterfactual input (its own image, prompt and answer)
    source_object: int | None = None  # for CF_ALONE: which object of the clean item is shown alone


class Task(ABC):
    """A named collection of items plus how to get each item's image and counterfactuals."""

    name: str
    description: str = ""
    synthetic: bool = True
    counterfactual_kinds: tuple[str, ...] = ()  # the kinds `counterfactuals` supports for this task

    @abstractmethod
    def items(self, n: int | None = None, seed: int = 0) -> list[Item]:
        """The task's items (all, or a deterministic subset of n), deterministic from the seed."""

    @abstractmethod
    def image(self, item: Item):
        """The item's image as an RGB PIL image."""

    def check_data(self) -> None:
        """Cheap check that the files this task reads exist (run before loading a large model).

        Synthetic tasks read nothing, so there is nothing to check.
        """
        return None

    def counterfactuals(self, item: Item, kind: str) -> list[Counterfactual]:
        """Counterfactuals of `item` of one kind (several for CF_ALONE: one per object)."""
        raise NotImplementedError(f"task {self.name} has no {kind!r} counterfactuals")


class DataTask(Task):
    """A task read from a benchmark's own files under a data root; items are loaded lazily, once."""

    synthetic = False

    def __init__(self, data_root: str | Path, geometry: Any = None):
        from spatialmech.tasks.geometry import QWEN

        self.root = Path(data_root)
        self.geometry = geometry or QWEN
        self._items: list[Item] | None = None
        self.stats: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.all_items())

    @abstractmethod
    def all_items(self) -> list[Item]:
        """Every item of the data set (cached in `self._items`)."""
