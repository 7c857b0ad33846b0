"""The authors' counterfactual-pair files as our items, so a run can use their exact pairs.

Their files (GitHub `Nix07/spatial-variable-binding`, one per task) are JSON objects
`{model key: {direction: [tuple, ...]}}` with their model keys "qwen2-vl-7b", "gemma-3-4b-it",
"pixtral-12b" and directions left/right/above/below (What'sUp: left/right):

- `last_token_exp/cf_pairs/<task>.json`: 5-tuples (t0, t1, t2, t3, t4), t1 the middle (reference)
  object. For left/above the clean image holds (t0, t1, t2) and the counterfactual (t4, t1, t3) asked
  the opposite way; for right/below (t2, t1, t0) and (t3, t1, t4). The clean answer is t0, the
  counterfactual's t3 (their `last_token_exp/src/data.py`). Becomes our `opposite_query` kind.
- `criss_cross_patching/cf_pairs/<task>.json`: 3-tuples (t0, t1, t2). Clean (t0, t1, t2) for left/above,
  (t2, t1, t0) for right/below; the counterfactual is the reverse, same question (their
  `criss_cross_patching/src/data.py`). Becomes our `reversed` kind.

Entities: squares a colour name ("Red"), shapes a [shape, colour] pair (our shapes are named by shape;
the colour must be the one our palette gives that shape), objects an object name, What'sUp a side-object
file stem with t1 the reference (chair / table / armchair). An entity this task does not have (e.g.
Pixtral's "Orange" against our palette) is a one-line error naming the file, direction and pair.

`load_pairs(path, task, model=...)` is the one entry point; each `FilePair` carries the clean item,
its `Counterfactual` (the kind above) and the direction; `clean.meta["pair_entities"]` lists the
answer words of every entity of the tuple in order (their last-token metric tracks all five).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spatialmech import io
from spatialmech.errors import UserInputError
from spatialmech.tasks.base import (
    AXIS_OF,
    CF_OPPOSITE_QUERY,
    CF_REVERSED,
    OPPOSITE,
    Counterfactual,
    Item,
    Task,
)

# Their model keys, per our family names.
MODEL_KEYS: dict[str, str] = {"qwen2-vl": "qwen2-vl-7b", "gemma3": "gemma-3-4b-it", "pixtral": "pixtral-12b"}
KIND_OF_LENGTH: dict[int, str] = {5: CF_OPPOSITE_QUERY, 3: CF_REVERSED}
FIX = "use the authors' last_token_exp/cf_pairs/<task>.json or criss_cross_patching/cf_pairs/<task>.json for this task"


@dataclass
class FilePair:
    """One pair of a counterfactual-pair file, as our items."""

    direction: str
    clean: Item
    counterfactual: Counterfactual


def model_key_for(family: str | None) -> str | None:
    """The authors' key for a model family (None for families they did not run)."""
    return MODEL_KEYS.get(family or "")


def load_pairs(path: str | Path, task: Task, model: str | None = None) -> list[FilePair]:
    """Every pair of one model in the file at `path`, built on `task` (squares, shapes, objects or
    whatsup). `model`: their key ("qwen2-vl-7b"), or our family name ("qwen2-vl"); may be left out
    when the file holds one model."""
    file = Path(path)
    data = io.read_json(file, what="counterfactual-pair file")
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise UserInputError(f"counterfactual-pair file {file} has the wrong shape (want {{model: {{direction: [tuples]}}}})", FIX)
    key = _pick_model(file, data, model)
    pairs: list[FilePair] = []
    kinds: set[str] = set()
    for direction, tuples in data[key].items():
        if direction not in AXIS_OF or not isinstance(tuples, list):
            raise UserInputError(f"counterfactual-pair file {file}: {key}/{direction!r} is not a direction with a list of pairs",
                                 "directions must be left, right, above or below")
        for index, entry in enumerate(tuples):
            where = f"counterfactual-pair file {file}: {key}/{direction} pair {index}"
            if not isinstance(entry, list) or len(entry) not in KIND_OF_LENGTH:
                raise UserInputError(f"{where} is not a list of 3 (criss-cross) or 5 (last-token) entities", FIX)
            kinds.add(KIND_OF_LENGTH[len(entry)])
            if len(kinds) > 1:
                raise UserInputError(f"{where}: the file mixes 3- and 5-entity pairs", FIX)
            pairs.append(build_pair(task, [_attribute(task, e, where) for e in entry], direction, where, file.stem))
    if not pairs:
        raise UserInputError(f"counterfactual-pair file {file} has no pairs for model {key}", FIX)
    return pairs


def _pick_model(file: Path, data: dict[str, Any], model: str | None) -> str:
    if model is None:
        if len(data) == 1:
            return next(iter(data))
        raise UserInputError(f"counterfactual-pair file {file} holds several models ({', '.join(data)})",
                             "say which one (their key, or our family name such as qwen2-vl)")
    key = MODEL_KEYS.get(model, model)
    if key not in data:
        raise UserInputError(f"counterfactual-pair file {file} has no pairs for model {model!r}",
                             f"use one of {', '.join(data)}")
    return key


def _attribute(task: Task, entity: Any, where: str) -> str:
    """Our attribute (or What'sUp file stem) for one of their entities."""
    if task.name == "whatsup":
        if isinstance(entity, str):
            return entity
    elif task.name == "shapes" and isinstance(entity, list) and len(entity) == 2 and all(isinstance(e, str) for e in entity):
        from spatialmech.tasks.vocabulary import PIXTRAL_SHAPE_COLORS, SHAPE_COLORS

        colours = PIXTRAL_SHAPE_COLORS if getattr(task, "pixtral", False) else SHAPE_COLORS
        shape, colour = entity
        name = next((s for s in colours if s.lower() == shape.lower()), None)
        if name is None or colours[name].lower() != colour.lower():
            raise UserInputError(f"{where}: shape {entity!r} is not one of this task's shapes ({colours})",
                                 "use pairs made with the same shape palette (Pixtral's Orange shapes differ)")
        return colours[name]  # the shapes task's attribute is the colour, its answer
    elif isinstance(entity, str) and task.name in ("squares", "objects"):
        attributes = getattr(task, "attributes", ())
        name = next((a for a in attributes if a.lower() == entity.lower()), None)
        if name is None:
            raise UserInputError(f"{where}: {entity!r} is not a {task.name} attribute of this task ({', '.join(attributes)})",
                                 "use pairs made for the same palette and object set")
        return name
    raise UserInputError(f"{where}: entity {entity!r} does not fit task {task.name}", FIX)


def build_pair(task: Task, entities: list[str], direction: str, where: str, stem: str) -> FilePair:
    """One pair from our attribute names in their tuple order (module docstring); `where` names it in
    errors, `stem` goes into the clean item's id. Also how last-token draws its own 5-tuples."""
    if len(entities) == 5:
        t0, t1, t2, t3, t4 = entities
        first = direction in ("left", "above")
        clean_slots, cf_slots = ((t0, t1, t2), (t4, t1, t3)) if first else ((t2, t1, t0), (t3, t1, t4))
        kind, cf_direction = CF_OPPOSITE_QUERY, OPPOSITE[direction]
    else:
        t0, t1, t2 = entities
        clean_slots = (t0, t1, t2) if direction in ("left", "above") else (t2, t1, t0)
        cf_slots, kind, cf_direction = clean_slots[::-1], CF_REVERSED, direction
    clean = _build(task, clean_slots, direction, where, f"pairs/{stem}/{direction}/{'-'.join(entities)}")
    cf = _build(task, cf_slots, cf_direction, where, f"{clean.id}#{kind}")
    cf.meta["clean_id"] = clean.id
    clean.meta["pair_entities"] = [_answer_word(task, e) for e in entities]
    return FilePair(direction, clean, Counterfactual(kind, cf))


def _build(task: Task, slots: tuple[str, str, str], relation: str, where: str, item_id: str) -> Item:
    if task.name == "whatsup":
        if relation not in ("left", "right"):
            raise UserInputError(f"{where}: What'sUp pairs are left/right only, not {relation}", FIX)
        left, middle, right = slots
        return task.composite(middle, left, right, relation, item_id)  # type: ignore[attr-defined]
    return task.layout_item(slots, AXIS_OF[relation], relation, item_id)  # type: ignore[attr-defined]


def _answer_word(task: Task, attribute: str) -> str:
    if task.name == "whatsup":
        from spatialmech.tasks.whatsup import noun

        return noun(attribute)
    return attribute
