"""`MODEL_CARD.md` of the bundled model, written from its `training_log.json` (never by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spatialmech.io import atomic_write_text
from spatialmech.training.data import data_shares


def _curve(history: list[dict[str, Any]], key: str, points: int = 8) -> str:
    """A compact loss curve: mean of `key` over equal windows of the history."""
    if not history:
        return "(no steps)"
    size = max(1, len(history) // points)
    cells = []
    for start in range(0, len(history), size):
        window = history[start : start + size]
        values = [row[key] for row in window if row.get(key) is not None and row[key] == row[key]]  # skip NaN
        if values:
            cells.append(f"{window[0]['step']}-{window[-1]['step']}: {sum(values) / len(values):.3f}")
    return "; ".join(cells)


def _present_curve(history: list[dict[str, Any]]) -> list[str]:
    """The neighbour head on real neighbours only (logs from before it was recorded have none)."""
    if not any("neighbour_present_acc" in entry for entry in history):
        return []
    return [f"- vision neighbour-head batch accuracy on real neighbours (not 'none'): {_curve(history, 'neighbour_present_acc')}"]


def _task_share_line(data: dict[str, Any]) -> list[str]:
    weights = {key.removeprefix("task_weight_"): value for key, value in data.items() if key.startswith("task_weight_")}
    if not weights:
        return []
    total = sum(weights.values())
    shares = ", ".join(f"{name} {weight / total:.0%}" for name, weight in weights.items())
    return [f"- Training images per task: {shares}."]


def _timing_rows(timings: dict[str, Any]) -> list[str]:
    rows = ["| stage | wall seconds | steps | s/step | where a step's time goes (seconds, whole stage) |", "|---|---|---|---|---|"]
    for stage in ("vision", "cache", "language", "evaluate"):
        entry = timings.get(stage)
        if not entry:
            continue
        parts = entry.get("parts", {})
        detail = ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
        if stage == "cache":
            detail = f"render {entry.get('render_seconds', 0):.0f}; {entry.get('images')} images, {entry.get('megabytes')} MB of features"
        rows.append(
            f"| {stage} | {entry.get('seconds', 0):.0f} | {entry.get('steps', '')} | {entry.get('seconds_per_step', '')} | {detail} |"
        )
    return rows


def render_model_card(log: dict[str, Any]) -> str:
    config = log["config"]
    arch = config["architecture"]
    held_out = log.get("held_out", {})
    # the log's own record wins; logs written before it existed fall back to the recipe's constants
    data = {**data_shares(), **log.get("data", {})}
    total_seconds = sum(v.get("seconds", 0) for v in log["timings"].values() if isinstance(v, dict))
    lines = [
        "# spatialmech bundled model: tiny Qwen2-VL",
        "",
        "A complete `Qwen2VLForConditionalGeneration` checkpoint (safetensors, fp32) with its own offline-trained",
        "byte-level BPE tokenizer and the real Qwen2-VL chat template. It loads through the ordinary Qwen2-VL",
        "adapter (`spatialmech.models.load_model`), exactly like a downloaded checkpoint. It was produced by",
        f"`spatialmech train-default --out DIR --seed {log['seed']}` (this card and `training_log.json` are written by that command).",
        "",
        "## Accuracy on evaluation items (`spatialmech eval --task T`)",
        "",
        "| task | accuracy (`eval` default items) | n | chance | left/right | above/below | unseen combinations only | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, metrics in held_out.items():
        unseen = metrics.get("held_out_combinations")
        unseen_cells = f"{unseen['accuracy']:.4f} | {unseen['n']}" if unseen and unseen.get("accuracy") is not None else "- | -"
        axes = " | ".join(
            f"{metrics[key]:.4f}" if key in metrics else "-" for key in ("accuracy_horizontal", "accuracy_vertical")
        )
        lines.append(f"| {task} | {metrics['accuracy']:.4f} | {metrics['n']} | {metrics['chance']:.2f} | {axes} | {unseen_cells} |")
    lines += [
        "",
        "The last column is the held-out figure: items new in every respect.",
        "",
        "- squares / shapes / objects (every item of the task): the tasks draw all items in one fixed layout",
        "  (3 objects centred, 2 tokens apart; the reference is the middle one). A quarter of the attribute",
        "  combinations (unordered sets of colours / shapes / objects, `data.is_held_out_combination`) is held",
        "  out: training images in the evaluation layout use only the other combinations, so the held-out",
        f"  items' images and combinations were never seen. {data['three_object_share']:.0%} of the grid training images hold",
        f"  three objects, {data['evaluation_layout_share']:.0%} of those in the evaluation layout; the rest are random layouts",
        "  elsewhere on the grid (any combination, the evaluation layout excluded). Items of the other",
        "  combinations may share their image with a training image, so the first column is not a",
        "  held-out figure for the grid tasks.",
        *_task_share_line(data),
        f"- scenes ({config['eval_n'].get('scenes')} items of seed {config['eval_seed']}): training scenes come from seeds >= 100000",
        "  (`data.SCENES_TRAIN_SEED_BASE`); forced-choice questions are scored strictly (right under both",
        f"  option orders), chance {held_out.get('scenes', {}).get('chance', 0.25):.2f} (a random answer per order is right in both with 1/2 x 1/2).",
        "",
        "## Architecture",
        "",
        f"- Vision tower: Qwen2-VL ViT, depth {arch['vision_depth']}, width {arch['vision_embed_dim']}, {arch['vision_heads']} heads,",
        "  14 px patches, 2x2 patch merger (the projector) -> 28 px per LM token. Images are resized to 336x336 px",
        "  (min_pixels = max_pixels), so the LM sees the paper's 12x12 token grid (Qwen geometry).",
        f"- Language model: {arch['text_layers']} layers, width {arch['text_hidden']}, {arch['text_heads']} heads"
        f" ({arch['text_kv_heads']} KV heads), MLP {arch['text_intermediate']}, M-RoPE sections {arch['mrope_section']},"
        f" rope base {arch['text_rope_theta']}.",
        f"- Parameters: {log['parameters']['total']:,} (vision tower incl. merger {log['parameters']['vision_tower']:,},"
        f" LM incl. head {log['parameters']['language_model']:,}); weights file {log['weights_megabytes']} MB.",
        "- Tokenizer: byte-level BPE trained offline; every prompt and answer word of every task is a single",
        "  token with and without a leading space (`tasks/vocabulary.py`).",
        "",
        "## Training recipe",
        "",
        f"1. Vision stage ({config['vision_steps']} steps, batch {config['vision_batch']}, AdamW lr {config['vision_lr']}):"
        " the vision tower and merger learn",
        "   from dense per-token labels on rendered images of all tasks: what occupies each LM-token cell",
        "   (background or which colour/shape/object); for every cell, the ordinal (1st/2nd/3rd along the",
        "   line) of the object whose strip holds it, background included (the paper's \"strips\"); and for",
        "   object cells which object is the nearest neighbour on each side along its row/column (a dense",
        f"   relational caption, its loss weighted {config.get('neighbour_loss_weight', 1.0):g}x). The linear heads are discarded.",
        f"2. Cache: the vision blocks are frozen; their output (`vision.out`) is computed once for {config['cache_images']}",
        "   training images.",
        f"3. Language stage ({config['language_steps']} steps of {config['language_images']} images with all their questions, AdamW lr {config['language_lr']}):"
        " projector (merger) and",
        "   LM learn to answer the questions (cross-entropy on the answer token only) from the cached features,",
        "   called with the same chat template, system prompt and M-RoPE positions as at evaluation. The",
        "   question-independent prefix (system turn + image) runs once per image and its keys/values serve",
        "   every question about that image (same logits as the full forward pass, about a third of the cost).",
        f"   Curriculum: the first {config['two_object_fraction']:.0%} of steps use two-object images, then all images.",
        "",
        f"Seed {log['seed']}; the data of every step is a pure function of (seed, stage, step), so runs are",
        f"deterministic and resumable (`--resume`, checkpoints every {config['checkpoint_every']} steps). Threads: {config['threads']}.",
        "",
        "## Timings (this run)",
        "",
        *_timing_rows(log["timings"]),
        "",
        f"Total: {total_seconds / 60:.1f} minutes.",
        "",
        "## Loss curves (mean over windows of steps)",
        "",
        f"- vision (identity + ordinal + neighbour cross-entropy): {_curve(log['history']['vision'], 'loss')}",
        f"- vision identity-head batch accuracy: {_curve(log['history']['vision'], 'identity_acc')}",
        f"- vision strip-ordinal-head batch accuracy (cells inside a strip): {_curve(log['history']['vision'], 'ordinal_acc')}",
        f"- vision neighbour-head batch accuracy: {_curve(log['history']['vision'], 'neighbour_acc')}"
        " (about 0.7 of neighbour labels are 'none'; a head stuck near 0.7 has not learnt relations)",
        *_present_curve(log["history"]["vision"]),
        f"- language (answer cross-entropy): {_curve(log['history']['language'], 'loss')}",
        f"- language batch accuracy: {_curve(log['history']['language'], 'accuracy')}",
        "",
        "The full per-step history, configuration and package versions are in `training_log.json`.",
        "",
        "## Limitations",
        "",
        "A few million parameters trained for minutes on synthetic images: it knows only these tasks' words and",
        "pictures. It exists so that every experiment of spatialmech runs out of the box and asks the paper's",
        "questions of a real Qwen2-VL; its numbers are not the 7B model's.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(path: Path, log: dict[str, Any]) -> Path:
    return atomic_write_text(path, render_model_card(log))
