"""Fitting `amplify`'s per-axis 2-class probes (the directions it amplifies), under either protocol.

Both protocols pool `projector.out` over the subject's and the reference's box from a forward with
the neutral prompt "Describe the image." and fit one linear probe per axis (`probing.train_probe`:
AdamW lr 1e-3, wd 1e-4, 200 full-batch epochs); two examples per item (subject, reference), split by item.

- paper (the authors' coco_amplification/src/qwen.py `build_probe_data` and common.py
  `train_axis_probes`): items = the baseline-correct items of the evaluation set itself; tokens = every
  token the box touches (`regions.touched_positions`); labels from the caption (the subject is
  "left"/"above" = class 0 when the question's answer says so); items whose touched-token centres
  contradict the caption dropped; 95/5 split (train = max(1, int(0.95 n)), at least one held out).
- strict: items disjoint from the evaluation (`split_items`), tokens whose centre lies in the box
  (nearest token for boxes smaller than one), labels from the boxes' geometry, 95/5 split rounded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from spatialmech.engine import Engine, regions
from spatialmech.experiments.common import encode_items, score_items
from spatialmech.experiments.probing import (
    LinearProbe,
    ProbeTraining,
    held_out_count,
    image_key,
    split_indices,
    train_probe,
)
from spatialmech.experiments.runner import ExperimentContext, chunks
from spatialmech.tasks.base import Item

SITE = "projector.out"
AXIS_CLASSES = {"horizontal": ["left", "right"], "vertical": ["above", "below"]}
DEFAULT_SCENES_N = 300  # strict, scenes: evaluation items; as many again (from another stream) fit the probes
PROBE_STREAM = 7919  # strict, scenes: probe items come from the stream of seed + PROBE_STREAM
UNIT_ITEMS = 32  # items per resumable unit


# ------------------------------------------------------------------------------------------ items


def split_items(task: Any, task_name: str, n: int | None, seed: int) -> tuple[list[Item], list[Item], dict[str, Any]]:
    """strict: (evaluation items, probe items, how they were split): never the same picture in both."""
    if task_name == "scenes":
        count = DEFAULT_SCENES_N if n is None else n
        evaluation = task.items(count, seed=seed)
        probe_items = task.items(count, seed=seed + PROBE_STREAM)
        how = {"method": "separate generator streams", "evaluation_seed": seed, "probe_seed": seed + PROBE_STREAM}
    else:
        pool = task.items(None, seed=seed)
        keys = sorted({image_key(item) for item in pool})
        random.Random(f"amplify/{seed}").shuffle(keys)
        probe_keys = set(keys[: len(keys) // 2])
        evaluation = [item for item in pool if image_key(item) not in probe_keys]
        probe_items = [item for item in pool if image_key(item) in probe_keys]
        if n is not None:
            evaluation, probe_items = evaluation[:n], probe_items[:n]
        how = {"method": "images split in halves (seeded)", "seed": seed}
    overlap = {image_key(i) for i in evaluation} & {image_key(i) for i in probe_items}
    if overlap:
        raise RuntimeError(f"{len(overlap)} images are in both the probe and the evaluation items")
    how.update({"probe_items": len(probe_items), "evaluation_items": len(evaluation), "shared_images": 0})
    return evaluation, probe_items, how


def first_along_axis(item: Item) -> int | None:
    """0 if the subject (item.target) comes first along the item's axis, 1 if the reference does."""
    k = 0 if item.axis == "horizontal" else 1
    subject, reference = item.box_fraction(item.target), item.box_fraction(item.reference)
    cs, cr = (subject[k] + subject[k + 2]) / 2, (reference[k] + reference[k + 2]) / 2
    if cs == cr:
        return None
    return 0 if cs < cr else 1


def caption_label(item: Item) -> int:
    """paper: the subject's class from the caption: 0 when it is left of / above the reference."""
    return 0 if item.relation in ("left", "above") else 1


# ------------------------------------------------------------------------------------------ features


def _pool(engine: Engine, task: Any, items: Sequence[Item], prompt: str, select: Callable[[Any, Item], tuple[torch.Tensor, torch.Tensor]]
          ) -> list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], Any]]:
    """Per item: (subject mean, reference mean, the selected token indices, its ImageTokens) of `projector.out`."""
    inputs = encode_items(engine.adapter, task, items, prompts=[prompt] * len(items))
    chosen = [select(row[0], item) for item, row in zip(items, inputs.images)]
    positions = [torch.cat([row[0].positions[s], row[0].positions[r]]).long() for row, (s, r) in zip(inputs.images, chosen)]
    acts = engine.cache(inputs, {SITE: positions})
    out = []
    for (subject, reference), values, row in zip(chosen, acts[SITE], inputs.images):
        values = values.float()
        out.append((values[: subject.numel()].mean(0), values[subject.numel():].mean(0), (subject, reference), row[0]))
    return out


def strict_features(engine: Engine, task: Any, items: Sequence[Item], prompt: str) -> list[dict[str, Any]]:
    """strict: pooled over tokens whose centre is in the box (nearest one for tiny boxes); box-geometry labels."""
    def select(tokens: Any, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
        return (regions.region_indices(tokens, item.box_fraction(item.target), nearest=True),
                regions.region_indices(tokens, item.box_fraction(item.reference), nearest=True))

    rows = []
    for item, (subject, reference, _, _) in zip(items, _pool(engine, task, items, prompt, select)):
        first = first_along_axis(item)
        rows.append({"id": item.id, "axis": item.axis, "subject_label": first,
                     "subject": subject.tolist(), "reference": reference.tolist()})
    return rows


def paper_features(engine: Engine, task: Any, items: Sequence[Item], prompt: str) -> list[dict[str, Any]]:
    """paper: pooled over the tokens each box touches; caption labels; `agrees` False where the touched
    tokens' mean cell contradicts the caption (the authors' `side_check`), None where a box touches nothing."""
    def select(tokens: Any, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
        return (regions.touched_indices(tokens, item.box_fraction(item.target)),
                regions.touched_indices(tokens, item.box_fraction(item.reference)))

    rows = []
    for item, (subject, reference, (s_idx, r_idx), tokens) in zip(items, _pool(engine, task, items, prompt, select)):
        agrees: bool | None = None
        if s_idx.numel() and r_idx.numel():
            along = tokens.cols if item.axis == "horizontal" else tokens.rows
            before = bool(along[s_idx].float().mean() < along[r_idx].float().mean())
            agrees = (caption_label(item) == 0) == before
        rows.append({"id": item.id, "axis": item.axis, "subject_label": caption_label(item), "agrees": agrees,
                     "subject": subject.tolist() if agrees is not None else [], "reference": reference.tolist() if agrees is not None else []})
    return rows


# ------------------------------------------------------------------------------------------ fitting


def paper_test_count(n: int) -> int:
    """The authors' 95/5 item split: train = max(1, int(0.95 n)), but at least one item held out."""
    if n < 2:
        return 0
    return n - min(max(1, int(0.95 * n)), n - 1)


def fit_probes(ctx: ExperimentContext, rows: Sequence[dict[str, Any]], test_count: Callable[[int], int],
               min_items: int = 1) -> dict[str, LinearProbe]:
    """One 2-class probe per axis from feature rows (two examples per row), each fit a saved unit; an
    axis with fewer than `min_items` rows gets none (the authors need two items to split)."""
    training = ProbeTraining.from_config(ctx.config)
    probes: dict[str, LinearProbe] = {}
    for axis, classes in AXIS_CLASSES.items():
        axis_rows = [row for row in rows if row["axis"] == axis]
        if not axis_rows or len(axis_rows) < min_items:
            continue

        def fit(axis_rows: list[dict[str, Any]] = axis_rows, classes: list[str] = classes, axis: str = axis) -> dict[str, Any]:
            train_idx, test_idx = split_indices(len(axis_rows), test_count(len(axis_rows)), seed=ctx.seed)

            def examples(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
                x = [torch.tensor(axis_rows[i][part]) for i in indices for part in ("subject", "reference")]
                y = [label for i in indices for label in (axis_rows[i]["subject_label"], 1 - axis_rows[i]["subject_label"])]
                hidden = len(axis_rows[0]["subject"])
                return (torch.stack(x) if x else torch.zeros(0, hidden)), torch.tensor(y, dtype=torch.long)

            train_x, train_y = examples(train_idx)
            test_x, test_y = examples(test_idx)
            probe = train_probe(train_x, train_y, classes, training, seed=ctx.seed)
            probe.info.update({"axis": axis, "train_accuracy": probe.accuracy(train_x, train_y),
                               "test_accuracy": probe.accuracy(test_x, test_y) if test_idx else None,
                               "train_items": len(train_idx), "test_items": len(test_idx)})
            return {"probe": probe.to_json()}

        probes[axis] = LinearProbe.from_json(ctx.unit(f"probe-fit-{axis}", fit)["probe"])
    return probes


def fit_strict_probes(ctx: ExperimentContext, engine: Engine, task: Any, probe_items: Sequence[Item]) -> dict[str, Any]:
    """strict: baseline-filter the (disjoint) probe items, pool their features, fit one probe per axis."""
    config = ctx.config
    report = {"candidates": len(probe_items), "kept": 0, "dropped_baseline_wrong": 0, "dropped_no_order": 0}
    features: list[dict[str, Any]] = []
    for index, group in enumerate(chunks(list(probe_items), UNIT_ITEMS)):
        group = list(group)
        if config["filter_correct"]:
            scored = ctx.unit(f"probe-baseline-{index:04d}", lambda group=group: {
                "correct": [s.correct for s in score_items(ctx.adapter, task, group, ctx.batch_size)]})
            right = [item for item, ok in zip(group, scored["correct"]) if ok]
            report["dropped_baseline_wrong"] += len(group) - len(right)
        else:
            right = group
        if right:
            unit = ctx.unit(f"probe-features-{index:04d}", lambda right=right: {"rows": [
                row for batch in chunks(right, ctx.batch_size) for row in strict_features(engine, task, batch, config["feature_prompt"])]})
            for row in unit["rows"]:
                if row["subject_label"] is None:
                    report["dropped_no_order"] += 1
                else:
                    features.append(row)
    report["kept"] = len(features)
    fraction = float(config["probe_test_fraction"])
    return {"probes": fit_probes(ctx, features, lambda n: held_out_count(n, fraction)), "report": report}


def fit_paper_probes(ctx: ExperimentContext, engine: Engine, task: Any, golden: Sequence[Item]) -> dict[str, Any]:
    """paper: features of the baseline-correct evaluation items, caption-contradicting ones dropped."""
    report = {"candidates": len(golden), "kept": 0, "dropped_box_contradicts_caption": 0, "dropped_box_touches_no_token": 0}
    features: list[dict[str, Any]] = []
    for index, group in enumerate(chunks(list(golden), UNIT_ITEMS)):
        unit = ctx.unit(f"probe-features-{index:04d}", lambda group=group: {"rows": [
            row for batch in chunks(list(group), ctx.batch_size) for row in paper_features(engine, task, batch, ctx.config["feature_prompt"])]})
        for row in unit["rows"]:
            if row["agrees"] is None:
                report["dropped_box_touches_no_token"] += 1
            elif not row["agrees"]:
                report["dropped_box_contradicts_caption"] += 1
            else:
                features.append(row)
    report["kept"] = len(features)
    return {"probes": fit_probes(ctx, features, paper_test_count, min_items=2), "report": report}
