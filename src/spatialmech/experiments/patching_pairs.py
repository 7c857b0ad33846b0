"""Where the patching experiments' counterfactual pairs come from, and which of them are kept.

Candidates are every item's counterfactual (`candidate_pairs`), tuples an experiment draws itself, or
the authors' pair files (`file_pairs`, `--pairs`); `pair_selection` keeps the first `n` per group,
only those the model answers right on both inputs when the config's `filter_correct` asks for it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.experiments.common import LogitsFn, Pair, filter_correct_pairs, make_pairs
from spatialmech.experiments.runner import ExperimentContext
from spatialmech.tasks.base import Item, Task


def candidate_pairs(task: Task, kind: str, seed: int) -> list[Pair]:
    """Every item's counterfactual pair, shuffled from the seed, alternating horizontal and vertical
    items so that the first n pairs (and so the kept pairs) cover both axes evenly."""
    rng = random.Random(seed)
    by_axis: dict[str, list[Item]] = {}
    for item in task.items(None, seed=seed):
        by_axis.setdefault(item.axis, []).append(item)
    queues = []
    for axis in sorted(by_axis):
        items = list(by_axis[axis])
        rng.shuffle(items)
        queues.append(items)
    ordered: list[Item] = []
    for index in range(max((len(q) for q in queues), default=0)):
        ordered.extend(q[index] for q in queues if index < len(q))
    return make_pairs(task, ordered, kind)


def pair_selection(ctx: ExperimentContext, task: Task, groups: Mapping[str, Sequence[Pair]],
                   logits_fn: LogitsFn | None = None) -> dict[str, Any]:
    """The unit `pairs`: the kept pairs' clean ids and the filter report.

    `n` applies per group of candidates (one group "all", or one per direction for last-token). With
    `filter_correct`, the first `n` candidates the model gets right on both inputs (scored with
    `logits_fn`, e.g. under `backup`'s vision ablation; default the plain model); otherwise the first `n`.
    """
    n, filtering = int(ctx.config["n"]), bool(ctx.config.get("filter_correct", True))
    kept: list[Pair] = []
    totals: dict[str, Any] = {}
    by_group: dict[str, Any] = {}
    for group, candidates in groups.items():
        if filtering:
            chosen, report = filter_correct_pairs(ctx.adapter, task, candidates, n, ctx.batch_size, logits_fn)
        else:
            chosen = list(candidates[:n])
            report = {"candidates": len(chosen), "kept": len(chosen), "dropped_clean_wrong": 0,
                      "dropped_counterfactual_wrong": 0, "dropped_both_wrong": 0}
        kept.extend(chosen)
        by_group[group] = report
        for key, value in report.items():
            totals[key] = totals.get(key, 0) + value
    report = {**totals, "requested": n, "filter_correct": filtering}
    if len(groups) > 1:
        report["by_group"] = by_group
    return {"clean_ids": [pair.clean.id for pair in kept], "report": report}


def no_pairs_error(ctx: ExperimentContext, report: Mapping[str, Any]) -> UserInputError:
    return UserInputError(
        f"the model answered none of {report['candidates']} {ctx.task_name} pairs correctly on both the clean and "
        f"the counterfactual input, so there is nothing to patch",
        "check the model with `spatialmech eval` first (a trained model of the right family is needed)",
    )


def file_pairs(ctx: ExperimentContext, task: Task, kind: str, hint: str) -> dict[str, list[Pair]]:
    """The `--pairs` file's pairs per direction, refused in one line when they are the other
    experiment's kind (5-entity last-token pairs vs 3-entity criss-cross pairs)."""
    from spatialmech.tasks import cf_pairs

    groups: dict[str, list[Pair]] = {}
    for file_pair in cf_pairs.load_pairs(ctx.config["pairs_file"], task, model=ctx.adapter.family):
        cf = file_pair.counterfactual
        if cf.kind != kind:
            raise UserInputError(f"--pairs {ctx.config['pairs_file']} holds pairs of another experiment ({cf.kind})",
                                 f"use {hint}")
        groups.setdefault(file_pair.direction, []).append(Pair(file_pair.clean, cf.item, cf.kind))
    return groups
