"""`backup` (paper §5.3.2, Fig. 9): the LM backbone's backup ordering mechanism.

Object-token criss-cross patching (`criss-cross --region object`: the clean run's first and last
objects' tokens get the `reversed` counterfactual run's tokens of the opposite end) performed *under*
the vision ablation of `ablate-vision`: both the clean and the counterfactual run have their objects
replaced by the same objects rendered alone at the centre and their background by a blank image, at
the LM input (each run with its own alone/blank sources). With the vision encoder's position signal
gone, whatever position the object tokens carry was written by the LM itself; the paper finds that
object-only swaps, which never flip the answer normally, now flip it at middle layers (Qwen2-VL-7B
layers ~11-20).

At the embeddings (and layer 0's input, which is the same thing at image positions) the swap is a
no-op under the ablation: the counterfactual's last object *is* the clean first object rendered alone,
token for token. Any flip must come from what the LM layers wrote onto those tokens.

Pairs are kept when the model answers correctly on *both ablated* inputs (`filter_correct`); an
untrained or tiny model may keep few; the result records how many and why the rest were dropped. A
model that keeps none (it cannot answer at all without vision-derived position, as the bundled model)
gets a result with no curves and a `finding` that says so: no backup to measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spatialmech.engine import Engine
from spatialmech.experiments import criss_cross, layer_axis, patching
from spatialmech.experiments.common import Pair
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput
from spatialmech.experiments.vision_ablation import PARTS, SITE, SourceTokens, VisionAblation
from spatialmech.tasks.base import CF_REVERSED, Task

NAME = "backup"
DEFAULT_TASK = "squares"
TASKS = ("squares", "shapes", "objects")
REGION = "object"
LEGEND = {"clean": "clean answer", "flipped": "flipped answer (attribute at the mirrored position)"}
# Paper, Fig. 9 (Qwen2-VL-7B, 28 layers): object-only swaps flip at layers ~11-20 under the ablation.
PAPER_FLIP_LAYERS, PAPER_NUM_LAYERS = (11, 20), 28


def config_from(options: dict[str, Any], adapter: Any) -> dict[str, Any]:
    return {
        **patching.base_config(options, adapter),
        "region": REGION,
        "counterfactual": CF_REVERSED,
        "sites": [criss_cross.EMBEDDINGS_SITE, criss_cross.SITE],
        "include_embeddings": bool(options.get("include_embeddings", True)),
        "ablation": {
            "site": SITE,
            "parts": list(PARTS),
            "object_source": "the same object rendered alone at the image centre",
            "background_source": "a blank white image, token at the same grid cell",
            "applied_to": "both the clean and the counterfactual run, each with its own sources",
        },
    }


def backup_batch(
    engine: Engine,
    task: Task,
    pairs: Sequence[Pair],
    ablation: VisionAblation,
    *,
    layers: Sequence[int],
    include_embeddings: bool = True,
    mapping: str = "swap",
) -> dict[str, Any]:
    """Object criss-cross of one batch of pairs with the vision ablation on both runs.

    `mapping="aligned"` with pairs whose counterfactual is the clean item itself is the identity
    (every layer must reproduce the ablated clean run); the experiment uses the criss-cross `"swap"`.
    """
    clean_inputs, counter_inputs = criss_cross.encode_pairs(engine.adapter, task, pairs)
    return criss_cross.sweep_batch(
        engine, task, pairs, region=REGION, layers=layers, include_embeddings=include_embeddings,
        target_interventions=ablation.interventions(clean_inputs, [p.clean for p in pairs]),
        source_interventions=ablation.interventions(counter_inputs, [p.counterfactual for p in pairs]),
        clean_inputs=clean_inputs, counter_inputs=counter_inputs, mapping=mapping,
    )


def paper_range_scaled(num_layers: int) -> tuple[int, int]:
    """The paper's flip layers mapped onto a model of `num_layers` layers by relative depth."""
    first, last = PAPER_FLIP_LAYERS
    scale = num_layers / PAPER_NUM_LAYERS
    return int(first * scale), max(int(first * scale), min(num_layers - 1, round(last * scale)))


def plot_curves(ctx: ExperimentContext, labels: Sequence[Any], curves: dict[str, list[float]],
                top1: dict[str, list[float]], title: str) -> list[str]:
    """iia_curves.png/.svg: P(clean), P(flipped) and the flip rate per layer, the paper's range shaded."""
    from spatialmech.plotting import plot_layer_curves

    lines = {LEGEND[key]: curves[key] for key in criss_cross.ANSWERS}
    lines["flip rate (top-1 is the flipped answer)"] = top1["flipped"]
    start, end = paper_range_scaled(ctx.adapter.num_layers)
    shade = [(start, end, f"paper: flips at layers 11-20 of 28, scaled to {ctx.adapter.num_layers}")]
    return plot_layer_curves(labels, lines, ctx.figure_path("iia_curves"), title,
                             ylabel="mean P (IIA) / top-1 rate", shade=shade)


def no_pairs_output(ctx: ExperimentContext, report: dict[str, Any]) -> ExperimentOutput:
    """The result when the model answers no pair under the ablation: that is a finding, not a failure.

    Without vision-derived position the model cannot answer at all, so there is no LM-written
    ordering left to patch: the backup mechanism is absent (or too weak to answer with). The result
    says so, with the filter's counts, and has no curves (nothing was patched).
    """
    finding = (
        f"no backup: under the vision ablation the model answered none of {report['candidates']} {ctx.task_name} pairs "
        f"correctly on both inputs ({report['dropped_both_wrong']} both wrong, {report['dropped_clean_wrong']} clean wrong, "
        f"{report['dropped_counterfactual_wrong']} counterfactual wrong), so there is nothing to patch"
    )
    metrics = {
        "region": REGION,
        "n_pairs": 0,
        "kept_pairs": 0,
        "candidate_pairs": report["candidates"],
        "layers": layer_axis.layer_labels(ctx.config),
        "max_flip_rate": None,
        "finding": finding,
        "pairs": report,
    }
    return ExperimentOutput(metrics=metrics, data={"answers": LEGEND})


def shared_ablation(ctx: ExperimentContext) -> VisionAblation:
    """The vision ablation of this process (its alone/blank source tokens are computed once each)."""
    def build() -> VisionAblation:
        engine, task = patching.shared_engine(ctx), patching.shared_task(ctx)
        return VisionAblation(engine, task, PARTS, source_tokens=SourceTokens(engine, task))

    return ctx.shared("ablation", build)


def _batch(ctx: ExperimentContext, group: Sequence[Pair]) -> dict[str, Any]:
    return backup_batch(patching.shared_engine(ctx), patching.shared_task(ctx), group, shared_ablation(ctx),
                        layers=list(ctx.config["layers"]), include_embeddings=bool(ctx.config.get("include_embeddings", True)))


def _figures(ctx: ExperimentContext, labels: list[Any], curves: dict[str, list[float]], top1: dict[str, list[float]],
             records: list[dict[str, Any]]) -> list[str]:
    n_pairs = len(records)
    title = (f"backup: object criss-cross under vision ablation: {patching.model_name(ctx)}, {ctx.task_name}, "
             f"n={n_pairs} pairs")
    return plot_curves(ctx, labels, curves, top1, title)


def _metrics(ctx: ExperimentContext, records: list[dict[str, Any]], labels: list[Any], curves: dict[str, list[float]],
             top1: dict[str, list[float]], report: dict[str, Any]) -> dict[str, Any]:
    unpatched = {key: sum(r["clean_run"][key] for r in records) / len(records) for key in criss_cross.ANSWERS}
    return {
        "region": REGION,
        "n_pairs": len(records),
        "kept_pairs": report.get("kept", len(records)),
        "layers": labels,
        "curves": curves,
        "top1": top1,
        **criss_cross.flip_summary(labels, top1["flipped"]),
        "ablated_clean_run": unpatched,
        "pairs": report,
    }


SPEC = patching.PatchingSpec(
    name=NAME, counterfactual=CF_REVERSED, answers=criss_cross.ANSWERS, legend=LEGEND, batch=_batch,
    labels=lambda ctx: layer_axis.layer_labels(ctx.config), metrics=_metrics, figures=_figures,
    desc=lambda ctx: f"backup {ctx.task_name}", selection_logits=lambda ctx: shared_ablation(ctx).logits,
    no_pairs=no_pairs_output,
)


plan, compute_unit, combine = patching.planned(SPEC)
