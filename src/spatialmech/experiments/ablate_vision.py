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

The ablation itself (`VisionAblation`, in `vision_ablation.py`) is also what `backup` applies to both
runs of its criss-cross patching.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from spatialmech.engine import Engine
from spatialmech.errors import UserInputError
from spatialmech.experiments.common import ReusedEncodings, get_task_for, score_items, system_prompt
from spatialmech.experiments.plan import Stage
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, chunks
from spatialmech.experiments.vision_ablation import (
    BACKGROUND,
    OBJECTS,
    PARTS,
    SITE,
    SourceTokens,
    VisionAblation,
    single_view,
)
from spatialmech.tasks.base import Item, Task

NAME = "ablate-vision"
ALL_TASKS = "all"  # squares, shapes and objects in one run (the paper's Table 5)
GRID_TASKS = ("squares", "shapes", "objects")
DEFAULT_TASK = ALL_TASKS
TASKS = (ALL_TASKS, *GRID_TASKS)
UNIT_SIZE = 32  # items per resumable unit

# condition -> which parts are replaced; "ablated" is the paper's Table 5 ablation.
CONDITIONS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "ablated": PARTS,
    "objects_only": (OBJECTS,),
    "background_only": (BACKGROUND,),
}


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
    encode = ReusedEncodings()  # every condition scores the same batches: build their inputs once
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
    """Table 5 as the authors' fixed code gives it (their re-run): the published Gemma row came from
    their range(12*12) bug (`reference.ABLATE_VISION_BUGGED`)."""
    from spatialmech import reference as paper

    return {model: values.get(task_name) for model, values in paper.ABLATE_VISION_RERUN.items()}


TOKENS_UNIT = "tokens-replaced"


def _setup(ctx: ExperimentContext) -> dict[str, Any]:
    """Per process: the engine, each task with its items and its ablations (sources shared per task)."""
    def build() -> dict[str, Any]:

        engine = Engine(ctx.adapter)
        tasks, items, ablations = {}, {}, {}
        for name in task_names(ctx.task_name):
            tasks[name] = task = get_task_for(ctx.adapter, name, ctx.data_root)
            items[name] = task.items(ctx.config.get("n"), seed=ctx.seed)
            shared = SourceTokens(engine, task)
            ablations[name] = {c: VisionAblation(engine, task, parts, source_tokens=shared) if parts else None
                               for c, parts in CONDITIONS.items()}
        return {"engine": engine, "tasks": tasks, "items": items, "ablations": ablations}

    return ctx.shared("ablate-vision", build)


def _item_keys(ctx: ExperimentContext) -> list[str]:
    setup = _setup(ctx)
    return [f"{name}-items-{index:05d}" for name in setup["tasks"] for index in range(len(chunks(setup["items"][name], UNIT_SIZE)))]


def plan(ctx: ExperimentContext) -> Iterator[Stage]:
    """One stage: a unit per UNIT_SIZE items of each task, and one counting the replaced tokens."""
    yield Stage("items", (*_item_keys(ctx), TOKENS_UNIT), NAME)


def compute_unit(ctx: ExperimentContext, key: str) -> Mapping[str, Any]:
    setup = _setup(ctx)
    if key == TOKENS_UNIT:
        first = next((name for name in setup["tasks"] if setup["items"][name]), None)
        if first is None:
            return {"tokens_replaced": {}}
        return {"tokens_replaced": _token_counts(setup["engine"], setup["tasks"][first], setup["items"][first][0])}
    name, index = key.rsplit("-items-", 1)
    group = chunks(setup["items"][name], UNIT_SIZE)[int(index)]
    return {"rows": score_group(setup["engine"], setup["tasks"][name], group, ctx.batch_size, setup["ablations"][name])}


def combine(ctx: ExperimentContext) -> ExperimentOutput:
    """Accuracy per task and condition, the chance line and the paper's numbers, from the saved units."""
    setup = _setup(ctx)
    names = task_names(ctx.task_name)
    rows: list[dict[str, Any]] = []
    for key in _item_keys(ctx):
        rows.extend(ctx.load_unit(key)["rows"])
    all_items = [item for name in names for item in setup["items"][name]]
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
    metrics["tokens_replaced"] = ctx.load_unit(TOKENS_UNIT)["tokens_replaced"]
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
