"""`probe` (paper §5.2.1, Fig. 5): is each object's ordinal position linearly readable from the
post-projector visual tokens, and does the same probe read it off the *background* of the object's strip?

Per axis, a 3-class linear probe (position 0/1/2 along the axis) is trained on `projector.out`
features of object tokens (box centre inside an object's box; label = its ordinal), on every distinct
image of the axis (all orderings, as the authors' probing/src/data.py: squares/shapes 6P3 = 120,
objects 8P3 = 336), split 75/25 by image, seeded (objects 252/84; AdamW lr 1e-3, wd 1e-4, 200
full-batch epochs); What'sUp as their probing/src/whatsup.py: `task.probe_items()` (their 120 images
in their order, their boxes) split in order 90/30. `--n` caps the images per axis. The probe is then
applied to every image token of the test images: `background_agreement` is the fraction of background
tokens inside an object's strip (the band along the axis spanning the whole image across it, from
`item.grid`) that the probe assigns to that object's position: far above chance (1/3) if the position
signal is global, the paper's claim. The control: the same probe trained on shuffled labels.

Features do not depend on the prompt: each distinct image is encoded once into a safetensors
`ActivationStore` (grid cells and labels beside; resumable). The plan: per axis a features unit, then
probe-fit and control-fit units reading it; combine scores them. W, b go to `probes.safetensors`.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from spatialmech.engine import Activations, ActivationStore, ActivationWriter, Engine, regions
from spatialmech.errors import UserInputError
from spatialmech.experiments.common import encode_items, get_task_for
from spatialmech.experiments.plan import Stage
from spatialmech.experiments.probing import (
    LinearProbe,
    ProbeTraining,
    held_out_count,
    image_key,
    save_probes,
    split_indices,
    train_probe,
)
from spatialmech.experiments.runner import (
    ExperimentContext,
    ExperimentOutput,
    chunks,
    model_fingerprint,
    protocol_of,
)
from spatialmech.models.base import ImageTokens
from spatialmech.plotting import plot_accuracy_bars, plot_token_heatmaps
from spatialmech.tasks.base import Item

NAME = "probe"
DEFAULT_TASK = "squares"
TASKS = ("squares", "shapes", "objects", "whatsup")
SITE = "projector.out"
LABELS_SITE = "token_labels"  # stored beside the features: (row, col, object label, strip label) per token
AXES = ("horizontal", "vertical")
CLASS_NAMES = {"horizontal": ["left", "middle", "right"], "vertical": ["top", "middle", "bottom"]}
PROBE_FILE = "probes.safetensors"
PAPER_TEST_FRACTION = 0.25  # theirs: all orderings, 75/25 (objects 252/84)
CHANCE = 1.0 / 3.0

# token label codes (columns 2 and 3 of LABELS_SITE)
NOT_LABELLED = -1  # object column: not an object token; strip column: background outside every strip
IN_OBJECT = -2  # strip column: the token lies on an object, not the background
AMBIGUOUS = -3  # inside two objects / two strips: left out of every score


def config_from(options: dict[str, Any], adapter: Any = None) -> dict[str, Any]:
    n = options.get("n")
    if n is not None and int(n) < 2:
        raise UserInputError(f"--n {n} is too small for a probe", "pass at least 2 images per axis (one to train, one to test)")
    images = None if n is None else int(n)  # None: every ordering (their split)
    training = ProbeTraining()
    return {
        "site": SITE,
        "images_per_axis": images,
        "test_fraction": PAPER_TEST_FRACTION,
        "split": "all orderings, by image, seeded",
        **training.to_dict(),
        "control": "same probe trained on shuffled labels",
        "heatmap_examples": 3,
        "save_probe": options.get("save_probe"),
    }


# ------------------------------------------------------------------------------------------ images


def has_three_ordinals(item: Item, axis: str) -> bool:
    """Usable for the 3-class probe: three objects at ordinals 0, 1, 2 along `axis`."""
    return sorted(o.ordinal[axis] for o in item.objects if axis in o.ordinal) == [0, 1, 2]


def select_images(items: Sequence[Item], per_axis: int | None, seed: int) -> dict[str, list[Item]]:
    """Per axis, up to `per_axis` (None: all) distinct images (one item each) with a 3-object layout, seeded."""
    out: dict[str, list[Item]] = {}
    for axis in AXES:
        seen: dict[str, Item] = {}
        for item in items:
            if item.axis == axis and has_three_ordinals(item, axis):
                seen.setdefault(image_key(item), item)
        pool = list(seen.values())
        random.Random(f"probe/{seed}/{axis}").shuffle(pool)
        if pool:
            out[axis] = pool[:per_axis]
    return out


# ------------------------------------------------------------------------------------------ tokens


def token_labels(item: Item, tokens: ImageTokens, axis: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, labels) of the main view's tokens; labels[:, :] = row, col, object label, strip label."""
    mask = tokens.tiles == tokens.main_tile
    n = int(mask.sum())
    object_label = torch.full((n,), NOT_LABELLED, dtype=torch.long)
    object_hits = torch.zeros(n, dtype=torch.long)
    on_any_object = torch.zeros(n, dtype=torch.bool)
    strip_label = torch.full((n,), NOT_LABELLED, dtype=torch.long)
    strip_hits = torch.zeros(n, dtype=torch.long)
    for index, obj in enumerate(item.objects):
        inside = regions.region_mask(tokens, regions.object_box(item, index))[mask]
        on_any_object |= inside
        if axis not in obj.ordinal:
            continue
        object_label[inside] = obj.ordinal[axis]
        object_hits += inside.long()
        strip = regions.strip_box(item, index, axis) if obj.box_cells is not None else None
        if strip is not None:
            in_strip = regions.region_mask(tokens, strip)[mask]
            strip_label[in_strip] = obj.ordinal[axis]
            strip_hits += in_strip.long()
    object_label[object_hits > 1] = AMBIGUOUS
    strip_label[strip_hits > 1] = AMBIGUOUS
    strip_label[on_any_object] = IN_OBJECT
    labels = torch.stack([tokens.rows[mask].long(), tokens.cols[mask].long(), object_label, strip_label], dim=1)
    return tokens.positions[mask], labels


def collect_features(ctx: ExperimentContext, engine: Engine, task: Any, items: Sequence[Item], axis: str) -> ActivationStore:
    """Stream every image's main-view `projector.out` tokens (and their labels) to a resumable store."""
    folder = ctx.units_dir / f"features-{axis}"
    done = ActivationStore(folder).num_items if (folder / "index.json").is_file() else 0
    if done > len(items):  # not this run's store (the manifest check makes this unreachable); start over
        shutil.rmtree(folder)
        done = 0
    remaining = list(items[done:])
    if remaining:
        progress = None
        if ctx.progress:
            from tqdm import tqdm

            progress = tqdm(total=len(items), initial=done, desc=f"probe features {axis}", unit="img", leave=False)
        with ActivationWriter(folder, shard_items=max(32, ctx.batch_size)) as writer:
            for batch in chunks(remaining, ctx.batch_size):
                inputs = encode_items(ctx.adapter, task, batch)
                per_row = [token_labels(item, row[0], axis) for item, row in zip(batch, inputs.images)]
                positions = [p for p, _ in per_row]
                acts = engine.cache(inputs, {SITE: positions})
                labels = Activations.from_flat(
                    {LABELS_SITE: (torch.cat([lab for _, lab in per_row]), [len(p) for p in positions])}, {LABELS_SITE: positions}
                )
                writer.add(Activations({**acts.sites, **labels.sites}))
                if progress is not None:
                    progress.update(len(batch))
        if progress is not None:
            progress.close()
    return ActivationStore(folder)


# ------------------------------------------------------------------------------------------ per axis


def _gather(store: ActivationStore, train: set[int]) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Object tokens of training images (features, labels) and every token of the test images."""
    train_x, train_y, test = [], [], []
    index = 0
    for features_shard, labels_shard in zip(store.iter_shards(SITE), store.iter_shards(LABELS_SITE)):
        for i in range(features_shard.num_items):
            features, labels = features_shard.item(i).float(), labels_shard.item(i).long()
            if index in train:
                keep = labels[:, 2] >= 0
                train_x.append(features[keep])
                train_y.append(labels[keep, 2])
            else:
                test.append((features.clone(), labels.clone()))
            index += 1
    hidden = test[0][0].shape[1] if test else (train_x[0].shape[1] if train_x else 0)
    x = torch.cat(train_x) if train_x else torch.zeros(0, hidden)
    y = torch.cat(train_y) if train_y else torch.zeros(0, dtype=torch.long)
    return {"x": x, "y": y}, test


def _evaluate(probe: LinearProbe, test: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Object-token accuracy, strip-background agreement (+ confusion) and predictions, on test images."""
    object_right = object_total = strip_right = strip_total = outside_total = 0
    confusion = torch.zeros(3, 3, dtype=torch.long)
    predictions = []
    for features, labels in test:
        predicted = probe.predict(features)
        predictions.append(predicted)
        on_object = labels[:, 2] >= 0
        object_right += int((predicted[on_object] == labels[on_object, 2]).sum())
        object_total += int(on_object.sum())
        in_strip = labels[:, 3] >= 0
        strip_right += int((predicted[in_strip] == labels[in_strip, 3]).sum())
        strip_total += int(in_strip.sum())
        outside_total += int((labels[:, 3] == NOT_LABELLED).sum())
        for truth, guess in zip(labels[in_strip, 3].tolist(), predicted[in_strip].tolist()):
            confusion[truth, guess] += 1
    return {
        "accuracy": object_right / object_total if object_total else None,
        "background_agreement": strip_right / strip_total if strip_total else None,
        "n_object_tokens": object_total,
        "n_background_strip_tokens": strip_total,
        "n_background_outside_strips": outside_total,
        "confusion": confusion.tolist(),
        "predictions": predictions,
    }


def _heatmap_panels(items: Sequence[Item], test: Sequence[tuple[torch.Tensor, torch.Tensor]], predictions: Sequence[torch.Tensor],
                    axis: str, count: int) -> list[dict[str, Any]]:
    panels = []
    for item, (_, labels), predicted in list(zip(items, test, predictions))[:count]:
        n_rows, n_cols = int(labels[:, 0].max()) + 1, int(labels[:, 1].max()) + 1
        grid = [[-1] * n_cols for _ in range(n_rows)]
        for (row, col), cls in zip(labels[:, :2].tolist(), predicted.tolist()):
            grid[row][col] = int(cls)
        boxes, names = [], []
        for index, obj in enumerate(item.objects):
            if axis not in obj.ordinal:
                continue
            x0, y0, x1, y1 = item.box_fraction(index)
            boxes.append((y0 * n_rows, x0 * n_cols, y1 * n_rows, x1 * n_cols))
            names.append(str(obj.attribute)[:8])
        order = sorted((o.ordinal[axis], o.attribute) for o in item.objects if axis in o.ordinal)
        panels.append({"grid": grid, "boxes": boxes, "box_labels": names, "title": " | ".join(str(a) for _, a in order)})
    return panels


def _images(ctx: ExperimentContext) -> dict[str, Any]:
    """Per process: the task, the usable images per axis and the axes skipped (refused when none is usable)."""
    def build() -> dict[str, Any]:
        task = get_task_for(ctx.adapter, ctx.task_name, ctx.data_root)
        per_axis = ctx.config["images_per_axis"]
        cap = None if per_axis is None else int(per_axis)
        # What'sUp under the paper protocol: their images in their order (task.probe_items), split in order
        in_order = protocol_of(ctx.config) == "paper" and hasattr(task, "probe_items")
        images = {"horizontal": task.probe_items()[:cap]} if in_order else select_images(task.items(None, seed=ctx.seed), cap, ctx.seed)
        skipped = {axis: "no images with three objects along this axis" for axis in AXES if axis not in images}
        for axis in list(images):
            if len(images[axis]) < 2:
                skipped[axis] = f"only {len(images[axis])} usable image(s); need 2"
                del images[axis]
        if not images:
            raise UserInputError(f"task {ctx.task_name} has no images with three objects along an axis",
                                 "use squares, shapes, objects or whatsup")
        return {"task": task, "images": images, "skipped": skipped, "in_order": in_order}

    return ctx.shared("probe", build)


def _split(ctx: ExperimentContext, axis: str) -> tuple[list[int], list[int]]:
    """(train, test) image indices of an axis: 75/25 by image, seeded; in order where the images come
    in the authors' order (What'sUp: their build_split trains on the first int(0.75 n))."""
    setup = _images(ctx)
    count = len(setup["images"][axis])
    if setup["in_order"]:
        n_train = min(count - 1, max(1, int((1 - float(ctx.config["test_fraction"])) * count)))
        return list(range(n_train)), list(range(n_train, count))
    return split_indices(count, held_out_count(count, float(ctx.config["test_fraction"])), seed=ctx.seed)


def _stored(ctx: ExperimentContext, axis: str) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The axis's training examples and test images, read from its saved features unit."""
    train_idx, _ = _split(ctx, axis)
    return _gather(ActivationStore(ctx.units_dir / f"features-{axis}"), set(train_idx))


def plan(ctx: ExperimentContext) -> Iterator[Stage]:
    axes = list(_images(ctx)["images"])
    yield Stage("features", tuple(f"features-{axis}" for axis in axes), "probe features")
    yield Stage("fits", tuple(f"{kind}-{axis}" for axis in axes for kind in ("probe", "control")), "probe fits")


def compute_unit(ctx: ExperimentContext, key: str) -> Mapping[str, Any]:
    kind, axis = key.split("-", 1)
    setup = _images(ctx)
    if kind == "features":
        engine = ctx.shared("probe-engine", lambda: Engine(ctx.adapter))
        return {"axis": axis, "images": collect_features(ctx, engine, setup["task"], setup["images"][axis], axis).num_items}
    train, _ = _stored(ctx, axis)
    labels = train["y"]
    if kind == "control":  # the same tokens, labels shuffled (seeded): the probe should sit at chance
        labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(ctx.seed + 1))]
    probe = train_probe(train["x"], labels, CLASS_NAMES[axis], ProbeTraining.from_config(ctx.config), seed=ctx.seed)
    return {"probe": probe.to_json(), "train_accuracy": probe.accuracy(train["x"], labels)}


def score_axis(ctx: ExperimentContext, axis: str) -> dict[str, Any]:
    """One axis's numbers from its saved units: both fits scored on the stored test images."""
    items = _images(ctx)["images"][axis]
    train_idx, test_idx = _split(ctx, axis)
    train, test = _stored(ctx, axis)
    fitted, control_fit = ctx.load_unit(f"probe-{axis}"), ctx.load_unit(f"control-{axis}")
    probe = LinearProbe.from_json(fitted["probe"])
    scores = _evaluate(probe, test)
    control_scores = _evaluate(LinearProbe.from_json(control_fit["probe"]), test)
    test_items = [items[i] for i in test_idx]
    probe.info.update({"axis": axis, "test_accuracy": scores["accuracy"], "background_agreement": scores["background_agreement"]})
    return {
        "probe": probe,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "n_train_tokens": int(train["y"].numel()),
        "train_accuracy": fitted["train_accuracy"],
        "scores": scores,
        "control": control_scores,
        "control_train_accuracy": control_fit["train_accuracy"],
        "panels": _heatmap_panels(test_items, test, scores["predictions"], axis, int(ctx.config["heatmap_examples"])),
    }


def combine(ctx: ExperimentContext) -> ExperimentOutput:
    setup = _images(ctx)
    results = {axis: score_axis(ctx, axis) for axis in setup["images"]}
    skipped = setup["skipped"]

    def per_axis(fn: Any) -> dict[str, Any]:
        return {axis: fn(r) for axis, r in results.items()}

    metrics = {
        "accuracy": per_axis(lambda r: r["scores"]["accuracy"]),
        "background_agreement": per_axis(lambda r: r["scores"]["background_agreement"]),
        "chance": CHANCE,
        "control": {
            "kind": "shuffled training labels",
            "accuracy": per_axis(lambda r: r["control"]["accuracy"]),
            "background_agreement": per_axis(lambda r: r["control"]["background_agreement"]),
        },
        "train_accuracy": per_axis(lambda r: r["train_accuracy"]),
        "n_train": per_axis(lambda r: r["n_train"]),
        "n_test": per_axis(lambda r: r["n_test"]),
        "n_train_tokens": per_axis(lambda r: r["n_train_tokens"]),
        "n_test_object_tokens": per_axis(lambda r: r["scores"]["n_object_tokens"]),
        "n_background_strip_tokens": per_axis(lambda r: r["scores"]["n_background_strip_tokens"]),
    }
    if skipped:
        metrics["axes_skipped"] = skipped

    fingerprint = model_fingerprint(ctx.adapter)
    file_meta = {"experiment": NAME, "site": SITE, "task": ctx.task_name, "model": fingerprint, "seed": ctx.seed,
                 "training": ProbeTraining.from_config(ctx.config).to_dict(), "label": "ordinal position of the object along the axis"}
    probes = {axis: r["probe"] for axis, r in results.items()}
    save_probes(ctx.out_dir / PROBE_FILE, probes, file_meta)
    if ctx.config.get("save_probe"):
        save_probes(Path(ctx.config["save_probe"]), probes, file_meta)

    summary, confusion = [], []
    for axis, r in results.items():
        summary.append({
            "axis": axis, "n_train_images": r["n_train"], "n_test_images": r["n_test"], "n_train_tokens": r["n_train_tokens"],
            "train_accuracy": r["train_accuracy"], "test_accuracy": r["scores"]["accuracy"],
            "background_agreement": r["scores"]["background_agreement"],
            "n_background_strip_tokens": r["scores"]["n_background_strip_tokens"],
            "control_test_accuracy": r["control"]["accuracy"], "control_background_agreement": r["control"]["background_agreement"],
        })
        for truth, row in enumerate(r["scores"]["confusion"]):
            for guess, count in enumerate(row):
                confusion.append({"axis": axis, "strip_of": CLASS_NAMES[axis][truth], "predicted": CLASS_NAMES[axis][guess], "tokens": count})

    figures: list[str] = []
    for axis, r in results.items():
        if r["panels"]:
            figures += plot_token_heatmaps(
                r["panels"], ctx.figure_path(f"probe_heatmaps_{axis}"),
                f"{axis} probe on every token ({ctx.task_name}, test images)", CLASS_NAMES[axis],
            )
    labels, values = [], []
    for axis, r in results.items():
        for name, value in (("objects", r["scores"]["accuracy"]), ("strips", r["scores"]["background_agreement"]),
                            ("shuffled", r["control"]["background_agreement"])):
            if value is not None:
                labels.append(f"{axis[0].upper()} {name}")
                values.append(value)
    figures += plot_accuracy_bars(labels, values, ctx.figure_path("probe_accuracy"),
                                  f"ordinal probe on {SITE} ({ctx.task_name})", chance=CHANCE)
    data = {
        "probe_file": PROBE_FILE,
        "heatmaps": {axis: r["panels"] for axis, r in results.items()},
        "class_names": {axis: CLASS_NAMES[axis] for axis in results},
        "test_counts": {axis: {k: r["scores"][k] for k in ("n_object_tokens", "n_background_strip_tokens", "n_background_outside_strips")}
                        for axis, r in results.items()},
    }
    return ExperimentOutput(metrics=metrics, tables={"probe_summary": summary, "background_confusion": confusion}, figures=figures, data=data)
