"""`last-token` (paper Fig. 3): where does the answer's *position* become its *attribute*?

As the authors' `last_token_exp` (`build_cf_pairs.py`, `src/data.py`, `src/patch.py`, `plot.py`): per
direction (left, right, above, below) random 5-tuples (c0, c1, c2, c3, c4) drawn from the task's
attributes (seed = `--seed`), c1 the reference. Clean: (c0, c1, c2) asked "left of c1" -> c0 (for
right/below the row is (c2, c1, c0)); counterfactual: (c4, c1, c3) asked the opposite way -> c3. The first
`--n` (default 50) pairs per direction the model answers right on both inputs are kept. At each point of
the layer axis ("emb" = input to layer 0, then the output of each layer, `layer_axis.sweep_layer_axis`) the
counterfactual run's last-token residual replaces the clean run's, and we read P of all five objects
(summed over spellings):

- c0 (clean answer): patching early layers changes nothing;
- c2 (clean object at the counterfactual answer's position): the residual carries only *which
  position* to read, and the model reads it in the clean image;
- c3 (counterfactual answer): the residual already carries the attribute itself;
- c1 (reference) and c4 (the counterfactual's far object): controls.

What'sUp (left/right only): a reference (chair, table, armchair) and 4 of its side objects that
are one token for the model, as theirs. Paper (Qwen2-VL-7B, 28 layers): c0 up to layer 19, c2 at 20-22, c3 from 23 on. `--pairs FILE` runs
the authors' own pairs (`last_token_exp/cf_pairs/<task>.json`, via `tasks.cf_pairs.load_pairs`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from spatialmech.engine import Engine, last_position
from spatialmech.errors import UserInputError
from spatialmech.experiments import layer_axis, patching, patching_pairs
from spatialmech.experiments.common import Pair, encode_items
from spatialmech.experiments.runner import ExperimentContext
from spatialmech.plotting import plot_layer_panels
from spatialmech.tasks.base import CF_OPPOSITE_QUERY, Task

NAME = "last-token"
DEFAULT_TASK = "squares"
TASKS = ("squares", "shapes", "objects", "whatsup")
DIRECTIONS = ("left", "right", "above", "below")
MAX_ATTEMPTS = 2000  # candidate tuples drawn per direction at most (theirs: --max-attempts-per-direction)
ANSWERS = ("c0", "c1", "c2", "c3", "c4")
PAIRS_HINT = "the authors' last_token_exp/cf_pairs/<task>.json"
LEGEND = {"c0": "c0 (clean answer)", "c1": "c1 (reference)", "c2": "c2 (clean far side)",
          "c3": "c3 (counterfactual answer)", "c4": "c4 (counterfactual far side)"}


def config_from(options: dict[str, Any], adapter: Any) -> dict[str, Any]:
    return {
        **patching.base_config(options, adapter, PAIRS_HINT),
        "counterfactual": CF_OPPOSITE_QUERY,
        "sites": [layer_axis.EMBEDDINGS_SITE, layer_axis.LAYER_SITE],
        "positions": "last token",
        "per": "direction",
    }


# ---------------------------------------------------------------------------------------- pairs
def draw_tuples(pool: Sequence[str] | Mapping[str, Sequence[str]], direction_count: int, seed: int,
                limit: int) -> list[list[list[str]]]:
    """Per direction, the distinct 5-tuples among `limit` random draws (one generator over the
    directions in order, as their build_cf_pairs.py). `pool`: the attributes (5 distinct), or
    What'sUp's {reference: side objects} (a reference, then 4 distinct sides: (s0, ref, s2, s3, s4))."""
    if isinstance(pool, Mapping):
        pool = {ref: list(sides) for ref, sides in pool.items() if len(sides) >= 4}
        if not pool:
            raise UserInputError("last-token on whatsup needs a reference object with 4 usable side objects",
                                 "use the full What'sUp download (and a model whose tokenizer keeps the names)")
    elif len(pool) < 5:
        raise UserInputError(f"last-token needs 5 distinct attributes, the task has {len(pool)}",
                             "use squares, shapes or objects")
    rng = random.Random(seed)

    def draw() -> tuple[str, ...]:
        if isinstance(pool, dict):
            reference = rng.choice(sorted(pool))
            sides = rng.sample(pool[reference], 4)
            return (sides[0], reference, sides[1], sides[2], sides[3])
        return tuple(rng.sample(list(pool), 5))

    out = []
    for _ in range(direction_count):
        seen: set[tuple[str, ...]] = set()
        tuples: list[list[str]] = []
        for _ in range(limit):
            candidate = draw()
            if candidate not in seen:
                seen.add(candidate)
                tuples.append(list(candidate))
        out.append(tuples)
    return out


def candidates(ctx: ExperimentContext, task: Task) -> dict[str, list[Pair]]:
    """Candidate pairs per direction: the `--pairs` file's, or tuples drawn from the task's attributes."""
    if ctx.config.get("pairs_file"):
        return patching_pairs.file_pairs(ctx, task, CF_OPPOSITE_QUERY, PAIRS_HINT)
    if task.name != "whatsup" and not getattr(task, "attributes", ()):  # custom data: its own counterfactuals
        return {"all": patching_pairs.candidate_pairs(task, CF_OPPOSITE_QUERY, ctx.seed)}
    return drawn_pairs(task, ctx.seed, min(MAX_ATTEMPTS, max(200, 20 * int(ctx.config["n"]))))


def drawn_pairs(task: Task, seed: int, limit: int) -> dict[str, list[Pair]]:
    """Up to `limit` candidate pairs per direction from random 5-tuples of the task's attributes."""
    from spatialmech.tasks import cf_pairs

    groups: dict[str, list[Pair]] = {}
    directions, pool = DIRECTIONS, getattr(task, "attributes", ())
    if task.name == "whatsup":  # horizontal only; sides kept for the model's tokenizer (task.stats)
        task.all_items()
        directions = ("left", "right")
        pool = {ref: stats["kept"] for ref, stats in task.stats["side_objects"].items()}
    for direction, tuples in zip(directions, draw_tuples(pool, len(directions), seed, limit)):
        built = [cf_pairs.build_pair(task, t, direction, f"{task.name} tuple {t}", task.name) for t in tuples]
        groups[direction] = [Pair(b.clean, b.counterfactual.item, b.counterfactual.kind) for b in built]
    return groups


def tracked_answers(pair: Pair) -> dict[str, str]:
    """c0..c4: the answer words of the pair's 5-tuple (`clean.meta["pair_entities"]`). Pairs without
    one (custom data) are read off the items: c0 / c3 the two answers, c2 the clean object at the
    counterfactual answer's position, c1 the remaining clean object, c4 the remaining counterfactual one."""
    entities = pair.clean.meta.get("pair_entities")
    if entities and len(entities) == 5:
        return dict(zip(ANSWERS, entities))
    clean, counter = pair.clean, pair.counterfactual
    c0, c3 = clean.answer, counter.answer
    c2 = clean.objects[counter.target].attribute if counter.target is not None and counter.target < len(clean.objects) else c0
    c1 = next((o.attribute for o in clean.objects if o.attribute not in (c0, c2)), c0)
    c4 = next((o.attribute for o in counter.objects if o.attribute not in (c3, c1)), c3)
    return dict(zip(ANSWERS, (c0, c1, c2, c3, c4)))


# ---------------------------------------------------------------------------------------- the sweep
def sweep_batch(engine: Engine, task: Any, pairs: Sequence[Pair], layers: Sequence[int],
                include_embeddings: bool = True) -> dict[str, Any]:
    """Patch each pair's counterfactual last-token residual into its clean run at every layer-axis point."""
    adapter = engine.adapter
    clean = encode_items(adapter, task, [p.clean for p in pairs])
    counter = encode_items(adapter, task, [p.counterfactual for p in pairs])
    words = [tracked_answers(p) for p in pairs]
    sweep = layer_axis.sweep_layer_axis(engine, clean, counter, last_position(clean), last_position(counter),
                                      layers=list(layers), include_embeddings=include_embeddings)
    records = patching.batch_records(adapter, pairs, words, sweep.logits, sweep.clean_logits, sweep.source_logits)
    for record, pair in zip(records, pairs):
        record["direction"] = pair.clean.relation
    return {"layers": sweep.labels, "pairs": records, "method": sweep.method}


# ---------------------------------------------------------------------------------------- results
def by_direction(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per direction: n, and mean and std (population, as numpy's default) of P per answer per layer."""
    out: dict[str, dict[str, Any]] = {}
    for direction in [d for d in DIRECTIONS if any(r.get("direction") == d for r in records)]:
        rows = [r for r in records if r.get("direction") == direction]
        mean: dict[str, list[float]] = {}
        std: dict[str, list[float]] = {}
        for k, key in enumerate(ANSWERS):
            series = [[r["iia"][i][k] for r in rows] for i in range(len(rows[0]["iia"]))]
            mean[key] = [sum(v) / len(v) for v in series]
            std[key] = [(sum((x - m) ** 2 for x in v) / len(v)) ** 0.5 for v, m in zip(series, mean[key])]
        out[direction] = {"n": len(rows), "mean": mean, "std": std}
    return out


def dominant_answers(curves: dict[str, list[float]]) -> list[str]:
    """Per layer, the tracked answer with the highest mean probability."""
    keys = list(curves)
    n_layers = len(next(iter(curves.values()))) if curves else 0
    return [max(keys, key=lambda k: curves[k][i]) for i in range(n_layers)]


def phases(layers: list[Any], dominant: list[str]) -> dict[str, Any]:
    """The paper's reading of the curves: where c0 and the ordering answer c2 lead, and from which layer
    on the counterfactual attribute c3 leads for good (None if it does not lead at the last layer)."""
    attribute_from = None
    for layer, answer in reversed(list(zip(layers, dominant))):
        if answer != "c3":
            break
        attribute_from = layer
    return {
        "clean_layers": [layer for layer, answer in zip(layers, dominant) if answer == "c0"],
        "ordering_layers": [layer for layer, answer in zip(layers, dominant) if answer == "c2"],
        "attribute_from_layer": attribute_from,
    }


def _batch(ctx: ExperimentContext, group: Sequence[Pair]) -> dict[str, Any]:
    return sweep_batch(patching.shared_engine(ctx), patching.shared_task(ctx), group, list(ctx.config["layers"]),
                       bool(ctx.config.get("include_embeddings", True)))


def _figures(ctx: ExperimentContext, labels: list[Any], curves: dict[str, list[float]], top1: dict[str, list[float]],
             records: list[dict[str, Any]]) -> list[str]:
    n_pairs = len(records)
    panels = {f"{d} (n={v['n']})": {LEGEND[k]: (v["mean"][k], v["std"][k]) for k in ANSWERS}
              for d, v in by_direction(records).items()}
    title = f"last-token patching: {patching.model_name(ctx)}, {ctx.task_name}, n={n_pairs} pairs (mean +- std)"
    return plot_layer_panels(labels, panels, ctx.figure_path("iia_curves"), title)


def _metrics(ctx: ExperimentContext, records: list[dict[str, Any]], labels: list[Any], curves: dict[str, list[float]],
             top1: dict[str, list[float]], report: dict[str, Any]) -> dict[str, Any]:
    dominant = dominant_answers(curves)
    return {
        "n_pairs": len(records),
        "layers": labels,
        "curves": curves,
        "top1": top1,
        "by_direction": by_direction(records),
        "dominant": dominant,
        **phases(labels, dominant),
        "top1_unchanged": patching.unchanged_rate(records),
        "pairs": report,
    }


SPEC = patching.PatchingSpec(
    name=NAME, counterfactual=CF_OPPOSITE_QUERY, answers=ANSWERS, legend=LEGEND, batch=_batch,
    labels=lambda ctx: layer_axis.layer_labels(ctx.config), metrics=_metrics, figures=_figures,
    desc=lambda ctx: f"last-token {ctx.task_name}", candidates=candidates,
)


plan, compute_unit, combine = patching.planned(SPEC)
