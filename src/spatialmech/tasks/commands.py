"""`spatialmech tasks` and `spatialmech render`: list the tasks, write a task's stimuli to disk."""

from __future__ import annotations

import argparse
import io as _bytes_io
import sys
from pathlib import Path
from typing import Any

from spatialmech import io
from spatialmech.errors import UserInputError
from spatialmech.tasks import TASKS, get_task, needs_data, resolve_geometry, task_description
from spatialmech.tasks.base import CF_ALONE, CF_BLANK, Item, Task
from spatialmech.tasks.geometry import PRESETS, GridGeometry


def list_tasks_command(args: argparse.Namespace) -> int:
    """Print each task with its item count (or what data it needs) and description."""
    rows = []
    for name in TASKS:
        if needs_data(name):
            count = "needs --data"
        else:
            task = get_task(name)
            count = f"{len(task)} items" if hasattr(task, "__len__") else "unbounded"
            if getattr(task, "default_n", None):
                count = f"unbounded (default {task.default_n})"
        rows.append((name, count, task_description(name)))
    name_width = max(len(r[0]) for r in rows)
    count_width = max(len(r[1]) for r in rows)
    for name, count, description in rows:
        print(f"{name:<{name_width}}  {count:<{count_width}}  {description}")
    return 0


def _geometry_for(args: argparse.Namespace) -> GridGeometry:
    """The model's grid (--model, with --grid), a preset (--geometry), or N tokens of the preset's size (--grid)."""
    grid = getattr(args, "grid", None)
    if getattr(args, "model", None) and getattr(args, "geometry", None):
        raise UserInputError("--model and --geometry both given", "pass only one: the model's grid or a named preset")
    if getattr(args, "model", None):
        from spatialmech.models import load_model

        adapter = load_model(args.model, grid=grid)
        spec = adapter.grid_spec()
        name = None if spec.preset and spec.tokens_per_side == PRESETS[spec.preset].tokens_per_side else Path(str(args.model)).name
        return GridGeometry.from_grid_spec(spec, name=name or str(args.model))
    geometry = resolve_geometry(getattr(args, "geometry", None))
    if grid is None or grid == geometry.tokens_per_side:
        return geometry
    if grid < 1:
        raise UserInputError(f"--grid {grid} is not a positive number of tokens per side", "pass e.g. --grid 12")
    return GridGeometry.from_grid_spec({"tokens_per_side": grid, "pixels_per_token": geometry.pixels_per_token})


def png_bytes(image: Any) -> bytes:
    buffer = _bytes_io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


COUNTERFACTUAL_DIR = "counterfactuals"  # render's folder for counterfactual images, beside the items' own
ABLATION_SOURCES = (CF_ALONE, CF_BLANK)  # what an ablated run of a counterfactual needs of its own


def counterfactual_dicts(
    task: Task, item: Item, out: Path | None = None, stem: str = "", kinds: tuple[str, ...] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Counterfactuals of `kinds` (default: every kind the task supports) as item dicts.

    With `out`, each counterfactual's image is written under out/counterfactuals/ (`image_file`), so the
    folder is a self-contained custom data set on which the patching experiments run (`--task
    custom`). Each counterfactual also carries its own ablation sources (`alone`, `blank`), which
    `backup` needs for the counterfactual run."""
    supported = tuple(getattr(task, "counterfactual_kinds", ()))
    sources = tuple(k for k in ABLATION_SOURCES if k in supported) if kinds is None else ()
    result: dict[str, list[dict[str, Any]]] = {}
    for kind in supported if kinds is None else kinds:
        rows = []
        for index, cf in enumerate(task.counterfactuals(item, kind)):
            row = cf.item.to_dict() | {"source_object": cf.source_object}
            if out is not None:
                name = f"{stem}-{kind}-{index}"
                row["image_file"] = f"{COUNTERFACTUAL_DIR}/{name}.png"
                io.atomic_write_bytes(out / row["image_file"], png_bytes(task.image(cf.item)))
                if sources and kind not in ABLATION_SOURCES:
                    row["counterfactuals"] = counterfactual_dicts(task, cf.item, out, name, sources)
            rows.append(row)
        result[kind] = rows
    return result


def render_command(args: argparse.Namespace) -> int:
    """Write `n` items of a task as PNGs plus items.jsonl (item, image file, counterfactual specs)."""
    if args.n is not None and args.n < 1:
        raise UserInputError(f"--n must be at least 1, got {args.n}", "pass a positive number of items")
    geometry = _geometry_for(args)
    task = get_task(args.task, geometry=geometry, data_root=args.data)
    out = io.ensure_writable_dir(args.out)
    # items.jsonl is written last; drop an earlier render's, so a failed render never looks complete.
    (out / "items.jsonl").unlink(missing_ok=True)
    items = task.items(args.n, seed=args.seed)
    rows = []
    for index, item in enumerate(items):
        file_name = f"{index:05d}.png"
        io.atomic_write_bytes(out / file_name, png_bytes(task.image(item)))
        counterfactuals = counterfactual_dicts(task, item, out, f"{index:05d}")
        rows.append(item.to_dict() | {"image_file": file_name, "counterfactuals": counterfactuals})
    io.write_jsonl(out / "items.jsonl", rows)
    print(f"wrote {len(items)} images of task {args.task} ({geometry.name} geometry) and items.jsonl to {out}", file=sys.stdout)
    return 0
