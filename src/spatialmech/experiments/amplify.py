"""`amplify` (paper §5.4, Table 2): amplify the vision-derived ordering direction on every image token
at the LM input, and count how many failures it fixes.

As the authors' code does it (SPEC section 4):
1. Probe. Per axis, a 2-class linear probe (horizontal: left/right, vertical: above/below = which of
   the two named objects comes first along the axis) on `projector.out` features mean-pooled over the
   subject's box and over the reference's box (two examples per item), from a forward with the
   neutral prompt "Describe the image.", on items the model answers correctly (strict); 95/5 split,
   AdamW lr 1e-3, wd 1e-4, 200 full-batch epochs. W (hidden x 2) = the probe's weight columns.
2. Intervention. `amplify_projection(W, alpha)`: h += alpha * (h W / |W_col|^2) W^T on all image
   tokens at `projector.out` (= LM layer-0 input at image positions), prompt pass only; the question's
   axis picks W. `--variant add` is the paper's text variant: each image token gets alpha times the
   unit direction of the class the probe assigns it (h += alpha * w_c / |w_c|).
3. Sweep alpha over 0..15, strict scoring (both option orders). Report the baseline (alpha 0), the
   best global alpha ("Probe"), the per-item oracle ("Probe*": correct if any alpha gets it right), a
   random control (hidden x 2 Gaussian with unit columns, seeded) at the probe's best alpha and at its
   own best alpha, and `fails_fixed` = the fraction of baseline failures right at the best alpha.

Honesty about selection, recorded in the result: the probes are fitted on items that never overlap
the evaluation items (`config.probe_split`; `scenes` draws them from another seed's stream, finite
data sets are split by image); the headline best alpha is picked on the evaluation set itself, as in
the paper (`alpha_selection`), so `metrics.held_out` also picks alpha on a validation half of the
evaluation items and reports accuracy on the other half.

`amplification_interventions` is the one function that turns a saved probe file into engine
interventions; `spatialmech eval --amplify P --alpha A` uses it too.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from spatialmech import reference as paper
from spatialmech.engine import Engine, Steer, add_direction, amplify_projection, image_positions, regions
from spatialmech.errors import UserInputError
from spatialmech.experiments.common import ReusedEncodings, encode_items, score_items
from spatialmech.experiments.probing import (
    LinearProbe,
    ProbeFile,
    ProbeTraining,
    held_out_count,
    image_key,
    load_probes,
    save_probes,
    split_indices,
    train_probe,
)
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, chunks, model_fingerprint
from spatialmech.models.base import BatchInputs
from spatialmech.plotting import PALETTE, plot_accuracy_bars, save_figure
from spatialmech.tasks import get_task
from spatialmech.tasks.base import Item

NAME = "amplify"
DEFAULT_TASK = "scenes"
TASKS = ("scenes", "coco-spatial", "whatsup")
SITE = "projector.out"
FEATURE_PROMPT = "Describe the image."
AXIS_CLASSES = {"horizontal": ["left", "right"], "vertical": ["above", "below"]}
VARIANTS = ("projection", "add")
PAPER_ALPHAS = tuple(range(16))
DEFAULT_SCENES_N = 300  # evaluation items on `scenes`; as many again (from another stream) fit the probes
PROBE_STREAM = 7919  # scenes: probe items come from the stream of seed + PROBE_STREAM, disjoint from evaluation
PROBE_FILE = "amplify_probes.safetensors"
UNIT_ITEMS = 32  # items per resumable unit


def config_from(options: dict[str, Any], adapter: Any = None) -> dict[str, Any]:
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
    training = ProbeTraining()
    return {
        "site": SITE,
        "variant": variant,
        "alphas": alphas,
        "n": None if n is None else int(n),
        "filter_correct": bool(options.get("filter_correct", True)),
        "feature_prompt": FEATURE_PROMPT,
        "probe_test_fraction": 0.05,
        **training.to_dict(),
        "validation_fraction": 0.5,
        "random_control": "hidden x 2 standard normal, columns scaled to unit norm, seeded per axis",
        "scoring": "strict: correct under both option orders (forced-choice items)",
        "alpha_selection": "best_alpha is picked on the evaluation items themselves (as the paper does); "
        "metrics.held_out picks alpha on a validation half and scores the other half",
        "save_probe": options.get("save_probe"),
    }


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

    `probe_file` is a path written by `run amplify --save-probe` (or `run probe`), a loaded
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


# ------------------------------------------------------------------------------------------ items


def split_items(task: Any, task_name: str, n: int | None, seed: int) -> tuple[list[Item], list[Item], dict[str, Any]]:
    """(evaluation items, probe items, how they were split): never the same picture in both."""
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


def pooled_features(engine: Engine, task: Any, items: Sequence[Item], prompt: str) -> list[dict[str, Any]]:
    """Per item: `projector.out` mean-pooled over the subject's and the reference's box (neutral prompt)."""
    inputs = encode_items(engine.adapter, task, items, prompts=[prompt] * len(items))
    boxes = []
    for item, row in zip(items, inputs.images):
        subject = regions.region_positions(row[0], item.box_fraction(item.target), nearest=True)
        reference = regions.region_positions(row[0], item.box_fraction(item.reference), nearest=True)
        boxes.append((subject, reference))
    acts = engine.cache(inputs, {SITE: [torch.cat(pair) for pair in boxes]})
    out = []
    for item, (subject, _), values in zip(items, boxes, acts[SITE]):
        values = values.float()
        first = first_along_axis(item)
        out.append({
            "id": item.id,
            "axis": item.axis,
            "subject_label": None if first is None else (0 if first == 0 else 1),
            "subject": values[: subject.numel()].mean(0).tolist(),
            "reference": values[subject.numel():].mean(0).tolist(),
        })
    return out


# ------------------------------------------------------------------------------------------ probe fitting


def fit_axis_probes(ctx: ExperimentContext, engine: Engine, task: Any, probe_items: Sequence[Item]) -> dict[str, Any]:
    """Baseline-filter the probe items (strict), pool their features, fit one 2-class probe per axis."""
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
                row for batch in chunks(right, ctx.batch_size) for row in pooled_features(engine, task, batch, config["feature_prompt"])]})
            for row in unit["rows"]:
                if row["subject_label"] is None:
                    report["dropped_no_order"] += 1
                else:
                    features.append(row)
    report["kept"] = len(features)

    training = ProbeTraining.from_config(config)
    fits: dict[str, Any] = {}
    for axis, classes in AXIS_CLASSES.items():
        rows = [row for row in features if row["axis"] == axis]
        if not rows:
            fits[axis] = None
            continue

        def fit(rows: list[dict[str, Any]] = rows, classes: list[str] = classes, axis: str = axis) -> dict[str, Any]:
            n_test = held_out_count(len(rows), float(config["probe_test_fraction"]))
            train_idx, test_idx = split_indices(len(rows), n_test, seed=ctx.seed)

            def examples(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
                x = [torch.tensor(rows[i][part]) for i in indices for part in ("subject", "reference")]
                y = [label for i in indices for label in (rows[i]["subject_label"], 1 - rows[i]["subject_label"])]
                hidden = len(rows[0]["subject"])
                return (torch.stack(x) if x else torch.zeros(0, hidden)), torch.tensor(y, dtype=torch.long)

            train_x, train_y = examples(train_idx)
            test_x, test_y = examples(test_idx)
            probe = train_probe(train_x, train_y, classes, training, seed=ctx.seed)
            probe.info.update({"axis": axis, "train_accuracy": probe.accuracy(train_x, train_y),
                               "test_accuracy": probe.accuracy(test_x, test_y) if test_idx else None,
                               "train_items": len(train_idx), "test_items": len(test_idx)})
            return {"probe": probe.to_json()}

        fits[axis] = ctx.unit(f"probe-fit-{axis}", fit)["probe"]
    probes = {axis: LinearProbe.from_json(fit) for axis, fit in fits.items() if fit is not None}
    return {"probes": probes, "report": report}


# ------------------------------------------------------------------------------------------ sweep


def _scores(ctx: ExperimentContext, task: Any, group: Sequence[Item], logits_fn: Any = None,
            encode: Any = encode_items) -> dict[str, list]:
    scores = score_items(ctx.adapter, task, group, ctx.batch_size, logits_fn, encode=encode)
    return {"correct": [s.correct for s in scores], "p_answer": [s.p_answer for s in scores]}


def sweep(ctx: ExperimentContext, engine: Engine, task: Any, items: Sequence[Item],
          directions: Mapping[str, Mapping[str, LinearProbe]]) -> dict[str, dict[str, dict[float, list]]]:
    """Strict correctness (and P(answer), the lower of the two option orders) of every evaluation item
    at every alpha, for each set of directions.

    Alpha 0 is the unmodified model (shared by all direction sets). Rows whose axis has no directions
    are left unsteered. Returns {name: {"correct" | "p_answer": {alpha: [value per item]}}}.
    """
    alphas = list(ctx.config["alphas"])
    variant = ctx.config["variant"]
    groups = chunks(list(items), UNIT_ITEMS)
    total = len(groups) * (1 + len(directions) * sum(1 for a in alphas if a != 0))
    progress = None
    if ctx.progress:
        from tqdm import tqdm

        progress = tqdm(total=total, desc="amplify sweep", unit="unit", leave=False)
    out = {name: {key: {a: [] for a in alphas} for key in ("correct", "p_answer")} for name in directions}

    def steered(probes: Mapping[str, LinearProbe], alpha: float):
        def logits(inputs: BatchInputs, batch: Sequence[Item]) -> torch.Tensor:
            steers = amplification_interventions(ctx.adapter, inputs, batch, probes, alpha, variant, skip_missing=True)
            return engine.logits(inputs, steers)
        return logits

    for index, group in enumerate(groups):
        group = list(group)
        # every alpha and direction set scores the same pictures: render, tokenise and encode them once
        encode = ReusedEncodings(engine)
        units = {0: ctx.unit(f"baseline-{index:04d}", lambda group=group, encode=encode: _scores(ctx, task, group, encode=encode))}
        if progress is not None:
            progress.update(1)
        for name, probes in directions.items():
            for alpha in alphas:
                if alpha != 0:
                    units[alpha] = ctx.unit(f"sweep-{name}-a{alpha:g}-{index:04d}", lambda group=group, probes=probes, alpha=alpha, encode=encode:
                                            _scores(ctx, task, group, steered(probes, alpha), encode))
                    if progress is not None:
                        progress.update(1)
                for key in ("correct", "p_answer"):
                    out[name][key][alpha].extend(units[alpha][key])
    if progress is not None:
        progress.close()
    return out


# ------------------------------------------------------------------------------------------ summary


def _accuracy(flags: Sequence[bool], indices: Sequence[int] | None = None) -> float | None:
    chosen = [flags[i] for i in indices] if indices is not None else list(flags)
    return sum(chosen) / len(chosen) if chosen else None


def _best(curve: Mapping[float, list[bool]], indices: Sequence[int] | None = None) -> float:
    """The alpha with the highest accuracy (the smallest such alpha on ties)."""
    return max(curve, key=lambda a: (_accuracy(curve[a], indices) or 0.0, -a))


def _fails_fixed(baseline: Sequence[bool], steered: Sequence[bool], indices: Sequence[int] | None = None) -> float | None:
    chosen = range(len(baseline)) if indices is None else indices
    failures = [i for i in chosen if not baseline[i]]
    return sum(steered[i] for i in failures) / len(failures) if failures else None


def _broken(baseline: Sequence[bool], steered: Sequence[bool]) -> float | None:
    right = [i for i in range(len(baseline)) if baseline[i]]
    return sum(not steered[i] for i in right) / len(right) if right else None


def summarise(curves: Mapping[str, Mapping[float, list[bool]]], validation: Sequence[int], test: Sequence[int]) -> dict[str, Any]:
    """Table 2's numbers from per-item correctness at every alpha ('probe' and 'random' curves)."""
    probe, rand = curves["probe"], curves["random"]
    baseline = probe[0]
    n = len(baseline)
    best = _best(probe)
    random_best = _best(rand)
    oracle = [any(probe[a][i] for a in probe) for i in range(n)]
    random_oracle = [any(rand[a][i] for a in rand) for i in range(n)]
    val_best, val_random_best = _best(probe, validation), _best(rand, validation)
    return {
        "n": n,
        "baseline_accuracy": _accuracy(baseline),
        "accuracy": _accuracy(probe[best]),
        "best_alpha": best,
        "oracle_accuracy": _accuracy(oracle),
        "fails_fixed": _fails_fixed(baseline, probe[best]),
        "broken": _broken(baseline, probe[best]),
        "oracle_fails_fixed": _fails_fixed(baseline, oracle),
        "random_accuracy": _accuracy(rand[best]),
        "random_fails_fixed": _fails_fixed(baseline, rand[best]),
        "random_best_alpha": random_best,
        "random_best_accuracy": _accuracy(rand[random_best]),
        "random_best_fails_fixed": _fails_fixed(baseline, rand[random_best]),
        "random_oracle_accuracy": _accuracy(random_oracle),
        "held_out": {
            "validation_n": len(validation),
            "test_n": len(test),
            "alpha": val_best,
            "baseline_accuracy": _accuracy(baseline, test),
            "accuracy": _accuracy(probe[val_best], test),
            "fails_fixed": _fails_fixed(baseline, probe[val_best], test),
            "random_alpha": val_random_best,
            "random_accuracy": _accuracy(rand[val_random_best], test),
            "random_accuracy_at_probe_alpha": _accuracy(rand[val_best], test),
        },
    }


# ------------------------------------------------------------------------------------------ figures


def plot_alpha_curves(alphas: Sequence[float], curves: Mapping[str, Sequence[float]], baseline: float, stem: Path, title: str) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for (label, values), colour in zip(curves.items(), PALETTE):
        ax.plot(list(alphas), list(values), marker="o", markersize=3, label=label, color=colour)
    ax.axhline(baseline, color="gray", linestyle="dashed", label="baseline (alpha 0)")
    ax.set_xlabel("alpha")
    ax.set_ylabel("accuracy (strict)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, stem)


# ------------------------------------------------------------------------------------------ run


def run(ctx: ExperimentContext) -> ExperimentOutput:
    config = ctx.config
    task = get_task(ctx.task_name, geometry=ctx.adapter.grid_spec(), data_root=ctx.data_root)
    evaluation, probe_items, split = split_items(task, ctx.task_name, config.get("n"), ctx.seed)
    engine = Engine(ctx.adapter)

    fitted = fit_axis_probes(ctx, engine, task, probe_items)
    probes: dict[str, LinearProbe] = fitted["probes"]
    if not probes:
        raise UserInputError(
            f"no probe could be fitted: the model answered none of the {len(probe_items)} probe items correctly "
            f"({fitted['report']})", "use a model that gets some items right, or more items (--n)")
    hidden = next(iter(probes.values())).hidden_size
    random_probes = {axis: random_directions(hidden, ctx.seed, axis, AXIS_CLASSES[axis]) for axis in probes}

    swept = sweep(ctx, engine, task, evaluation, {"probe": probes, "random": random_probes})
    curves = {name: values["correct"] for name, values in swept.items()}
    mean_p = {name: {a: sum(v) / len(v) for a, v in values["p_answer"].items()} for name, values in swept.items()}
    n_val = held_out_count(len(evaluation), float(config["validation_fraction"]))
    test_idx, val_idx = split_indices(len(evaluation), n_val, seed=ctx.seed + 1)
    summary = summarise(curves, val_idx, test_idx)
    metrics = {
        **summary,
        "probe_split": split,
        "probe_fit": {
            "filter": fitted["report"],
            **{axis: {k: p.info.get(k) for k in ("train_accuracy", "test_accuracy", "train_items", "test_items")} for axis, p in probes.items()},
        },
        "axes_without_probe": sorted(set(AXIS_CLASSES) - set(probes)),
        "alpha_selection": "best_alpha picked on the evaluation items (paper protocol); held_out: picked on validation, scored on test",
    }

    fingerprint = model_fingerprint(ctx.adapter)
    meta = {"experiment": NAME, "site": SITE, "variant": config["variant"], "task": ctx.task_name, "model": fingerprint,
            "seed": ctx.seed, "best_alpha": summary["best_alpha"], "held_out_alpha": summary["held_out"]["alpha"],
            "feature_prompt": config["feature_prompt"], "training": ProbeTraining.from_config(config).to_dict(),
            "probe_split": split}
    save_probes(ctx.out_dir / PROBE_FILE, probes, meta)
    if config.get("save_probe"):
        save_probes(Path(config["save_probe"]), probes, meta)

    alphas = list(config["alphas"])
    baseline = curves["probe"][0]
    curve_rows = [{
        "alpha": a,
        "probe_accuracy": _accuracy(curves["probe"][a]),
        "random_accuracy": _accuracy(curves["random"][a]),
        "probe_fails_fixed": _fails_fixed(baseline, curves["probe"][a]),
        "random_fails_fixed": _fails_fixed(baseline, curves["random"][a]),
        "probe_broken": _broken(baseline, curves["probe"][a]),
        "probe_mean_p_answer": mean_p["probe"][a],
        "random_mean_p_answer": mean_p["random"][a],
    } for a in alphas]
    best = summary["best_alpha"]
    item_rows = []
    validation = set(val_idx)
    for i, item in enumerate(evaluation):
        fixing = [a for a in alphas if curves["probe"][a][i]]
        item_rows.append({
            "id": item.id, "axis": item.axis, "relation": item.relation, "baseline_correct": baseline[i],
            "probe_correct_at_best": curves["probe"][best][i], "random_correct_at_best": curves["random"][best][i],
            "first_correct_alpha": fixing[0] if fixing else None, "split": "validation" if i in validation else "test",
        })
    fit_rows = [{"axis": axis, "classes": "/".join(p.classes), **{k: p.info.get(k) for k in ("train_accuracy", "test_accuracy", "train_items", "test_items")}}
                for axis, p in probes.items()]

    figures = plot_alpha_curves(
        alphas, {"probe": [r["probe_accuracy"] for r in curve_rows], "random": [r["random_accuracy"] for r in curve_rows]},
        summary["baseline_accuracy"], ctx.figure_path("amplify_alpha"),
        f"ordering amplification ({config['variant']}) on {ctx.task_name}",
    )
    reference = paper.AMPLIFY["Qwen2-VL-2B"]
    figures += plot_accuracy_bars(
        ["baseline", "random", "probe", "probe* (oracle)"],
        [summary["baseline_accuracy"], summary["random_accuracy"], summary["accuracy"], summary["oracle_accuracy"]],
        ctx.figure_path("amplify_bars"), f"amplification on {ctx.task_name} (alpha {best:g}); paper: Qwen2-VL-2B COCO",
        reference=[reference["none"], reference["random"], reference["amplified"], None],
    )
    return ExperimentOutput(
        metrics=metrics,
        tables={"alpha_curve": curve_rows, "items": item_rows, "probe_fit": fit_rows},
        figures=figures,
        data={"probe_file": PROBE_FILE, "alphas": alphas},
    )
