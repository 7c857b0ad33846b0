"""`ablate-vision` (paper §5.3.1, Table 5): remove vision-derived position, keep object identity.

At the LM input (`projector.out`, which is the layer-0 input at image positions) every object's
tokens are replaced by the tokens of the *same* object rendered alone at the image centre, and every
background token by the token of a blank white image at the same grid cell. What is left tells the LM
*what* the objects are but no longer (from the vision encoder) *where* they are: accuracy falls
towards chance (paper, Qwen2-VL-7B: 0.60 / 0.62 / 0.43 on squares / shapes / objects; chance 0.33).
Two extra conditions, objects only and background only, show which part carries the position signal.

Geometry comes from the model's own input (`ImageTokens`: each token's grid cell and box), never from
constants: the ablation covers every image token exactly once on any grid (checked on every row), and
the alone object's token block must have the clean object's shape (checked, with a clear error). The
authors' `range(12*12)` silently under-ablated Gemma's 16x16 grid; this cannot.

`VisionAblation` is also what `backup` applies to both runs of its criss-cross patching.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spatialmech.engine import Engine, Intervention, Patch, regions
from spatialmech.errors import UserInputError
from spatialmech.experiments.common import ReusedEncodings, score_items, system_prompt
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, chunks
from spatialmech.models.base import BatchInputs, ImageTokens
from spatialmech.tasks.base import CF_ALONE, CF_BLANK, Item, Task

NAME = "ablate-vision"
ALL_TASKS = "all"  # squares, shapes and objects in one run (the paper's Table 5)
GRID_TASKS = ("squares", "shapes", "objects")
DEFAULT_TASK = ALL_TASKS
TASKS = (ALL_TASKS, *GRID_TASKS)
UNIT_SIZE = 32  # items per resumable unit

SITE = "projector.out"
OBJECTS, BACKGROUND = "objects", "background"
PARTS = (OBJECTS, BACKGROUND)
# condition -> which parts are replaced; "ablated" is the paper's Table 5 ablation.
CONDITIONS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "ablated": PARTS,
    "objects_only": (OBJECTS,),
    "background_only": (BACKGROUND,),
}
# Where the replacement tokens come from: the paper's ("alone" objects, "blank" background), or the
# clean image itself ("clean": an identity check, must leave the model's output bit-identical).
SOURCE_MODES = ("alone", "clean")
_MEMO_LIMIT = 1024  # source images kept in memory (alone/blank images repeat; "clean" mode does not)


# ---------------------------------------------------------------------------------------- geometry
def single_view(inputs: BatchInputs, row: int) -> ImageTokens:
    """The image tokens of batch row `row`, which must hold one image seen as one token grid."""
    per_row = inputs.images[row]
    if len(per_row) != 1:
        raise UserInputError(f"row {row} holds {len(per_row)} images, the ablation needs exactly one", "use one image per prompt")
    tokens = per_row[0]
    if len(tokens.grid_shapes) != 1:
        raise UserInputError(
            f"the model splits this image into {len(tokens.grid_shapes)} views ({', '.join(tokens.tile_names)}), "
            "so an object's tokens cannot be mapped one-to-one onto a centred copy",
            "run ablate-vision/backup on a single-view family (Qwen2-VL, Qwen2.5-VL, Gemma3, LLaVA, PaliGemma, Pixtral)",
        )
    return tokens


def block_shape(tokens: ImageTokens, index: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) spanned by a block of tokens; -1s when it is not a full rectangle."""
    if index.numel() == 0:
        return (0, 0)
    rows, cols = tokens.rows[index], tokens.cols[index]
    height = int(rows.max() - rows.min()) + 1
    width = int(cols.max() - cols.min()) + 1
    return (height, width) if height * width == index.numel() else (-1, -1)


def image_digest(image: Any) -> str:
    """A key for an image's pixels (alone/blank images repeat across items: compute their tokens once)."""
    digest = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- sources
@dataclass
class SourceImage:
    """`projector.out` of one source image (alone object / blank / clean), aligned with its tokens."""

    tokens: ImageTokens
    values: torch.Tensor  # (len(tokens), hidden)

    def cell_table(self) -> torch.Tensor:
        """(rows, cols) -> index into `values` (-1 where the grid has no token)."""
        n_rows, n_cols = self.tokens.grid_shapes[0]
        table = torch.full((int(n_rows), int(n_cols)), -1, dtype=torch.long)
        table[self.tokens.rows, self.tokens.cols] = torch.arange(len(self.tokens))
        return table


class SourceTokens:
    """Computes each source image's `projector.out` once, in a batch of its own (so the values do not
    depend on which items asked first: an interrupted run resumed gets the very same numbers)."""

    def __init__(self, engine: Engine, task: Task):
        self.engine = engine
        self.task = task
        self._memo: dict[str, SourceImage] = {}

    def get(self, image: Any, prompt: str) -> SourceImage:
        key = image_digest(image)
        if key not in self._memo:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            inputs = self.engine.adapter.build_inputs([[image]], [prompt], system=system_prompt(self.task))
            tokens = single_view(inputs, 0)
            values = self.engine.cache(inputs, [SITE], [tokens.positions])[SITE][0]
            self._memo[key] = SourceImage(tokens, values)
        return self._memo[key]


# ---------------------------------------------------------------------------------------- the ablation
@dataclass
class RowAblation:
    """What the ablation writes into one batch row: LM positions and their new `projector.out` values."""

    positions: torch.Tensor  # objects (in object order), then background
    values: torch.Tensor  # (len(positions), hidden)
    object_positions: list[torch.Tensor]  # per object of the item, raster order
    background_positions: torch.Tensor
    image_positions: torch.Tensor  # every image token of the row


def check_covers_every_image_token(row: RowAblation) -> None:
    """The full ablation must write each image token exactly once (objects + background = image)."""
    written = row.positions.tolist()
    if len(set(written)) != len(written):
        raise RuntimeError(f"vision ablation writes {len(written) - len(set(written))} image tokens twice (overlapping object boxes)")
    missing = set(row.image_positions.tolist()) - set(written)
    extra = set(written) - set(row.image_positions.tolist())
    if missing or extra:
        raise RuntimeError(f"vision ablation misses {len(missing)} image tokens and writes {len(extra)} non-image positions")


class VisionAblation:
    """The paper's layer-0 vision ablation for batches of grid-task items.

    `parts` picks what is replaced (objects, background, or both); `sources` where replacements come
    from: "alone" (the paper: the object alone at the centre, a blank white image) or "clean" (the item's
    own image at the same tokens: an identity that must leave the output bit-identical).
    """

    def __init__(self, engine: Engine, task: Task, parts: Sequence[str] = PARTS, sources: str = "alone",
                 source_tokens: SourceTokens | None = None):
        unknown = [p for p in parts if p not in PARTS]
        if unknown or sources not in SOURCE_MODES:
            raise UserInputError(f"unknown ablation parts {unknown} or sources {sources!r}", f"use parts from {PARTS} and sources from {SOURCE_MODES}")
        self.engine = engine
        self.task = task
        self.parts = tuple(parts)
        self.sources = sources
        self.source_tokens = source_tokens or SourceTokens(engine, task)

    # -------------------------------------------------------------- where replacements come from
    def _object_sources(self, item: Item) -> list[tuple[SourceImage, tuple[float, float, float, float]]]:
        """Per object of `item`: the source image's tokens and the box of that object in it."""
        if self.sources == "clean":
            clean = self.source_tokens.get(self.task.image(item), item.prompt)
            return [(clean, item.box_fraction(i)) for i in range(len(item.objects))]
        by_object = {cf.source_object: cf.item for cf in self.task.counterfactuals(item, CF_ALONE)}
        if sorted(k for k in by_object if k is not None) != list(range(len(item.objects))):
            raise UserInputError(
                f"task {self.task.name} gives 'alone' counterfactuals for objects {sorted(by_object)} of item {item.id} "
                f"with {len(item.objects)} objects", "use a grid task (squares, shapes, objects)",
            )
        out = []
        for index in range(len(item.objects)):
            alone = by_object[index]
            out.append((self.source_tokens.get(self.task.image(alone), alone.prompt), alone.box_fraction(0)))
        return out

    def _background_source(self, item: Item) -> SourceImage:
        if self.sources == "clean":
            return self.source_tokens.get(self.task.image(item), item.prompt)
        blank = self.task.counterfactuals(item, CF_BLANK)[0].item
        return self.source_tokens.get(self.task.image(blank), blank.prompt)

    # -------------------------------------------------------------- one row
    def row(self, inputs: BatchInputs, row: int, item: Item) -> RowAblation:
        tokens = single_view(inputs, row)
        object_index = [regions.region_indices(tokens, item.box_fraction(i), order="raster") for i in range(len(item.objects))]
        in_object = torch.zeros(len(tokens), dtype=torch.bool)
        for index in object_index:
            in_object[index] = True
        background_index = (~in_object).nonzero().reshape(-1)
        positions: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        if OBJECTS in self.parts:
            for obj, (index, (source, box)) in enumerate(zip(object_index, self._object_sources(item))):
                source_index = regions.region_indices(source.tokens, box, order="raster")
                clean_shape, source_shape = block_shape(tokens, index), block_shape(source.tokens, source_index)
                if index.numel() != source_index.numel() or clean_shape != source_shape:
                    raise UserInputError(
                        f"item {item.id}: object {obj} covers {index.numel()} tokens {clean_shape} but its centred copy "
                        f"covers {source_index.numel()} {source_shape}, so tokens cannot be swapped one for one",
                        "draw the task on the model's own token grid (tasks.get_task(..., geometry=adapter.grid_spec()))",
                    )
                positions.append(tokens.positions[index])
                values.append(source.values[source_index])
        if BACKGROUND in self.parts:
            source = self._background_source(item)
            if tuple(source.tokens.grid_shapes[0]) != tuple(tokens.grid_shapes[0]):
                raise UserInputError(
                    f"item {item.id}: the blank image has a {source.tokens.grid_shapes[0]} token grid, the item "
                    f"{tokens.grid_shapes[0]}", "render the blank image at the item's size (task counterfactuals do)",
                )
            source_index = source.cell_table()[tokens.rows[background_index], tokens.cols[background_index]]
            if bool((source_index < 0).any()):
                raise UserInputError(f"item {item.id}: the blank image lacks tokens at some grid cells", "use a single-view model")
            positions.append(tokens.positions[background_index])
            values.append(source.values[source_index])
        hidden = self.engine.adapter.hidden_size
        plan = RowAblation(
            positions=torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long),
            values=torch.cat(values) if values else torch.zeros(0, hidden),
            object_positions=[tokens.positions[index] for index in object_index],
            background_positions=tokens.positions[background_index],
            image_positions=tokens.positions,
        )
        if set(self.parts) == set(PARTS):
            check_covers_every_image_token(plan)
        return plan

    # -------------------------------------------------------------- batches
    def plan(self, inputs: BatchInputs, items: Sequence[Item]) -> list[RowAblation]:
        if len(items) != inputs.batch_size:
            raise UserInputError(f"{len(items)} items for a batch of {inputs.batch_size}", "pass one item per batch row")
        return [self.row(inputs, row, item) for row, item in enumerate(items)]

    def interventions(self, inputs: BatchInputs, items: Sequence[Item]) -> list[Intervention]:
        """One `Patch` at `projector.out` doing the whole ablation of every row (none for no parts)."""
        if not self.parts:
            return []
        rows = self.plan(inputs, items)
        return [Patch(SITE, [r.positions for r in rows], [r.values for r in rows])]

    def logits(self, inputs: BatchInputs, items: Sequence[Item]) -> torch.Tensor:
        """Last-position logits under the ablation (a `common.LogitsFn`)."""
        return self.engine.logits(inputs, self.interventions(inputs, items))


# ---------------------------------------------------------------------------------------- experiment
def config_from(options: dict[str, Any], adapter: Any = None) -> dict[str, Any]:
    n = options.get("n")
    if n is not None and int(n) < 1:
        raise UserInputError(f"--n {n} must be at least 1", "pass a positive number of items")
    return {
        "n": None if n is None else int(n),
        "site": SITE,
        "conditions": {name: list(parts) for name, parts in CONDITIONS.items()},
        "object_source": "the same object rendered alone at the image centre (its k x k token block)",
        "background_source": "a blank white image, token at the same grid cell",
        "scoring": "top-1 over spelling variants",
    }


def task_names(task_name: str) -> tuple[str, ...]:
    return GRID_TASKS if task_name == ALL_TASKS else (task_name,)


def score_group(engine: Engine, task: Task, items: Sequence[Item], batch_size: int,
                ablations: dict[str, VisionAblation | None]) -> list[dict[str, Any]]:
    """One row per item: correctness, P(answer) and prediction under every condition."""
    rows = [{"task": task.name, "id": item.id, "axis": item.axis, "relation": item.relation, "answer": item.answer} for item in items]
    encode = ReusedEncodings(engine)  # every condition scores the same pictures: encode them once
    for condition, ablation in ablations.items():
        logits_fn = ablation.logits if ablation is not None else None
        for row, score in zip(rows, score_items(engine.adapter, task, items, batch_size, logits_fn, encode=encode)):
            row[f"{condition}_correct"] = score.correct
            row[f"{condition}_p_answer"] = round(score.p_answer, 6)
            row[f"{condition}_prediction"] = score.predicted_token
    return rows


def _accuracy(rows: Sequence[dict[str, Any]], condition: str) -> float | None:
    return sum(bool(r[f"{condition}_correct"]) for r in rows) / len(rows) if rows else None


def paper_reference(task_name: str) -> dict[str, float | None]:
    from spatialmech import reference as paper

    return {model: values.get(task_name) for model, values in paper.ABLATE_VISION.items()}


def run(ctx: ExperimentContext) -> ExperimentOutput:
    engine = Engine(ctx.adapter)
    names = task_names(ctx.task_name)
    tasks, groups = {}, []
    from spatialmech.tasks import get_task

    for name in names:
        tasks[name] = get_task(name, geometry=ctx.adapter.grid_spec(), data_root=ctx.data_root)
        items = tasks[name].items(ctx.config.get("n"), seed=ctx.seed)
        groups.extend((name, index, group) for index, group in enumerate(chunks(items, UNIT_SIZE)))
    ablations = {}
    for name, task in tasks.items():
        shared = SourceTokens(engine, task)
        ablations[name] = {c: VisionAblation(engine, task, parts, source_tokens=shared) if parts else None for c, parts in CONDITIONS.items()}

    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    for name, index, group in tqdm(groups, desc=NAME, unit="unit", disable=not ctx.progress, leave=False):
        unit = ctx.unit(
            f"{name}-items-{index:05d}",
            lambda name=name, group=group: {"rows": score_group(engine, tasks[name], group, ctx.batch_size, ablations[name])},
        )
        rows.extend(unit["rows"])

    all_items = [item for name in names for item in tasks[name].items(ctx.config.get("n"), seed=ctx.seed)]
    chance = round(sum(1.0 / len(item.objects) for item in all_items) / len(all_items), 6) if all_items else None
    by_task = {name: [r for r in rows if r["task"] == name] for name in names}
    metrics: dict[str, Any] = {
        "accuracy": {name: _accuracy(r, "ablated") for name, r in by_task.items()},
        "baseline_accuracy": {name: _accuracy(r, "baseline") for name, r in by_task.items()},
        "objects_only_accuracy": {name: _accuracy(r, "objects_only") for name, r in by_task.items()},
        "background_only_accuracy": {name: _accuracy(r, "background_only") for name, r in by_task.items()},
        "ablated_accuracy_on_baseline_correct": {
            name: _accuracy([x for x in r if x["baseline_correct"]], "ablated") for name, r in by_task.items()
        },
        "chance": chance,
        "n": {name: len(r) for name, r in by_task.items()},
    }
    # item-weighted over tasks: scalars the CLI prints
    metrics["mean_accuracy"] = _accuracy(rows, "ablated")
    metrics["mean_baseline_accuracy"] = _accuracy(rows, "baseline")
    metrics["tokens_replaced"] = _token_counts(engine, tasks[names[0]], all_items[0]) if all_items else {}
    table = []
    for name, task_rows in by_task.items():
        reference = paper_reference(name)
        for condition in CONDITIONS:
            table.append({
                "task": name, "condition": condition, "accuracy": _accuracy(task_rows, condition), "n": len(task_rows),
                "chance": chance,
                **{f"paper_{model}": (reference[model] if condition == "ablated" else None) for model in reference},
            })
    figures = plot_grouped_accuracy(by_task, chance, ctx.figure_path("accuracy_bars"), ctx.adapter.family)
    return ExperimentOutput(metrics=metrics, tables={"accuracy": table, "predictions": rows}, figures=figures)


def _token_counts(engine: Engine, task: Task, item: Item) -> dict[str, Any]:
    """How many tokens the ablation rewrites on this model's grid (for the reader: all of them)."""
    inputs = engine.adapter.build_inputs([[task.image(item)]], [item.prompt], system=system_prompt(task))
    plan = VisionAblation(engine, task).row(inputs, 0, item)
    rows, cols = single_view(inputs, 0).grid_shapes[0]
    return {
        "grid": f"{rows}x{cols}",
        "image_tokens": int(plan.image_positions.numel()),
        "object_tokens": int(sum(p.numel() for p in plan.object_positions)),
        "background_tokens": int(plan.background_positions.numel()),
    }


def plot_grouped_accuracy(by_task: dict[str, list[dict[str, Any]]], chance: float | None, stem: Any, family: str) -> list[str]:
    """Bars per task (one per condition), a dashed chance line, the paper's post-ablation numbers as markers."""
    from spatialmech import plotting as figures  # selects matplotlib's Agg backend before pyplot

    plt, PALETTE, save_figure = figures.plt, figures.PALETTE, figures.save_figure

    names = list(by_task)
    conditions = list(CONDITIONS)
    width = 0.8 / len(conditions)
    fig, ax = plt.subplots(figsize=(1.9 * len(names) + 2.0, 3.6))
    for c, condition in enumerate(conditions):
        xs = [t + (c - (len(conditions) - 1) / 2) * width for t in range(len(names))]
        values = [_accuracy(by_task[name], condition) or 0.0 for name in names]
        ax.bar(xs, values, width=width * 0.95, color=PALETTE[c % len(PALETTE)], label=condition.replace("_", " "))
        for x, value in zip(xs, values):
            ax.text(x, value + 0.015, f"{value:.2f}", ha="center", fontsize=6)
        if condition == "ablated":
            for marker, (model, _) in zip(("D", "s"), paper_reference(names[0]).items()):
                points = [(x, paper_reference(name)[model]) for x, name in zip(xs, names) if paper_reference(name)[model] is not None]
                if points:
                    ax.scatter(*zip(*points), marker=marker, facecolors="none", edgecolors="black", zorder=3, label=f"paper {model} (ablated)")
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="dashed", linewidth=1, label=f"chance ({chance:.2f})")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Vision ablation at the LM input ({family})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, stem)
