"""`amplify` (paper §5.4, Table 2): amplify the vision-derived ordering direction on every image token
at the LM input, and count how many failures it fixes.

1. Probe (`amplify_fit`). Per axis, a 2-class linear probe (horizontal: left/right, vertical:
   above/below) on `projector.out` pooled over the subject's and the reference's box, from a forward
   with the neutral prompt "Describe the image."; W (hidden x 2) = the probe's weight columns.
2. Intervention. `amplify_projection(W, alpha)`: h += alpha * (h W / |W_col|^2) W^T on all image
   tokens at `projector.out` (= LM layer-0 input at image positions), prompt pass only; the question's
   axis picks W. `--variant add` is the paper's text variant: each image token gets alpha times the
   unit direction of the class the probe assigns it (h += alpha * w_c / |w_c|).
3. Sweep alpha over 0..15 (`amplify_sweep`), strict scoring (both option orders), against a random
   control (hidden x 2 Gaussian with unit columns, seeded).

`--protocol paper` (default) is the authors' code on every point of SPEC section 7: probes fitted on
the baseline-correct items of the evaluation set itself, tokens touched by the box, caption labels,
off-axis answers dropped, only failed option orders re-run, best alpha over alpha > 0, random at its
own best alpha. `--protocol strict` is ours where stricter: probes on items disjoint from the
evaluation, every item re-scored with breakage counted, and `metrics.held_out` picks alpha on a
validation half and scores the other half.

`amplification_interventions` is the one function that turns a saved probe file (ours, or the
authors' `.npy` arrays) into engine interventions; `spatialmech eval --amplify P --alpha A` uses it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from spatialmech import reference as paper
from spatialmech.engine import Engine, Steer, add_direction, amplify_projection, image_positions
from spatialmech.errors import UserInputError
from spatialmech.experiments import amplify_fit as fit
from spatialmech.experiments import amplify_sweep as sweeps
from spatialmech.experiments.amplify_fit import AXIS_CLASSES, SITE
from spatialmech.experiments.probing import (
    LinearProbe,
    ProbeFile,
    ProbeTraining,
    held_out_count,
    is_author_probe_path,
    load_author_probes,
    load_probes,
    save_probes,
    split_indices,
)
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, model_fingerprint
from spatialmech.models.base import BatchInputs
from spatialmech.plotting import plot_accuracy_bars, plot_alpha_curves
from spatialmech.tasks import get_task
from spatialmech.tasks.base import Item

NAME = "amplify"
DEFAULT_TASK = "scenes"
TASKS = ("scenes", "coco-spatial", "whatsup")
FEATURE_PROMPT = "Describe the image."
VARIANTS = ("projection", "add")
PAPER_ALPHAS = tuple(range(16))
PROBE_FILE = "amplify_probes.safetensors"


def config_from(options: dict[str, Any], adapter: Any = None) -> dict[str, Any]:
    from spatialmech.experiments.runner import protocol_of

    protocol = protocol_of(options)
    variant = options.get("variant") or "projection"
    if variant not in VARIANTS:
        raise UserInputError(f"--variant {variant!r} is not an amplification variant", f"use one of {', '.join(VARIANTS)}")
    n = options.get("n")
    if n is not None and int(n) < 2:
        raise UserInputError(f"--n {n} is too small for amplify", "pass at least 2 evaluation items")
    alphas = options.get("alphas")
    alphas = list(PAPER_ALPHAS) if alphas is None else sorted({0, *(int(a) if float(a).is_integer() else float(a) for a in alphas)})
    if any(a < 0 for a in alphas):
        raise UserInputError(f"alphas {alphas} include negative values", "use alphas >= 0 (0 is the baseline)")
    common = {"protocol": protocol, "site": SITE, "variant": variant, "alphas": alphas, "n": None if n is None else int(n),
              "feature_prompt": FEATURE_PROMPT, "probe_test_fraction": 0.05, **ProbeTraining().to_dict(),
              "random_control": "hidden x 2 standard normal, columns scaled to unit norm, seeded per axis",
              "save_probe": options.get("save_probe"), "filter_correct": bool(options.get("filter_correct", True))}
    if protocol == "paper":
        return {**common,
                "probe_items": "baseline-correct items of the evaluation set (the authors' code); tokens touched by each box; "
                               "labels from the caption; items whose boxes contradict the caption dropped",
                "scoring": "strict over both option orders; items with an off-axis answer dropped; only failed orders re-run",
                "alpha_selection": "best alpha > 0 on the evaluation items; random at its own best alpha"}
    return {**common,
            "validation_fraction": 0.5,
            "scoring": "strict: correct under both option orders (forced-choice items), every item at every alpha",
            "alpha_selection": "best_alpha is picked on the evaluation items themselves (as the paper does); "
            "metrics.held_out picks alpha on a validation half and scores the other half"}


# ------------------------------------------------------------------------------------------ interventions


def steering_function(probe: LinearProbe, alpha: float, variant: str = "projection"):
    """The per-token map for one axis's probe: projection amplification, or the additive text variant."""
    if variant == "projection":
        return amplify_projection(probe.weight, alpha)
    if variant != "add":
        raise UserInputError(f"unknown amplification variant {variant!r}", f"use one of {', '.join(VARIANTS)}")
    norms = probe.weight.norm(dim=0)
    if bool((norms == 0).any()):
        raise UserInputError("a probe direction is all zeros", "refit the probe")
    adders = [add_direction(probe.weight[:, c] / norms[c], alpha) for c in range(probe.weight.shape[1])]

    def add_own_class(h: torch.Tensor) -> torch.Tensor:
        predicted = probe.predict(h)
        out = h.clone()
        for c, add in enumerate(adders):
            rows = predicted == c
            if bool(rows.any()):
                out[rows] = add(h[rows])
        return out

    return add_own_class


@lru_cache(maxsize=8)
def _cached_probe_file(path: str, mtime_ns: int, size: int) -> ProbeFile:
    return load_probes(path)


def _probe_set(probe_file: str | Path | ProbeFile | Mapping[str, LinearProbe]) -> tuple[dict[str, LinearProbe], dict[str, Any]]:
    if isinstance(probe_file, ProbeFile):
        return probe_file.probes, probe_file.metadata
    if isinstance(probe_file, Mapping):
        return dict(probe_file), {}
    path = Path(probe_file)
    if is_author_probe_path(path):
        loaded = load_author_probes(path)
        return loaded.probes, loaded.metadata
    if not path.is_file():
        raise UserInputError(f"probe file {path} does not exist", "pass the file written by `spatialmech run amplify --save-probe P`")
    stat = path.stat()
    loaded = _cached_probe_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return loaded.probes, loaded.metadata


def amplification_interventions(
    adapter: Any,
    inputs: BatchInputs,
    items: Sequence[Item],
    probe_file: str | Path | ProbeFile | Mapping[str, LinearProbe],
    alpha: float,
    variant: str | None = None,
    skip_missing: bool = False,
) -> list[Steer]:
    """Steers that amplify each row's axis probe on all its image tokens at `projector.out` (prefill only).

    `probe_file` is a path written by `run amplify --save-probe` (or `run probe`), the authors' probe
    arrays (a folder holding `*_probe_<axis>_{W,b}_FP32.npy`, or one of those files), a loaded
    `ProbeFile`, or {axis: LinearProbe}; row b uses the probe of `items[b].axis`. `variant` defaults
    to the one the file was made for ("projection" otherwise). Rows whose axis has no probe are an
    error, or left unsteered with `skip_missing=True`.
    """
    probes, metadata = _probe_set(probe_file)
    variant = variant or metadata.get("variant") or "projection"
    if metadata.get("site", SITE) != SITE:
        raise UserInputError(f"probe file was trained on {metadata['site']}, amplification acts on {SITE}", "use an amplify probe file")
    if len(items) != inputs.batch_size:
        raise ValueError(f"{len(items)} items for a batch of {inputs.batch_size} rows")
    positions = image_positions(inputs)
    empty = torch.zeros(0, dtype=torch.long)
    steers = []
    for axis in sorted({item.axis for item in items}):
        if axis not in probes and skip_missing:
            continue
        if axis not in probes:
            raise UserInputError(f"the probe file has no {axis} probe (it has {', '.join(sorted(probes))})",
                                 f"refit with items on the {axis} axis, or evaluate {', '.join(sorted(probes))} items only")
        probe = probes[axis]
        if probe.hidden_size != adapter.hidden_size:
            raise UserInputError(f"the {axis} probe has size {probe.hidden_size}, this model's hidden size is {adapter.hidden_size}",
                                 "use a probe file fitted on this model")
        rows = [positions[b] if item.axis == axis else empty for b, item in enumerate(items)]
        steers.append(Steer(SITE, rows, steering_function(probe, alpha, variant)))
    return steers


def amplification_logits(adapter: Any, probe_file: str | Path | ProbeFile | Mapping[str, LinearProbe], alpha: float,
                         variant: str | None = None):
    """A `logits_fn(inputs, items)` for `common.score_items` that scores with amplification applied."""
    engine = Engine(adapter)

    def logits(inputs: BatchInputs, items: Sequence[Item]) -> torch.Tensor:
        return engine.logits(inputs, amplification_interventions(adapter, inputs, items, probe_file, alpha, variant))

    return logits


def random_directions(hidden: int, seed: int, axis: str, classes: Sequence[str]) -> LinearProbe:
    """The control: hidden x 2 standard-normal directions with unit columns (zero bias), seeded per axis."""
    generator = torch.Generator().manual_seed(int(seed) * 1000 + (0 if axis == "horizontal" else 1))
    weight = torch.randn(hidden, len(classes), generator=generator)
    return LinearProbe(weight / weight.norm(dim=0, keepdim=True), torch.zeros(len(classes)), list(classes), {"axis": axis, "random": True})


# ------------------------------------------------------------------------------------------ run


def _steered(ctx: ExperimentContext, engine: Engine) -> sweeps.Steered:
    """The logits function of a set of directions at one alpha; rows whose axis has none stay unsteered."""
    def at(probes: Mapping[str, LinearProbe], alpha: float):
        def logits(inputs: BatchInputs, batch: Sequence[Item]) -> torch.Tensor:
            steers = amplification_interventions(ctx.adapter, inputs, batch, probes, alpha, ctx.config["variant"], skip_missing=True)
            return engine.logits(inputs, steers)
        return logits
    return at


def _no_probe(fitted: dict[str, Any], candidates: int) -> UserInputError:
    return UserInputError(
        f"no probe could be fitted: too few of the {candidates} probe items qualify ({fitted['report']})",
        "use a model that gets some items right, or more items (--n)")


def _save(ctx: ExperimentContext, probes: dict[str, LinearProbe], summary: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    meta = {"experiment": NAME, "site": SITE, "variant": ctx.config["variant"], "task": ctx.task_name, "protocol": ctx.config["protocol"],
            "model": model_fingerprint(ctx.adapter), "seed": ctx.seed, "best_alpha": summary["best_alpha"],
            "feature_prompt": ctx.config["feature_prompt"], "training": ProbeTraining.from_config(ctx.config).to_dict(), **extra}
    save_probes(ctx.out_dir / PROBE_FILE, probes, meta)
    if ctx.config.get("save_probe"):
        save_probes(Path(ctx.config["save_probe"]), probes, meta)


def _fit_rows(probes: Mapping[str, LinearProbe]) -> list[dict[str, Any]]:
    return [{"axis": axis, "classes": "/".join(p.classes), **{k: p.info.get(k) for k in ("train_accuracy", "test_accuracy", "train_items", "test_items")}}
            for axis, p in probes.items()]


def _figures(ctx: ExperimentContext, alphas: Sequence[float], curve_rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[str]:
    protocol = ctx.config["protocol"]
    figures = plot_alpha_curves(
        alphas, {"probe": [r["probe_accuracy"] for r in curve_rows], "random": [r["random_accuracy"] for r in curve_rows]},
        summary["baseline_accuracy"], ctx.figure_path("amplify_alpha"),
        f"ordering amplification ({ctx.config['variant']}, {protocol} protocol) on {ctx.task_name}")
    reference = paper.AMPLIFY["Qwen2-VL-2B"]
    best = summary["best_alpha"]
    return figures + plot_accuracy_bars(
        ["baseline", "random", "probe", "probe* (oracle)"],
        [float("nan") if summary[k] is None else summary[k] for k in ("baseline_accuracy", "random_accuracy", "accuracy", "oracle_accuracy")],
        ctx.figure_path("amplify_bars"),
        f"amplification on {ctx.task_name} (alpha {'-' if best is None else f'{best:g}'}, {protocol}); paper: Qwen2-VL-2B COCO",
        reference=[reference["none"], reference["random"], reference["amplified"], None])


def _probes_and_controls(ctx: ExperimentContext, fitted: dict[str, Any], items: int
                         ) -> tuple[dict[str, LinearProbe], dict[str, LinearProbe]]:
    """The fitted probes (refusing a run where none could be fitted) and the random-direction control of
    each, both protocols' shared start of the sweep."""
    probes: dict[str, LinearProbe] = fitted["probes"]
    if not probes:
        raise _no_probe(fitted, items)
    hidden = next(iter(probes.values())).hidden_size
    return probes, {axis: random_directions(hidden, ctx.seed, axis, AXIS_CLASSES[axis]) for axis in probes}


def run_paper(ctx: ExperimentContext, task: Any, engine: Engine) -> ExperimentOutput:
    """The authors' protocol: baseline once, probes on its correct items, re-run only failed orders."""
    items = task.items(ctx.config.get("n") if ctx.task_name != "scenes" else ctx.config.get("n") or fit.DEFAULT_SCENES_N, seed=ctx.seed)
    scored = sweeps.baseline(ctx, task, items)
    clean = [(item, row) for item, row in zip(items, scored) if not row["off_axis"]]
    golden = [item for item, row in clean if not row["failed_orders"]]
    failed = [(item, row["failed_orders"]) for item, row in clean if row["failed_orders"]]
    # filter_correct=False (tests on untrained models): every item fits the probes, not only the correct ones
    fitted = fit.fit_paper_probes(ctx, engine, task, golden if ctx.config["filter_correct"] else items)
    probes, random_probes = _probes_and_controls(ctx, fitted, len(golden))
    curves = sweeps.failed_order_sweep(ctx, engine, task, failed, {"probe": probes, "random": random_probes}, _steered(ctx, engine))
    summary = sweeps.paper_summary(len(clean), len(golden), [i.axis for i, _ in failed], [i.axis for i in golden], curves)
    metrics = {**summary, "protocol": "paper", "items": len(items), "dropped_off_axis": len(items) - len(clean),
               "probe_fit": {"filter": fitted["report"], **{axis: {k: p.info.get(k) for k in ("train_accuracy", "test_accuracy", "train_items", "test_items")}
                                                           for axis, p in probes.items()}},
               "axes_without_probe": sorted(set(AXIS_CLASSES) - set(probes))}
    _save(ctx, probes, summary, {"probe_items": "baseline-correct evaluation items"})

    n, gold, n_fail = summary["n"], summary["baseline_correct"], summary["baseline_failed"]
    alphas = list(ctx.config["alphas"])
    curve_rows = []
    for a in alphas:
        fixed = {name: (sum(curve[a]) if a in curve else 0) for name, curve in curves.items()}
        curve_rows.append({"alpha": a, **{f"{name}_accuracy": (gold + fixed[name]) / n if n else None for name in curves},
                           **{f"{name}_fails_fixed": fixed[name] / n_fail if n_fail else None for name in curves}})
    failed_at = {item.id: orders for item, orders in failed}
    position = {item.id: i for i, (item, _) in enumerate(failed)}
    best = summary["best_alpha"]
    item_rows = []
    for item, row in zip(items, scored):
        k = position.get(item.id)
        fixing = [a for a in alphas if a > 0 and k is not None and curves["probe"][a][k]]
        item_rows.append({
            "id": item.id, "axis": item.axis, "relation": item.relation, "off_axis": row["off_axis"],
            "answer_natural": row["words"][0], "answer_swapped": row["words"][1], "baseline_correct": not row["failed_orders"] and not row["off_axis"],
            "failed_orders": "/".join(("natural", "swapped")[o] for o in failed_at.get(item.id, [])),
            "probe_fixed_at_best": bool(k is not None and best is not None and curves["probe"][best][k]),
            "first_fixing_alpha": fixing[0] if fixing else None})
    return ExperimentOutput(metrics=metrics, tables={"alpha_curve": curve_rows, "items": item_rows, "probe_fit": _fit_rows(probes)},
                            figures=_figures(ctx, alphas, curve_rows, summary), data={"probe_file": PROBE_FILE, "alphas": alphas})


def run_strict(ctx: ExperimentContext, task: Any, engine: Engine) -> ExperimentOutput:
    """Ours, stricter: disjoint probe items, every item at every alpha, alpha also chosen on validation items."""
    config = ctx.config
    evaluation, probe_items, split = fit.split_items(task, ctx.task_name, config.get("n"), ctx.seed)
    fitted = fit.fit_strict_probes(ctx, engine, task, probe_items)
    probes, random_probes = _probes_and_controls(ctx, fitted, len(probe_items))

    swept = sweeps.sweep(ctx, engine, task, evaluation, {"probe": probes, "random": random_probes}, _steered(ctx, engine))
    curves = {name: values["correct"] for name, values in swept.items()}
    mean_p = {name: sweeps.mean_by_alpha(values["p_answer"]) for name, values in swept.items()}
    n_val = held_out_count(len(evaluation), float(config["validation_fraction"]))
    test_idx, val_idx = split_indices(len(evaluation), n_val, seed=ctx.seed + 1)
    summary = sweeps.summarise(curves, val_idx, test_idx)
    metrics = {
        **summary, "protocol": "strict", "probe_split": split,
        "probe_fit": {"filter": fitted["report"], **{axis: {k: p.info.get(k) for k in ("train_accuracy", "test_accuracy", "train_items", "test_items")}
                                                     for axis, p in probes.items()}},
        "axes_without_probe": sorted(set(AXIS_CLASSES) - set(probes)),
        "alpha_selection": "best_alpha picked on the evaluation items (as the paper); held_out: picked on validation, scored on test",
    }
    _save(ctx, probes, summary, {"held_out_alpha": summary["held_out"]["alpha"], "probe_split": split})

    alphas = list(config["alphas"])
    baseline = curves["probe"][0]
    curve_rows = [{
        "alpha": a,
        "probe_accuracy": sweeps.accuracy(curves["probe"][a]), "random_accuracy": sweeps.accuracy(curves["random"][a]),
        "probe_fails_fixed": sweeps.fails_fixed(baseline, curves["probe"][a]), "random_fails_fixed": sweeps.fails_fixed(baseline, curves["random"][a]),
        "probe_broken": sweeps.broken(baseline, curves["probe"][a]),
        "probe_mean_p_answer": mean_p["probe"][a], "random_mean_p_answer": mean_p["random"][a],
    } for a in alphas]
    best = summary["best_alpha"]
    validation = set(val_idx)
    item_rows = []
    for i, item in enumerate(evaluation):
        fixing = [a for a in alphas if curves["probe"][a][i]]
        item_rows.append({
            "id": item.id, "axis": item.axis, "relation": item.relation, "baseline_correct": baseline[i],
            "probe_correct_at_best": curves["probe"][best][i], "random_correct_at_best": curves["random"][best][i],
            "first_correct_alpha": fixing[0] if fixing else None, "split": "validation" if i in validation else "test",
        })
    return ExperimentOutput(metrics=metrics, tables={"alpha_curve": curve_rows, "items": item_rows, "probe_fit": _fit_rows(probes)},
                            figures=_figures(ctx, alphas, curve_rows, summary), data={"probe_file": PROBE_FILE, "alphas": alphas})


def run(ctx: ExperimentContext) -> ExperimentOutput:
    task = get_task(ctx.task_name, geometry=ctx.adapter.grid_spec(), data_root=ctx.data_root)
    engine = Engine(ctx.adapter)
    return run_paper(ctx, task, engine) if ctx.config["protocol"] == "paper" else run_strict(ctx, task, engine)
