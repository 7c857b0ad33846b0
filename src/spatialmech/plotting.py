"""The paper's figure types, drawn from result data and saved atomically as PNG and SVG.

- layer curves: IIA per layer for each tracked answer (Fig. 3, 6-7, 9);
- token-grid heatmaps: probe predictions on every image token, object boxes outlined (Fig. 5);
- accuracy bars with a chance line (Tables 1, 2, 5).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from spatialmech.io import atomic_write_bytes  # noqa: E402

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]


def save_figure(fig, stem: str | Path) -> list[str]:
    """Save `fig` as STEM.png and STEM.svg (atomically); return both paths."""
    paths = []
    plt.rcParams["svg.hashsalt"] = "spatialmech"  # deterministic SVG ids
    for ext in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=120, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        paths.append(str(atomic_write_bytes(f"{stem}.{ext}", buffer.getvalue())))
    plt.close(fig)
    return paths


EMBEDDINGS_LABEL = "emb"  # the layer axis' first point: the input to layer 0 (SPEC section 7)


def layer_x(labels: Sequence[int | str]) -> list[int]:
    """x positions of layer labels: "emb" at -1, layer l (the output of layer l) at l."""
    return [-1 if label == EMBEDDINGS_LABEL else int(label) for label in labels]


def _layer_ticks(ax, labels: Sequence[int | str]) -> None:
    """Ticks named as the labels, so "c2 at layers 20-22" reads off the axis (the authors' plot.py)."""
    xs = layer_x(labels)
    step = max(1, (len(xs) - 1) // 8)
    picked = sorted({*xs[::step], xs[-1]}) if xs else []
    ax.set_xticks(picked, [EMBEDDINGS_LABEL if x == -1 else str(x) for x in picked])


def plot_layer_curves(
    layers: Sequence[int | str],
    curves: Mapping[str, Sequence[float]],
    stem: str | Path,
    title: str,
    ylabel: str = "IIA (mean P of answer)",
    shade: Sequence[tuple[int, int, str]] = (),
) -> list[str]:
    """One line per tracked answer over layers; `shade` marks layer ranges (start, end, label)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for (start, end, label), colour in zip(shade, ("#f3e6c9", "#d9ecd9", "#dde4f3")):
        ax.axvspan(start - 0.5, end + 0.5, color=colour, alpha=0.6, label=label)
    for (label, values), colour in zip(curves.items(), PALETTE):
        ax.plot(layer_x(layers), list(values), marker="o", markersize=3, label=label, color=colour)
    _layer_ticks(ax, layers)
    ax.set_xlabel("layer (emb = input to layer 0; l = output of layer l)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, stem)


def plot_layer_panels(
    labels: Sequence[int | str],
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    stem: str | Path,
    title: str,
    ylabel: str = "P (summed over spellings)",
) -> list[str]:
    """One panel per group (e.g. direction), one line per tracked answer with a +-std band:
    panels[group][line] = (mean, std), as the authors' last_token_exp/plot.py draws Fig. 3."""
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), sharey=True, squeeze=False)
    xs = layer_x(labels)
    for ax, (group, lines) in zip(axes[0], panels.items()):
        for (line, (mean, std)), colour in zip(lines.items(), PALETTE):
            low = [m - s for m, s in zip(mean, std)]
            high = [m + s for m, s in zip(mean, std)]
            ax.plot(xs, list(mean), label=line, color=colour, linewidth=1.8)
            ax.fill_between(xs, low, high, color=colour, alpha=0.18, linewidth=0)
        _layer_ticks(ax, labels)
        ax.set_title(str(group), fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, stem)


def plot_token_heatmaps(
    panels: Sequence[Mapping[str, object]],
    stem: str | Path,
    title: str,
    class_names: Sequence[str],
) -> list[str]:
    """Probe predictions on the token grid, one panel per image.

    Each panel: {"grid": 2-D list of class ids (-1 = no token), "boxes": [(row0, col0, row1, col1)],
    "box_labels": [str], "title": str}.
    """
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    cmap = ListedColormap(PALETTE[: len(class_names)])
    for ax, panel in zip(axes[0], panels):
        grid = [[value if value is not None and value >= 0 else float("nan") for value in row] for row in panel["grid"]]
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(class_names) - 0.5, interpolation="nearest")
        for (r0, c0, r1, c1), label in zip(panel.get("boxes", []), panel.get("box_labels", [])):
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="black", linewidth=2))
            ax.text(c0 - 0.4, r0 - 0.6, label, fontsize=7, va="bottom")
        ax.set_title(str(panel.get("title", "")), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Rectangle((0, 0), 1, 1, color=PALETTE[i]) for i in range(len(class_names))]
    fig.legend(handles, class_names, loc="lower center", ncol=len(class_names), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(bottom=0.15)
    return save_figure(fig, stem)


def plot_accuracy_bars(
    labels: Sequence[str],
    values: Sequence[float],
    stem: str | Path,
    title: str,
    chance: float | Sequence[float] | None = None,
    reference: Sequence[float | None] | None = None,
    ylabel: str = "accuracy",
) -> list[str]:
    """Bars per condition, a dashed chance line, and optional hollow markers for the paper's numbers."""
    fig, ax = plt.subplots(figsize=(max(3.2, 1.1 * len(labels) + 1.5), 3.4))
    positions = range(len(labels))
    ax.bar(positions, values, color=PALETTE[: len(labels)] if len(labels) <= len(PALETTE) else PALETTE[0])
    for x, value in zip(positions, values):
        ax.text(x, value + 0.02, f"{value:.2f}", ha="center", fontsize=8)
    if reference is not None:
        xs = [x for x, r in zip(positions, reference) if r is not None]
        ys = [r for r in reference if r is not None]
        ax.scatter(xs, ys, marker="D", facecolors="none", edgecolors="black", label="paper", zorder=3)
    if chance is not None:
        chances = [chance] * len(labels) if isinstance(chance, (int, float)) else list(chance)
        for x, c in zip(positions, chances):
            ax.hlines(c, x - 0.45, x + 0.45, colors="gray", linestyles="dashed", label="chance" if x == 0 else None)
    ax.set_xticks(list(positions), labels, fontsize=8, rotation=15 if len(labels) > 4 else 0)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if chance is not None or reference is not None:
        ax.legend(fontsize=8, loc="upper right")
    return save_figure(fig, stem)


def plot_alpha_curves(alphas: Sequence[float], curves: Mapping[str, Sequence[float | None]], baseline: float | None,
                      stem: str | Path, title: str) -> list[str]:
    """Accuracy against amplification strength, one line per direction set, baseline dashed (amplify)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for (label, values), colour in zip(curves.items(), PALETTE):
        ax.plot(list(alphas), [float("nan") if v is None else v for v in values], marker="o", markersize=3, label=label, color=colour)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="dashed", label="baseline (alpha 0)")
    ax.set_xlabel("alpha")
    ax.set_ylabel("accuracy (strict)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, stem)
