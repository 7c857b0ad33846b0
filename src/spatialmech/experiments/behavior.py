"""`behavior` (paper Table 1): top-1 accuracy of a model on a task, and the `spatialmech eval` command.

An item is correct when the model's next token (after the chat template's assistant opening) is one of
the answer's single-token spelling variants. Forced-choice questions (`scenes`, `coco-spatial`) are
scored strictly, as the paper does: asked with the options in both orders ("left or right" / "right
or left"), correct only if both answers are right.

Chance level: a grid task's image shows 3 objects, so a model naming a random object of the image
scores 1/3 (the paper's chance line); a forced-choice question has 2 options and a constant answer
per axis scores 1/2 under strict scoring (strictness is about the order of the options, not the answer).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch

from spatialmech.engine.scoring import answer_probability, strict_correct, top1_correct
from spatialmech.errors import NotAvailableError, UserInputError
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, chunks
from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT, VLMAdapter

NAME = "behavior"
DEFAULT_TASK = "squares"
TASKS = ("squares", "shapes", "objects", "scenes", "whatsup", "coco-spatial")
UNIT_SIZE = 64  # items per resumable unit


def config_from(options: dict[str, Any], adapter: VLMAdapter | None = None) -> dict[str, Any]:
    n = options.get("n")
    if n is not None and int(n) < 1:
        raise UserInputError(f"--n {n} must be at least 1", "pass a positive number of items")
    return {"n": None if n is None else int(n), "scoring": "top-1 over spelling variants; strict two-order for forced choice"}


def is_forced_choice(item: Any) -> bool:
    return bool(item.options) and bool((item.meta or {}).get("prompt_swapped"))


def system_prompt_for(task: Any) -> str | None:
    """SPEC: synthetic tasks use the one-token system prompt; real photos use the model's default."""
    return SYNTHETIC_SYSTEM_PROMPT if getattr(task, "synthetic", True) else None


def chance_level(items: Sequence[Any]) -> float:
    if not items:
        return float("nan")
    if is_forced_choice(items[0]):
        return 1.0 / len(items[0].options)
    named = [len(item.objects) for item in items if item.objects]
    return float(sum(1.0 / n for n in named) / len(named)) if named else float("nan")


def _decode(adapter: VLMAdapter, token: int) -> str:
    return adapter.tokenizer.decode([token])


def score_items(adapter: VLMAdapter, task: Any, items: Sequence[Any], batch_size: int) -> list[dict[str, Any]]:
    """One row per item: prediction(s), correctness and the answer's probability."""
    system = system_prompt_for(task)
    rows: list[dict[str, Any]] = []
    for batch in chunks(list(items), batch_size):
        images = [[task.image(item)] for item in batch]
        answers = [adapter.answer_token_ids(item.answer_variants) for item in batch]
        logits = adapter.forward(adapter.build_inputs(images, [item.prompt for item in batch], system=system)).float()
        correct = top1_correct(logits, answers)
        probability = answer_probability(logits, answers)
        top = logits.argmax(dim=-1).tolist()
        forced = [is_forced_choice(item) for item in batch]
        swapped_correct = torch.ones_like(correct)
        swapped_top: list[int | None] = [None] * len(batch)
        if any(forced):
            swapped_logits = adapter.forward(
                adapter.build_inputs(images, [item.meta["prompt_swapped"] if f else item.prompt for item, f in zip(batch, forced)], system=system)
            ).float()
            swapped_correct = top1_correct(swapped_logits, answers)
            swapped_top = swapped_logits.argmax(dim=-1).tolist()
        final = strict_correct(correct, swapped_correct)
        for i, item in enumerate(batch):
            row = {
                "id": item.id,
                "axis": item.axis,
                "relation": item.relation,
                "prompt": item.prompt,
                "answer": item.answer,
                "prediction": _decode(adapter, top[i]),
                "p_answer": round(float(probability[i]), 6),
                "correct": bool(final[i]) if forced[i] else bool(correct[i]),
            }
            if forced[i]:
                row["prediction_swapped"] = _decode(adapter, int(swapped_top[i]))
                row["correct_natural_order"] = bool(correct[i])
                row["correct_swapped_order"] = bool(swapped_correct[i])
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


def run_behavior(adapter: VLMAdapter, task: Any, n: int | None = None, seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """Accuracy of `adapter` on `task` (n items from `seed`): metrics plus per-item rows."""
    items = task.items(n, seed=seed)
    rows = score_items(adapter, task, items, batch_size)
    return {**summarise(rows, items), "rows": rows}


def get_task_for(adapter: VLMAdapter, task_name: str, data_root: str | None) -> Any:
    from spatialmech.tasks import get_task

    return get_task(task_name, geometry=adapter.grid_spec(), data_root=data_root)


def run(ctx: ExperimentContext) -> ExperimentOutput:
    """The experiment-runner entry point: resumable units of UNIT_SIZE items."""
    task = get_task_for(ctx.adapter, ctx.task_name, ctx.data_root)
    items = task.items(ctx.config.get("n"), seed=ctx.seed)
    groups = chunks(items, UNIT_SIZE)
    iterator: Any = enumerate(groups)
    if ctx.progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(groups), desc=f"behavior {ctx.task_name}", unit="unit", leave=False)
    rows: list[dict[str, Any]] = []
    for index, group in iterator:
        unit = ctx.unit(f"items-{index:05d}", lambda group=group: {"rows": score_items(ctx.adapter, task, group, ctx.batch_size)})
        rows.extend(unit["rows"])
    return ExperimentOutput(metrics=summarise(rows, items), tables={"predictions": rows})


def eval_command(args: argparse.Namespace) -> int:
    """`spatialmech eval --task T`: print accuracy and n (and write OUT/behavior/result.json with --out)."""
    if getattr(args, "amplify", None) is not None or getattr(args, "alpha", None) is not None:
        raise NotAvailableError(
            "--amplify/--alpha (evaluating with ordering amplification) is not available yet",
            "run `spatialmech eval` without them; amplification arrives with the amplify experiment",
        )
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size {args.batch_size} must be at least 1", "pass a positive batch size")
    if args.n is not None and args.n < 1:
        raise UserInputError(f"--n {args.n} must be at least 1", "pass a positive number of items")
    from spatialmech.experiments.commands import load_adapter_from_args, run_experiment
    from spatialmech.tasks import get_task

    get_task(args.task, data_root=args.data)  # fail fast (e.g. missing --data) before loading a model
    start = time.time()
    adapter = load_adapter_from_args(args)
    if args.out is not None:
        from spatialmech.experiments.runner import load_result

        path = run_experiment(
            NAME, adapter, out_root=args.out, task=args.task, options={"n": args.n}, seed=args.seed,
            batch_size=args.batch_size, data_root=args.data, model_label=args.model,
        )
        metrics = load_result(path.parent)["metrics"]
    else:
        task = get_task_for(adapter, args.task, args.data)
        metrics = run_behavior(adapter, task, n=args.n, seed=args.seed, batch_size=args.batch_size)
        path = None
    print(f"{args.task}: accuracy {metrics['accuracy']:.4f} on n={metrics['n']} items "
          f"(chance {metrics['chance']:.2f}) [model {args.model}, {time.time() - start:.1f}s]")
    if path is not None:
        print(f"wrote {path}")
    return 0
