"""`behavior` (paper Table 1): top-1 accuracy of a model on a task, and the `spatialmech eval` command.

An item is correct when the model's next token (after the chat template's assistant opening) is one of
the answer's single-token spelling variants. Forced-choice questions (`scenes`, `coco-spatial`) are
scored strictly, as the paper does: asked with the options in both orders ("left or right" / "right
or left"), correct only if both answers are right.

Chance level: a grid task's image shows 3 objects, so a model naming a random object of the image
scores 1/3 (the paper's chance line); a forced-choice question scored strictly (both orders right) has
the chance its items state in `meta["strict_chance"]` (0.25 for two options, as the authors'
coco_amplification: a random answer per order is right in both with 1/2 x 1/2).

`run behavior` writes `accuracy.png/.svg` (overall and per axis, chance line) like every experiment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.experiments import common
from spatialmech.experiments.common import LogitsFn, get_task_for
from spatialmech.experiments.plan import Stage
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, chunks
from spatialmech.models.base import VLMAdapter

NAME = "behavior"
DEFAULT_TASK = "squares"
TASKS = ("squares", "shapes", "objects", "scenes", "whatsup", "coco-spatial")
UNIT_SIZE = 64  # items per resumable unit


def config_from(options: dict[str, Any], adapter: VLMAdapter | None = None) -> dict[str, Any]:
    n = options.get("n")
    if n is not None and int(n) < 1:
        raise UserInputError(f"--n {n} must be at least 1", "pass a positive number of items")
    config: dict[str, Any] = {
        "n": None if n is None else int(n),
        "scoring": "top-1 over spelling variants; strict two-order for forced choice",
    }
    probe, alpha = options.get("amplify"), options.get("alpha")
    if (probe is None) != (alpha is None):
        raise UserInputError("--amplify and --alpha go together", "pass both (a probe file from `run amplify --save-probe` and a strength)")
    if probe is not None:
        from spatialmech.experiments.probing import author_probe_files, is_author_probe_path
        from spatialmech.provenance import file_sha256

        if is_author_probe_path(probe):  # the authors' .npy arrays: hash each file of the set
            digest: Any = {f.name: file_sha256(f) for pair in author_probe_files(probe).values() for f in pair}
        elif Path(probe).is_file():
            digest = file_sha256(probe)
        else:
            raise UserInputError(f"probe file {probe} does not exist",
                                 "write one with `spatialmech run amplify --save-probe FILE`, or pass the folder of the authors' *_probe_*_W_FP32.npy arrays")
        config["amplify"] = {"probe": str(probe), "probe_sha256": digest, "alpha": float(alpha)}
    return config


def amplification(adapter: VLMAdapter, config: dict[str, Any]) -> LogitsFn | None:
    """The logits function applying a saved ordering amplification, if the config asks for one."""
    spec = config.get("amplify")
    if spec is None:
        return None
    from spatialmech.experiments.amplify import amplification_logits

    return amplification_logits(adapter, spec["probe"], spec["alpha"])


def chance_level(items: Sequence[Any]) -> float:
    if not items:
        return float("nan")
    if common.is_forced_choice(items[0]):
        # Strict scoring (both option orders right): the task says its chance (0.25 for COCO-spatial's
        # two options, 1/len(options)**2); 1/len(options) only for items that do not.
        return float(sum(float((item.meta or {}).get("strict_chance", 1.0 / len(item.options))) for item in items) / len(items))
    named = [len(item.objects) for item in items if item.objects]
    return float(sum(1.0 / n for n in named) / len(named)) if named else float("nan")


def score_items(
    adapter: VLMAdapter, task: Any, items: Sequence[Any], batch_size: int, logits_fn: LogitsFn | None = None
) -> list[dict[str, Any]]:
    """One row per item: prediction(s), correctness and the answer's probability (`common.score_items`)."""
    rows: list[dict[str, Any]] = []
    for item, score in zip(items, common.score_items(adapter, task, items, batch_size, logits_fn)):
        row = {
            "id": item.id,
            "axis": item.axis,
            "relation": item.relation,
            "prompt": item.prompt,
            "answer": item.answer,
            "prediction": score.predicted_token,
            "p_answer": round(score.p_answer, 6),
            "correct": score.correct,
        }
        if score.forced_choice:
            row["prediction_swapped"] = score.predicted_token_swapped
            row["correct_natural_order"] = score.correct_natural_order
            row["correct_swapped_order"] = score.correct_swapped_order
        rows.append(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]], items: Sequence[Any]) -> dict[str, Any]:
    n = len(rows)
    metrics: dict[str, Any] = {
        "accuracy": sum(r["correct"] for r in rows) / n if n else float("nan"),
        "n": n,
        "chance": chance_level(items),
    }
    for axis in ("horizontal", "vertical"):
        subset = [r for r in rows if r["axis"] == axis]
        if subset:
            metrics[f"accuracy_{axis}"] = sum(r["correct"] for r in subset) / len(subset)
    return metrics


def run_behavior(
    adapter: VLMAdapter, task: Any, n: int | None = None, seed: int = 0, batch_size: int = 8, logits_fn: LogitsFn | None = None
) -> dict[str, Any]:
    """Accuracy of `adapter` on `task` (n items from `seed`): metrics plus per-item rows."""
    items = task.items(n, seed=seed)
    rows = score_items(adapter, task, items, batch_size, logits_fn)
    return {**summarise(rows, items), "rows": rows}


def _items(ctx: ExperimentContext) -> list[Any]:
    """Per process: the task's items (n from the seed) and the scoring function."""
    def build() -> dict[str, Any]:
        task = get_task_for(ctx.adapter, ctx.task_name, ctx.data_root)
        return {"task": task, "items": task.items(ctx.config.get("n"), seed=ctx.seed),
                "logits_fn": amplification(ctx.adapter, ctx.config)}

    return ctx.shared("behavior", build)


def _keys(ctx: ExperimentContext) -> tuple[str, ...]:
    return tuple(f"items-{index:05d}" for index in range(len(chunks(_items(ctx)["items"], UNIT_SIZE))))


def plan(ctx: ExperimentContext) -> Iterator[Stage]:
    """One stage: a unit per UNIT_SIZE items."""
    yield Stage("items", _keys(ctx), f"behavior {ctx.task_name}")


def compute_unit(ctx: ExperimentContext, key: str) -> Mapping[str, Any]:
    setup = _items(ctx)
    group = chunks(setup["items"], UNIT_SIZE)[int(key.removeprefix("items-"))]
    return {"rows": score_items(ctx.adapter, setup["task"], group, ctx.batch_size, setup["logits_fn"])}


def combine(ctx: ExperimentContext) -> ExperimentOutput:
    rows: list[dict[str, Any]] = []
    for key in _keys(ctx):
        rows.extend(ctx.load_unit(key)["rows"])
    metrics = summarise(rows, _items(ctx)["items"])
    return ExperimentOutput(metrics=metrics, tables={"predictions": rows}, figures=figure(ctx, metrics))


def figure(ctx: ExperimentContext, metrics: Mapping[str, Any]) -> list[str]:
    """accuracy.png/.svg: overall and per-axis accuracy with the chance line, like every experiment's figure."""
    from spatialmech.experiments.patching import model_name
    from spatialmech.plotting import plot_accuracy_bars

    labels = ["all"] + [axis for axis in ("horizontal", "vertical") if f"accuracy_{axis}" in metrics]
    values = [metrics["accuracy"]] + [metrics[f"accuracy_{axis}"] for axis in labels[1:]]
    chance = metrics["chance"] if metrics["chance"] == metrics["chance"] else None  # NaN: no chance line
    title = f"behavior: {model_name(ctx)}, {ctx.task_name}, n={metrics['n']}"
    return plot_accuracy_bars(labels, values, ctx.figure_path("accuracy"), title, chance=chance)
