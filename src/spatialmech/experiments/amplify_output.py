"""What an `amplify` run writes besides its units: the probe file, the tables' probe rows and the figures
(both protocols), so amplify.py holds only the experiment's plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spatialmech import reference as paper
from spatialmech.experiments.amplify_fit import SITE
from spatialmech.experiments.probing import LinearProbe, ProbeTraining, save_probes
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, model_fingerprint
from spatialmech.plotting import plot_accuracy_bars, plot_alpha_curves

PROBE_FILE = "amplify_probes.safetensors"
FIT_INFO = ("train_accuracy", "test_accuracy", "train_items", "test_items")  # reported per fitted probe


def save(ctx: ExperimentContext, probes: dict[str, LinearProbe], summary: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """The run's probe file (and --save-probe's copy), with what `eval --amplify` needs to reuse it."""
    meta = {"experiment": "amplify", "site": SITE, "variant": ctx.config["variant"], "task": ctx.task_name, "protocol": ctx.config["protocol"],
            "model": model_fingerprint(ctx.adapter), "seed": ctx.seed, "best_alpha": summary["best_alpha"],
            "feature_prompt": ctx.config["feature_prompt"], "training": ProbeTraining.from_config(ctx.config).to_dict(), **extra}
    save_probes(ctx.out_dir / PROBE_FILE, probes, meta)
    if ctx.config.get("save_probe"):
        save_probes(Path(ctx.config["save_probe"]), probes, meta)


def fit_rows(probes: Mapping[str, LinearProbe]) -> list[dict[str, Any]]:
    return [{"axis": axis, "classes": "/".join(p.classes), **{k: p.info.get(k) for k in FIT_INFO}}
            for axis, p in probes.items()]


def figures(ctx: ExperimentContext, alphas: Sequence[float], curve_rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[str]:
    """amplify_alpha (accuracy per alpha, probe vs random) and amplify_bars (Table 2's row, the paper's beside it)."""
    protocol = ctx.config["protocol"]
    drawn = plot_alpha_curves(
        alphas, {"probe": [r["probe_accuracy"] for r in curve_rows], "random": [r["random_accuracy"] for r in curve_rows]},
        summary["baseline_accuracy"], ctx.figure_path("amplify_alpha"),
        f"ordering amplification ({ctx.config['variant']}, {protocol} protocol) on {ctx.task_name}")
    reference = paper.AMPLIFY["Qwen2-VL-2B"]
    best = summary["best_alpha"]
    return drawn + plot_accuracy_bars(
        ["baseline", "random", "probe", "probe* (oracle)"],
        [float("nan") if summary[k] is None else summary[k] for k in ("baseline_accuracy", "random_accuracy", "accuracy", "oracle_accuracy")],
        ctx.figure_path("amplify_bars"),
        f"amplification on {ctx.task_name} (alpha {'-' if best is None else f'{best:g}'}, {protocol}); paper: Qwen2-VL-2B COCO",
        reference=[reference["none"], reference["random"], reference["amplified"], None])


def probe_fit(report: Mapping[str, Any], probes: Mapping[str, LinearProbe]) -> dict[str, Any]:
    return {"filter": dict(report), **{axis: {k: p.info.get(k) for k in FIT_INFO} for axis, p in probes.items()}}


def output(ctx: ExperimentContext, metrics: dict[str, Any], tables: tuple[list[dict[str, Any]], list[dict[str, Any]]],
           probes: Mapping[str, LinearProbe], summary: Mapping[str, Any]) -> ExperimentOutput:
    """Both protocols' output: their metrics and tables, the probe rows and the two figures."""
    alphas = list(ctx.config["alphas"])
    curve_rows, item_rows = tables
    return ExperimentOutput(metrics=metrics, tables={"alpha_curve": curve_rows, "items": item_rows, "probe_fit": fit_rows(probes)},
                            figures=figures(ctx, alphas, curve_rows, summary), data={"probe_file": PROBE_FILE, "alphas": alphas})
