"""`last-token` (paper Fig. 3): where does the answer's *position* become its *attribute*?

Clean input: objects (c0, c1, c2) along an axis, "... left of c1" -> c0. Counterfactual
(`opposite_query`): (c4, c1, c3) with the opposite query ("right of c1") -> c3. At each layer l the
counterfactual run's last-token residual (`lm.resid_pre.{l}` at the next-token position) replaces the
clean run's, and we read the next-token distribution. Three answers are tracked per pair:

- `c0_clean`:    the clean answer; patching early layers changes nothing (the last token has not yet
                 read the image);
- `c2_ordering`: the clean object at the counterfactual answer's ordinal position ("the one to the
                 right"): if the patched residual carries only *which position* to read, the model
                 reads that position in the clean image;
- `c3_attribute`: the counterfactual's answer: the residual already carries the attribute itself.

Paper (Qwen2-VL-7B, 28 layers): c0 for layers 0-19, c2 at 20-22, c3 from 23 on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spatialmech.engine import Engine, last_position
from spatialmech.experiments import patching
from spatialmech.experiments.common import Pair, encode_items
from spatialmech.experiments.runner import ExperimentContext
from spatialmech.tasks.base import CF_OPPOSITE_QUERY

NAME = "last-token"
DEFAULT_TASK = "squares"
TASKS = ("squares", "shapes", "objects")
SITE = "lm.resid_pre.{l}"
ANSWERS = ("c0_clean", "c2_ordering", "c3_attribute")
LEGEND = {
    "c0_clean": "c0 (clean answer)",
    "c2_ordering": "c2 (clean object at the cf answer's position)",
    "c3_attribute": "c3 (counterfactual answer)",
}


def config_from(options: dict[str, Any], adapter: Any) -> dict[str, Any]:
    return {
        **patching.base_config(options, adapter),
        "counterfactual": CF_OPPOSITE_QUERY,
        "site": SITE,
        "positions": "last token",
    }


def tracked_answers(pair: Pair) -> dict[str, str]:
    """c0 = clean answer; c2 = the clean object in the counterfactual answer's slot; c3 = cf answer.

    Grid tasks keep slot order in every counterfactual, so `clean.objects[counter.target]` is the clean
    object at the counterfactual answer's ordinal position.
    """
    clean, counter = pair.clean, pair.counterfactual
    return {
        "c0_clean": clean.answer,
        "c2_ordering": clean.objects[counter.target].attribute,
        "c3_attribute": counter.answer,
    }


def sweep_batch(engine: Engine, task: Any, pairs: Sequence[Pair], layers: Sequence[int]) -> dict[str, Any]:
    """Patch each pair's counterfactual last-token residual into its clean run at every layer."""
    adapter = engine.adapter
    clean = encode_items(adapter, task, [p.clean for p in pairs])
    counter = encode_items(adapter, task, [p.counterfactual for p in pairs])
    words = [tracked_answers(p) for p in pairs]
    result = engine.patch_sweep(
        clean, counter, last_position(clean), last_position(counter), site=SITE, layers=list(layers), keep_logits=True,
    )
    records = patching.batch_records(adapter, pairs, words, result.logits, result.clean_logits, result.source_logits)
    return {"pairs": records, "method": result.method}


def dominant_answers(curves: dict[str, list[float]]) -> list[str]:
    """Per layer, the tracked answer with the highest mean probability."""
    keys = list(curves)
    n_layers = len(next(iter(curves.values()))) if curves else 0
    return [max(keys, key=lambda k: curves[k][i]) for i in range(n_layers)]


def phases(layers: list[int], dominant: list[str]) -> dict[str, Any]:
    """The paper's reading of the curves: where the ordering answer leads, and from which layer on the
    counterfactual attribute leads for good (None if it does not lead at the last layer)."""
    attribute_from = None
    for layer, answer in reversed(list(zip(layers, dominant))):
        if answer != "c3_attribute":
            break
        attribute_from = layer
    return {
        "clean_layers": [layer for layer, answer in zip(layers, dominant) if answer == "c0_clean"],
        "ordering_layers": [layer for layer, answer in zip(layers, dominant) if answer == "c2_ordering"],
        "attribute_from_layer": attribute_from,
    }


def _batch(ctx: ExperimentContext, group: Sequence[Pair]) -> dict[str, Any]:
    return sweep_batch(patching.shared_engine(ctx), patching.shared_task(ctx), group, list(ctx.config["layers"]))


def _figures(ctx: ExperimentContext, labels: list[Any], curves: dict[str, list[float]], top1: dict[str, list[float]],
             n_pairs: int) -> list[str]:
    title = f"last-token patching: {patching.model_name(ctx)}, {ctx.task_name}, n={n_pairs} pairs"
    return patching.figure(ctx, labels, curves, LEGEND, title)


def _metrics(ctx: ExperimentContext, records: list[dict[str, Any]], labels: list[Any], curves: dict[str, list[float]],
             top1: dict[str, list[float]], report: dict[str, Any]) -> dict[str, Any]:
    dominant = dominant_answers(curves)
    return {
        "n_pairs": len(records),
        "layers": labels,
        "curves": curves,
        "top1": top1,
        "dominant": dominant,
        **phases(labels, dominant),
        "top1_unchanged": patching.unchanged_rate(records),
        "pairs": report,
    }


SPEC = patching.PatchingSpec(
    name=NAME, counterfactual=CF_OPPOSITE_QUERY, answers=ANSWERS, legend=LEGEND, batch=_batch,
    labels=lambda ctx: list(ctx.config["layers"]), metrics=_metrics, figures=_figures,
    desc=lambda ctx: f"last-token {ctx.task_name}",
)


plan, compute_unit, combine = patching.planned(SPEC)
