"""Tasks: synthetic stimuli, real benchmark loaders, counterfactual pairs.

`get_task(name, geometry=None, data_root=None)` is the one way to get a task. Synthetic tasks are
drawn on a token-grid geometry (a `GridGeometry`, a preset name such as "qwen" / "gemma", or a
model's `GridSpec`); real-data tasks (`whatsup`, `coco-spatial`) need `data_root`.
"""

from __future__ import annotations

import importlib
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.tasks.base import (
    COUNTERFACTUAL_KINDS,
    Counterfactual,
    Item,
    SceneObject,
    Task,
)
from spatialmech.tasks.geometry import GEMMA, PRESETS, QWEN, GridGeometry

# name -> ("module:Class", needs data root, one-line description)
_REGISTRY: dict[str, tuple[str, bool, str]] = {
    "squares": ("spatialmech.tasks.synthetic:SquaresTask", False, "3 coloured squares in a row or column (paper: 480 items)"),
    "shapes": ("spatialmech.tasks.synthetic:ShapesTask", False, "3 coloured shapes in a row or column (paper: 480 items)"),
    "objects": ("spatialmech.tasks.synthetic:ObjectsTask", False, "3 of 8 drawn object icons in a row or column (paper: 1344 items)"),
    "scenes": (
        "spatialmech.tasks.scenes:ScenesTask",
        False,
        "natural-looking scenes (texture, clutter, occlusion), two-object left/right/above/below questions; COCO-spatial stand-in",
    ),
    "whatsup": (
        "spatialmech.tasks.whatsup_stitched:WhatsUpStitchedTask",
        True,
        "What'sUp Controlled_Images_A photos stitched into 3-object composites (needs --data)",
    ),
    "coco-spatial": (
        "spatialmech.tasks.coco_spatial:CocoSpatialTask",
        True,
        "What'sUp COCO two-object spatial questions with COCO boxes, strict two-order scoring (needs --data)",
    ),
    "custom": (
        "spatialmech.tasks.custom:CustomTask",
        True,
        "your own images and questions: --data FILE.jsonl (render's items.jsonl) or FILE.csv",
    ),
}

TASKS: tuple[str, ...] = tuple(_REGISTRY)
DATA_HELP: dict[str, str] = {
    "whatsup": (
        "pass --data pointing at a What'sUp checkout (github.com/amitakamath/whatsup_vlms) or its data/ folder, "
        "after its download step put controlled_images_dataset.json and controlled_images/ in data/"
    ),
    "coco-spatial": (
        "pass --data pointing at a folder with What'sUp's coco_qa_two_obj.json, COCO val2017/ images and "
        "annotations/instances_val2017.json (cocodataset.org)"
    ),
    "custom": "pass --data FILE.jsonl (e.g. the items.jsonl of `spatialmech render`) or FILE.csv with image,prompt,answer columns",
}


def task_description(name: str) -> str:
    return _registry_entry(name)[2]


def needs_data(name: str) -> bool:
    return _registry_entry(name)[1]


def _registry_entry(name: str) -> tuple[str, bool, str]:
    if name not in _REGISTRY:
        raise UserInputError(f"unknown task {name!r}", f"use one of {', '.join(TASKS)}")
    return _REGISTRY[name]


def resolve_geometry(geometry: Any = None) -> GridGeometry:
    """A `GridGeometry` from None (Qwen preset), a preset name, a geometry, or a model `GridSpec`."""
    if geometry is None:
        return QWEN
    if isinstance(geometry, GridGeometry):
        return geometry
    if isinstance(geometry, str):
        from spatialmech.tasks.geometry import preset

        return preset(geometry)
    return GridGeometry.from_grid_spec(geometry)


def get_task(name: str, geometry: Any = None, data_root: str | None = None, tokenizer: Any = None) -> Task:
    """The task called `name`, drawn on `geometry` (default Qwen), reading real data from `data_root`.

    `tokenizer` (the model's): tasks whose answer words depend on it use it (What'sUp keeps only side
    objects whose names are one token, as the authors do); others ignore it.
    """
    target, data_task, _ = _registry_entry(name)
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    grid = resolve_geometry(geometry)
    if data_task:
        if data_root is None:
            raise UserInputError(f"task {name!r} needs real data that is not bundled", DATA_HELP[name])
        if getattr(cls, "uses_tokenizer", False):
            return cls(data_root, geometry=grid, tokenizer=tokenizer)
        return cls(data_root, geometry=grid)
    return cls(geometry=grid)


__all__ = [
    "COUNTERFACTUAL_KINDS",
    "GEMMA",
    "PRESETS",
    "QWEN",
    "TASKS",
    "Counterfactual",
    "GridGeometry",
    "Item",
    "SceneObject",
    "Task",
    "get_task",
    "needs_data",
    "resolve_geometry",
    "task_description",
]
