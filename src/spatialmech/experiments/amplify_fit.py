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
from spatialmech.experiments.common import encode_items
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


# ------------------------------------------------------------------------------------------ units
# Probe items go in groups of UNIT_ITEMS (strict: `probe-baseline-NNNN`, their baseline filter); a group
# with items left gives a `probe-features-NNNN` unit, and an axis with enough feature rows a
# `probe-fit-<axis>` unit. Each reads the saved units of the step before, never this process's state.


def groups(items: Sequence[Item]) -> list[list[Item]]:
    """The items of each resumable unit (the same chunking in every step and every process)."""
    return [list(group) for group in chunks(list(items), UNIT_ITEMS)]


def group_key(prefix: str, index: int) -> str:
    return f"{prefix}-{index:04d}"


def strict_feature_groups(ctx: ExperimentContext, probe_items: Sequence[Item]) -> list[list[Item]]:
    """strict: per group, the probe items left after the baseline filter (from the saved `probe-baseline` units)."""
    if not ctx.config["filter_correct"]:
        return groups(probe_items)
    return [[item for item, ok in zip(group, ctx.load_unit(group_key("probe-baseline", index))["correct"]) if ok]
            for index, group in enumerate(groups(probe_items))]


def features_unit(ctx: ExperimentContext, engine: Engine, task: Any, group: Sequence[Item]) -> dict[str, Any]:
    """One `probe-features` unit: the protocol's pooled feature rows of a group's items."""
    features = paper_features if ctx.config["protocol"] == "paper" else strict_features
    return {"rows": [row for batch in chunks(list(group), ctx.batch_size)
                     for row in features(engine, task, batch, ctx.config["feature_prompt"])]}


def feature_rows(ctx: ExperimentContext, feature_groups: Sequence[Sequence[Item]], candidates: Sequence[Item]
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows the probes are fitted on (read from the saved features units) and what was dropped.
    `candidates`: the probe items before any filter (strict: before the baseline filter)."""
    if ctx.config["protocol"] == "paper":
        report = {"candidates": len(candidates), "kept": 0, "dropped_box_contradicts_caption": 0, "dropped_box_touches_no_token": 0}
    else:
        report = {"candidates": len(candidates), "kept": 0, "dropped_baseline_wrong": len(candidates) - sum(map(len, feature_groups)),
                  "dropped_no_order": 0}
    features: list[dict[str, Any]] = []
    for index, group in enumerate(feature_groups):
        for row in ctx.load_unit(group_key("probe-features", index))["rows"] if group else ():
            reason = _dropped(row, ctx.config["protocol"] == "paper")
            if reason is None:
                features.append(row)
            else:
                report[reason] += 1
    report["kept"] = len(features)
    return features, report


def _dropped(row: dict[str, Any], paper: bool) -> str | None:
    """Why a feature row is not fitted on (the report's key), or None when it is."""
    if not paper:
        return "dropped_no_order" if row["subject_label"] is None else None
    if row["agrees"] is None:
        return "dropped_box_touches_no_token"
    return None if row["agrees"] else "dropped_box_contradicts_caption"


def paper_test_count(n: int) -> int:
    """The authors' 95/5 item split: train = max(1, int(0.95 n)), but at least one item held out."""
    if n < 2:
        return 0
    return n - min(max(1, int(0.95 * n)), n - 1)


def _test_count(ctx: ExperimentContext, n: int) -> int:
    if ctx.config["protocol"] == "paper":
        return paper_test_count(n)
    return held_out_count(n, float(ctx.config["probe_test_fraction"]))


def fitted_axes(ctx: ExperimentContext, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The axes that get a probe: those with rows (paper: at least two, the authors need two items to split)."""
    least = 2 if ctx.config["protocol"] == "paper" else 1
    return [axis for axis in AXIS_CLASSES if sum(row["axis"] == axis for row in rows) >= least]


def fit_unit(ctx: ExperimentContext, rows: Sequence[dict[str, Any]], axis: str) -> dict[str, Any]:
    """One `probe-fit-<axis>` unit: a 2-class probe from the axis's rows (two examples per row), split by item."""
    axis_rows = [row for row in rows if row["axis"] == axis]
    train_idx, test_idx = split_indices(len(axis_rows), _test_count(ctx, len(axis_rows)), seed=ctx.seed)

    def examples(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = [torch.tensor(axis_rows[i][part]) for i in indices for part in ("subject", "reference")]
        y = [label for i in indices for label in (axis_rows[i]["subject_label"], 1 - axis_rows[i]["subject_label"])]
        hidden = len(axis_rows[0]["subject"])
        return (torch.stack(x) if x else torch.zeros(0, hidden)), torch.tensor(y, dtype=torch.long)

    train_x, train_y = examples(train_idx)
    test_x, test_y = examples(test_idx)
    probe = train_probe(train_x, train_y, AXIS_CLASSES[axis], ProbeTraining.from_config(ctx.config), seed=ctx.seed)
    probe.info.update({"axis": axis, "train_accuracy": probe.accuracy(train_x, train_y),
                       "test_accuracy": probe.accuracy(test_x, test_y) if test_idx else None,
                       "train_items": len(train_idx), "test_items": len(test_idx)})
    return {"probe": probe.to_json()}


def load_fitted(ctx: ExperimentContext, axes: Sequence[str]) -> dict[str, LinearProbe]:
    return {axis: LinearProbe.from_json(ctx.load_unit(f"probe-fit-{axis}")["probe"]) for axis in axes}
