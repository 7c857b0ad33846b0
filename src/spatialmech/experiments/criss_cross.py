"""`criss-cross` (paper §5.2.2, Figs. 6-7): is an object's position carried by its own tokens or by its strip?

Clean input: (c0, c1, c2) along an axis, e.g. "left of c1" -> c0. Counterfactual (`reversed`): the same
image with the attributes reversed, (c2, c1, c0), same query. At one point of the layer axis ("emb" =
the input to layer 0, then the output of each layer, `layer_axis.sweep_layer_axis`) the two *end* regions are swapped between
the runs: the clean run's region of object 0 gets the counterfactual run's values from its object-2
region, and vice versa. The counterfactual's object-2 region shows c0, so in image space every
attribute stays where it was, but it now arrives in tokens computed at the other end of the row. If
those tokens carry the position, the answer flips to the attribute at the mirrored position (for
"left of c1": c2).

`--region object` swaps only the tokens whose centre lies in the object's box; `--region strip` swaps
the object's whole strip: the grid is tiled into three bands across the image as the authors'
criss_cross_patching/src/regions.py (`regions.tiling_strip_box`: middle = object + spacing, outer
strips equal; Qwen 4/4/4, Gemma 5/6/5, Pixtral 5/5/5). Paper (Qwen2-VL-7B): object-only swaps never
flip; strip swaps flip from the embeddings up to ~layer 24.

`sweep_batch` is the reusable core: `backup` calls it with vision-ablation interventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spatialmech.engine import Engine, Intervention, regions
from spatialmech.errors import UserInputError
from spatialmech.experiments import layer_axis, patching, patching_pairs
from spatialmech.experiments.common import Pair, encode_items
from spatialmech.experiments.runner import ExperimentContext
from spatialmech.models.base import BatchInputs
from spatialmech.tasks.base import CF_REVERSED, Item

NAME = "criss-cross"
DEFAULT_TASK = "squares"
TASKS = ("squares", "shapes", "objects", "whatsup")
REGIONS = ("object", "strip")
MAPPINGS = ("swap", "aligned")
SITE = layer_axis.LAYER_SITE
EMBEDDINGS_SITE = layer_axis.EMBEDDINGS_SITE
ANSWERS = ("clean", "flipped")
LEGEND = {"clean": "clean answer", "flipped": "flipped answer (attribute at the mirrored position)"}
FLIP_THRESHOLD = 0.5  # a layer "flips" when most pairs' patched top-1 is the flipped answer


PAIRS_HINT = "the authors' criss_cross_patching/cf_pairs/<task>.json"


def config_from(options: dict[str, Any], adapter: Any) -> dict[str, Any]:
    region = options.get("region") or "object"
    if region not in REGIONS:
        raise UserInputError(f"--region {region!r} is not a criss-cross region", f"use one of {', '.join(REGIONS)}")
    return {
        **patching.base_config(options, adapter, PAIRS_HINT),
        "region": region,
        "counterfactual": CF_REVERSED,
        "sites": [EMBEDDINGS_SITE, SITE],
        "include_embeddings": bool(options.get("include_embeddings", True)),
    }


def default_folder(config: dict[str, Any]) -> str | None:
    """`--region strip` writes to its own folder (`criss-cross-strip`, as `reproduce` names it), so it
    never overwrites the object run's."""
    return f"{NAME}-strip" if config.get("region") == "strip" else None


# ---------------------------------------------------------------------------------------- regions
def end_objects(item: Item) -> tuple[int, int]:
    """Indices of the first and last object along the item's axis (by ordinal, else list order)."""
    ordinals = [obj.ordinal.get(item.axis) for obj in item.objects]
    if len(item.objects) < 2:
        raise UserInputError(f"item {item.id} has {len(item.objects)} objects", "criss-cross needs at least two objects along an axis")
    if all(o is not None for o in ordinals):
        order = sorted(range(len(ordinals)), key=lambda i: ordinals[i])
        return order[0], order[-1]
    return 0, len(item.objects) - 1


def region_box(item: Item, index: int, region: str) -> tuple[float, float, float, float]:
    """The box of object `index`'s region: its own box or its strip (`engine.regions`); What'sUp
    composites use the authors' hand-labelled left/right boxes."""
    labelled = regions.labelled_box(item, index, region) if region in REGIONS else None
    if labelled is not None:
        return labelled
    if region == "object":
        return regions.object_box(item, index)
    if region == "strip":
        box = regions.tiling_strip_box(item, index)
        if box is None:
            raise UserInputError(f"item {item.id} has no token-grid geometry", "the strip region needs a task drawn on a token grid")
        return box
    raise UserInputError(f"unknown region {region!r}", f"use one of {', '.join(REGIONS)}")


def end_regions(inputs: BatchInputs, items: Sequence[Item], region: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per row, LM positions of the first and of the last object's region (object box or strip)."""
    firsts, lasts = [], []
    for row, item in enumerate(items):
        tokens = inputs.images[row][0]
        first, last = end_objects(item)
        firsts.append(regions.region_positions(tokens, region_box(item, first, region), order="raster"))
        lasts.append(regions.region_positions(tokens, region_box(item, last, region), order="raster"))
    return firsts, lasts


def swap_positions(
    clean: BatchInputs, counter: BatchInputs, pairs: Sequence[Pair], region: str, mapping: str = "swap"
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(target positions in the clean run, source positions in the counterfactual run), row by row.

    "swap": clean A <- counter B and clean B <- counter A (the criss-cross); "aligned": each region from
    the same region of the counterfactual (a plain interchange at the same place; a control, and the
    identity when the counterfactual is the clean input itself).
    """
    if mapping not in MAPPINGS:
        raise UserInputError(f"unknown region mapping {mapping!r}", f"use one of {', '.join(MAPPINGS)}")
    clean_a, clean_b = end_regions(clean, [p.clean for p in pairs], region)
    counter_a, counter_b = end_regions(counter, [p.counterfactual for p in pairs], region)
    targets, sources = [], []
    for row, pair in enumerate(pairs):
        sizes = {len(clean_a[row]), len(clean_b[row]), len(counter_a[row]), len(counter_b[row])}
        if len(sizes) != 1 or 0 in sizes:
            raise UserInputError(
                f"pair {pair.clean.id}: the two end {region} regions cover different or no token counts "
                f"(clean {len(clean_a[row])}/{len(clean_b[row])}, counterfactual {len(counter_a[row])}/{len(counter_b[row])})",
                "criss-cross swaps equal-sized token regions; use a grid task (squares, shapes, objects)",
            )
        targets.append(torch.cat([clean_a[row], clean_b[row]]))
        if mapping == "swap":
            sources.append(torch.cat([counter_b[row], counter_a[row]]))
        else:
            sources.append(torch.cat([counter_a[row], counter_b[row]]))
    return targets, sources


def swappable(ctx: ExperimentContext, item: Item) -> bool:
    """Whether a What'sUp composite's hand-labelled left and right regions have one size: a reference
    whose regions differ (Gemma's table strip: 6 and 4 columns) cannot be swapped token for token."""
    labelled = (item.meta.get("regions") or {}).get(ctx.config["region"]) or {}
    return len({(b[2] - b[0]) * (b[3] - b[1]) for b in labelled.values()}) == 1


def whatsup_candidates(ctx: ExperimentContext, task: Any) -> dict[str, list[Pair]]:
    """What'sUp: every swappable composite as a clean (left, reference, right) row with its reversed
    counterfactual (their criss_cross_patching/cf_pairs 3-tuples), shuffled from the seed."""
    import random

    from spatialmech.tasks import cf_pairs

    items = [item for item in task.items(None, seed=ctx.seed) if swappable(ctx, item)]
    random.Random(ctx.seed).shuffle(items)
    pairs = []
    for item in items:
        left, right = item.meta["side_names"]
        reference = item.id.split("/")[1]
        entities = [left, reference, right] if item.relation == "left" else [right, reference, left]
        built = cf_pairs.build_pair(task, entities, item.relation, item.id, "whatsup")
        pairs.append(Pair(built.clean, built.counterfactual.item, built.counterfactual.kind))
    return {"all": pairs}


def candidates(ctx: ExperimentContext, task: Any) -> dict[str, list[Pair]]:
    """The `--pairs` file's pairs per direction (`n` per direction, as their runner's per-direction
    sets), else every item's reversed counterfactual (What'sUp: its composites)."""
    if ctx.config.get("pairs_file"):
        groups = patching_pairs.file_pairs(ctx, task, CF_REVERSED, PAIRS_HINT)
        if task.name == "whatsup":
            groups = {d: [p for p in pairs if swappable(ctx, p.clean)] for d, pairs in groups.items()}
        return groups
    if task.name == "whatsup":
        return whatsup_candidates(ctx, task)
    return {"all": patching_pairs.candidate_pairs(task, CF_REVERSED, ctx.seed)}


# ---------------------------------------------------------------------------------------- answers
def tracked_answers(pair: Pair) -> dict[str, str]:
    """clean = the clean answer; flipped = the attribute at the mirror image of the answer's position
    (what the query answers if the two end objects traded positions; the counterfactual's answer)."""
    clean = pair.clean
    first, last = end_objects(clean)
    mirror = {first: last, last: first}
    flipped = clean.objects[mirror[clean.target]].attribute if clean.target in mirror else pair.counterfactual.answer
    return {"clean": clean.answer, "flipped": flipped}


# ---------------------------------------------------------------------------------------- the sweep
def encode_pairs(adapter: Any, task: Any, pairs: Sequence[Pair]) -> tuple[BatchInputs, BatchInputs]:
    """Model inputs of the clean items and of their counterfactuals (row b of each = pair b)."""
    return encode_items(adapter, task, [p.clean for p in pairs]), encode_items(adapter, task, [p.counterfactual for p in pairs])


def sweep_batch(
    engine: Engine,
    task: Any,
    pairs: Sequence[Pair],
    *,
    region: str,
    layers: Sequence[int],
    include_embeddings: bool = True,
    target_interventions: Sequence[Intervention] = (),
    source_interventions: Sequence[Intervention] = (),
    clean_inputs: BatchInputs | None = None,
    counter_inputs: BatchInputs | None = None,
    mapping: str = "swap",
) -> dict[str, Any]:
    """Criss-cross one batch of (clean, reversed) pairs at the embeddings and every layer in `layers`.

    Returns `{"layers": ["emb", l0, ...], "pairs": [one `patching.pair_record` per pair], "method": ...}`;
    each record has, per layer label, P and top-1 hit of the tracked answers ("clean", "flipped").

    For `backup`: `target_interventions` act on every clean run (the unpatched one and each patched
    one), `source_interventions` on the counterfactual run the swapped values are read from. Both must
    be built for `clean_inputs` / `counter_inputs` (pass the inputs you built them for; otherwise they
    are encoded here with `encode_pairs`). An ablation of `projector.out` acts upstream of every swap, so
    at the swapped tokens it is overwritten by the (ablated) counterfactual values. Target
    interventions at or before the first swept point keep the fast sweep; later ones fall back to the
    engine's exact naive loop.
    """
    adapter = engine.adapter
    if clean_inputs is None or counter_inputs is None:
        clean_inputs, counter_inputs = encode_pairs(adapter, task, pairs)
    targets, sources = swap_positions(clean_inputs, counter_inputs, pairs, region, mapping)
    words = [tracked_answers(p) for p in pairs]
    sweep = layer_axis.sweep_layer_axis(
        engine, clean_inputs, counter_inputs, targets, sources, layers=list(layers), include_embeddings=include_embeddings,
        target_interventions=target_interventions, source_interventions=source_interventions,
    )
    records = patching.batch_records(adapter, pairs, words, sweep.logits, sweep.clean_logits, sweep.source_logits)
    return {"layers": sweep.labels, "pairs": records, "method": sweep.method}


def flip_summary(labels: Sequence[Any], flip_rate: Sequence[float]) -> dict[str, Any]:
    """Per-layer flip rate (patched top-1 = flipped answer), its maximum, and the layers where most pairs flip."""
    flips = [label for label, rate in zip(labels, flip_rate) if rate > FLIP_THRESHOLD]
    return {"flip_rate": list(flip_rate), "max_flip_rate": max(flip_rate) if flip_rate else 0.0, "flip_layers": flips,
            "last_flip_layer": flips[-1] if flips else None}


def _batch(ctx: ExperimentContext, group: Sequence[Pair]) -> dict[str, Any]:
    return sweep_batch(patching.shared_engine(ctx), patching.shared_task(ctx), group, region=ctx.config["region"],
                       layers=list(ctx.config["layers"]), include_embeddings=bool(ctx.config.get("include_embeddings", True)))


def _figures(ctx: ExperimentContext, labels: list[Any], curves: dict[str, list[float]], top1: dict[str, list[float]],
             records: list[dict[str, Any]]) -> list[str]:
    n_pairs = len(records)
    title = (f"criss-cross ({ctx.config['region']} tokens swapped): {patching.model_name(ctx)}, {ctx.task_name}, "
             f"n={n_pairs} pairs")
    return patching.figure(ctx, labels, curves, LEGEND, title)


def _metrics(ctx: ExperimentContext, records: list[dict[str, Any]], labels: list[Any], curves: dict[str, list[float]],
             top1: dict[str, list[float]], report: dict[str, Any]) -> dict[str, Any]:
    return {
        "region": ctx.config["region"],
        "n_pairs": len(records),
        "layers": labels,
        "curves": curves,
        "top1": top1,
        **flip_summary(labels, top1["flipped"]),
        "top1_unchanged": patching.unchanged_rate(records),
        "pairs": report,
    }


SPEC = patching.PatchingSpec(
    name=NAME, counterfactual=CF_REVERSED, answers=ANSWERS, legend=LEGEND, batch=_batch,
    labels=lambda ctx: layer_axis.layer_labels(ctx.config), metrics=_metrics, figures=_figures,
    desc=lambda ctx: f"criss-cross {ctx.config['region']} {ctx.task_name}", candidates=candidates,
)


plan, compute_unit, combine = patching.planned(SPEC)
