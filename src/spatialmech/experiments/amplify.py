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

from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from spatialmech.engine import Engine, Steer, add_direction, amplify_projection, image_positions
from spatialmech.errors import UserInputError
from spatialmech.experiments import amplify_fit as fit
from spatialmech.experiments import amplify_output
from spatialmech.experiments import amplify_sweep as sweeps
from spatialmech.experiments.amplify_fit import AXIS_CLASSES, SITE
from spatialmech.experiments.common import ReusedEncodings, score_items
from spatialmech.experiments.plan import Stage
from spatialmech.experiments.probing import (
    LinearProbe,
    ProbeFile,
    ProbeTraining,
    held_out_count,
    is_author_probe_path,
    load_author_probes,
    load_probes,
    split_indices,
)
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput
from spatialmech.models.base import BatchInputs
from spatialmech.tasks import get_task
from spatialmech.tasks.base import Item

NAME = "amplify"
DEFAULT_TASK = "scenes"
TASKS = ("scenes", "coco-spatial", "whatsup")
FEATURE_PROMPT = "Describe the image."
VARIANTS = ("projection", "add")
PAPER_ALPHAS = tuple(range(16))
DIRECTIONS = ("probe", "random")  # the direction sets swept: the fitted probes and their random control


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


# ------------------------------------------------------------------------------------------ steering


def _steered(ctx: ExperimentContext, engine: Engine) -> sweeps.Steered:
    """The logits function of a set of directions at one alpha; rows whose axis has none stay unsteered."""
    def at(probes: Mapping[str, LinearProbe], alpha: float):
        def logits(inputs: BatchInputs, batch: Sequence[Item]) -> torch.Tensor:
            steers = amplification_interventions(ctx.adapter, inputs, batch, probes, alpha, ctx.config["variant"], skip_missing=True)
            return engine.logits(inputs, steers)
        return logits
    return at


def _no_probe(report: Mapping[str, Any], candidates: int) -> UserInputError:
    return UserInputError(
        f"no probe could be fitted: too few of the {candidates} probe items qualify ({dict(report)})",
        "use a model that gets some items right, or more items (--n)")


# ------------------------------------------------------------------------------------------ plan
# paper:  baseline-NNNN (every item, both orders) -> probe-features-NNNN (its correct items)
#         -> probe-fit-<axis> -> sweep-<probe|random>-a<alpha>-NNNN (the failed orders of failed items)
# strict: probe-baseline-NNNN (the disjoint probe items' filter) -> probe-features-NNNN -> probe-fit-<axis>
#         -> baseline-NNNN and sweep-<probe|random>-a<alpha>-NNNN (every evaluation item at every alpha)
# Each step's keys and inputs come from the saved units of the steps before it.


def _setup(ctx: ExperimentContext) -> dict[str, Any]:
    """Per process: the task, an engine and the items (paper: the evaluation set; strict: it and the probe items)."""
    def build() -> dict[str, Any]:
        task = get_task(ctx.task_name, geometry=ctx.adapter.grid_spec(), data_root=ctx.data_root)
        n = ctx.config.get("n")
        if ctx.config["protocol"] == "paper":
            return {"task": task, "engine": Engine(ctx.adapter),
                    "items": task.items(n if ctx.task_name != "scenes" else n or fit.DEFAULT_SCENES_N, seed=ctx.seed)}
        evaluation, probe_items, split = fit.split_items(task, ctx.task_name, n, ctx.seed)
        return {"task": task, "engine": Engine(ctx.adapter), "evaluation": evaluation, "probe_items": probe_items, "split": split}

    return ctx.shared("amplify", build)


def _paper_baseline(ctx: ExperimentContext) -> dict[str, Any]:
    """paper: the saved baseline, partitioned (off-axis items dropped; correct and failed items). Built
    once per process, first asked for after the baseline step, so always from its complete units."""
    def build() -> dict[str, Any]:
        items = _setup(ctx)["items"]
        scored = sweeps.baseline(ctx, items)
        clean = [(item, row) for item, row in zip(items, scored) if not row["off_axis"]]
        golden = [item for item, row in clean if not row["failed_orders"]]
        # filter_correct=False (tests on untrained models): every item fits the probes, not only the correct ones
        return {"scored": scored, "clean": clean, "golden": golden, "fit_items": golden if ctx.config["filter_correct"] else items,
                "failed": [(item, row["failed_orders"]) for item, row in clean if row["failed_orders"]]}

    return ctx.shared("amplify-baseline", build)


def _feature_groups(ctx: ExperimentContext) -> tuple[list[list[Item]], list[Item]]:
    """The items of each probe-features unit, and the probe items before any filter."""
    if ctx.config["protocol"] == "paper":
        items = _paper_baseline(ctx)["fit_items"]
        return fit.groups(items), items
    probe_items = _setup(ctx)["probe_items"]
    return fit.strict_feature_groups(ctx, probe_items), probe_items


def _rows(ctx: ExperimentContext) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The probes' feature rows and filter report, read once per process after the features step."""
    return ctx.shared("amplify-rows", lambda: fit.feature_rows(ctx, *_feature_groups(ctx)))


def _directions(ctx: ExperimentContext) -> dict[str, dict[str, LinearProbe]]:
    """The fitted probes and, per axis, their random-direction control (after the fit step)."""
    def build() -> dict[str, dict[str, LinearProbe]]:
        probes = fit.load_fitted(ctx, fit.fitted_axes(ctx, _rows(ctx)[0]))
        hidden = next(iter(probes.values())).hidden_size
        return {"probe": probes, "random": {axis: random_directions(hidden, ctx.seed, axis, AXIS_CLASSES[axis]) for axis in probes}}

    return ctx.shared("amplify-directions", build)


def _encoder(ctx: ExperimentContext, index: int) -> ReusedEncodings:
    """The sweep group's inputs, kept while this process runs that group's units (one group at a time)."""
    held = ctx.shared("amplify-encodings", dict)
    if index not in held:
        held.clear()
        held[index] = ReusedEncodings()
    return held[index]


def _sweep_groups(ctx: ExperimentContext) -> list[list[Any]]:
    """The groups the sweep runs over: paper the failed items (with their failed orders), strict every item."""
    if ctx.config["protocol"] == "paper":
        return fit.groups(_paper_baseline(ctx)["failed"])
    return fit.groups(_setup(ctx)["evaluation"])


def plan(ctx: ExperimentContext) -> Iterator[Stage]:
    setup, paper = _setup(ctx), ctx.config["protocol"] == "paper"
    if paper:
        yield Stage("baseline", tuple(fit.group_key("baseline", i) for i in range(len(fit.groups(setup["items"])))), "amplify baseline")
    elif ctx.config["filter_correct"]:
        yield Stage("probe-baseline", tuple(fit.group_key("probe-baseline", i) for i in range(len(fit.groups(setup["probe_items"])))),
                    "amplify probe baseline")
    groups, _ = _feature_groups(ctx)
    yield Stage("probe-features", tuple(fit.group_key("probe-features", i) for i, group in enumerate(groups) if group),
                "amplify probe features")
    rows, report = _rows(ctx)
    axes = fit.fitted_axes(ctx, rows)
    if not axes:
        raise _no_probe(report, len(_paper_baseline(ctx)["golden"]) if paper else len(setup["probe_items"]))
    yield Stage("probe-fit", tuple(f"probe-fit-{axis}" for axis in axes), "amplify probe fits")
    yield Stage("sweep", sweeps.sweep_keys(DIRECTIONS, ctx.config["alphas"], len(_sweep_groups(ctx)), with_baseline=not paper),
                "amplify sweep")


def compute_unit(ctx: ExperimentContext, key: str) -> Mapping[str, Any]:
    setup, paper = _setup(ctx), ctx.config["protocol"] == "paper"
    task = setup["task"]
    if key.startswith("probe-fit-"):
        return fit.fit_unit(ctx, _rows(ctx)[0], key.removeprefix("probe-fit-"))
    if key.startswith(f"{sweeps.SWEEP}-"):
        name, alpha, index = sweeps.parse_sweep_key(key, ctx.config["alphas"])
        logits_fn = _steered(ctx, setup["engine"])(_directions(ctx)[name], alpha)
        sweep_unit = sweeps.fixed_unit if paper else sweeps.scores_unit
        return sweep_unit(ctx, task, _sweep_groups(ctx)[index], logits_fn, _encoder(ctx, index))
    prefix, index = key.rsplit("-", 1)
    if prefix == "probe-features":
        return fit.features_unit(ctx, setup["engine"], task, _feature_groups(ctx)[0][int(index)])
    if prefix == "probe-baseline":
        group = fit.groups(setup["probe_items"])[int(index)]
        return {"correct": [s.correct for s in score_items(ctx.adapter, task, group, ctx.batch_size)]}
    if prefix == "baseline" and paper:
        return sweeps.baseline_unit(ctx, task, fit.groups(setup["items"])[int(index)])
    if prefix == "baseline":  # strict: the sweep's alpha 0, from the same encoded pictures as its other units
        return sweeps.scores_unit(ctx, task, _sweep_groups(ctx)[int(index)], None, _encoder(ctx, int(index)))
    raise ValueError(f"amplify has no unit {key!r}")


# ------------------------------------------------------------------------------------------ combine


def combine_paper(ctx: ExperimentContext) -> ExperimentOutput:
    """The authors' protocol: Table 2 from the baseline, fixed failed orders per alpha, best alpha > 0."""
    items, base = _setup(ctx)["items"], _paper_baseline(ctx)
    clean, golden, failed = base["clean"], base["golden"], base["failed"]
    probes = _directions(ctx)["probe"]
    curves = sweeps.paper_curves(ctx, DIRECTIONS, len(_sweep_groups(ctx)))
    summary = sweeps.paper_summary(len(clean), len(golden), [i.axis for i, _ in failed], [i.axis for i in golden], curves)
    metrics = {**summary, "protocol": "paper", "items": len(items), "dropped_off_axis": len(items) - len(clean),
               "probe_fit": amplify_output.probe_fit(_rows(ctx)[1], probes), "axes_without_probe": sorted(set(AXIS_CLASSES) - set(probes))}
    amplify_output.save(ctx, probes, summary, {"probe_items": "baseline-correct evaluation items"})
    tables = sweeps.paper_tables(list(ctx.config["alphas"]), items, base["scored"], failed, curves, summary)
    return amplify_output.output(ctx, metrics, tables, probes, summary)


def combine_strict(ctx: ExperimentContext) -> ExperimentOutput:
    """Ours, stricter: every item at every alpha; alpha also chosen on a validation half, scored on the rest."""
    evaluation, split = _setup(ctx)["evaluation"], _setup(ctx)["split"]
    probes = _directions(ctx)["probe"]
    swept = sweeps.strict_curves(ctx, DIRECTIONS, len(_sweep_groups(ctx)))
    curves = {name: values["correct"] for name, values in swept.items()}
    mean_p = {name: sweeps.mean_by_alpha(values["p_answer"]) for name, values in swept.items()}
    n_val = held_out_count(len(evaluation), float(ctx.config["validation_fraction"]))
    test_idx, val_idx = split_indices(len(evaluation), n_val, seed=ctx.seed + 1)
    summary = sweeps.summarise(curves, val_idx, test_idx)
    metrics = {
        **summary, "protocol": "strict", "probe_split": split, "probe_fit": amplify_output.probe_fit(_rows(ctx)[1], probes),
        "axes_without_probe": sorted(set(AXIS_CLASSES) - set(probes)),
        "alpha_selection": "best_alpha picked on the evaluation items (as the paper); held_out: picked on validation, scored on test",
    }
    amplify_output.save(ctx, probes, summary, {"held_out_alpha": summary["held_out"]["alpha"], "probe_split": split})
    tables = sweeps.strict_tables(list(ctx.config["alphas"]), evaluation, curves, mean_p, summary, val_idx)
    return amplify_output.output(ctx, metrics, tables, probes, summary)


def combine(ctx: ExperimentContext) -> ExperimentOutput:
    return combine_paper(ctx) if ctx.config["protocol"] == "paper" else combine_strict(ctx)
