"""How long a reproduce step will take: a cost model per experiment in forward-pass equivalents
(`estimate_forwards`), multiplied by one timed forward pass of the loaded model (`time_forward`)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _config_n(config: Mapping[str, Any], default: int) -> int:
    value = config.get("n")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


@dataclass(frozen=True)
class TaskFacts:
    """What the time estimate needs to know about a step's task."""

    size: int  # items in the task (an unbounded generator: its default count)
    forced_choice: bool = False  # strict two-order scoring: two forwards per item
    task_count: int = 1  # "all" = the three grid tasks
    unbounded: bool = False  # generated on demand (scenes)


def estimate_forwards(experiment: str, config: Mapping[str, Any], num_layers: int, task: TaskFacts) -> float:
    """A step's cost in single-item forward passes: a model of each experiment's work, calibrated on
    CPU time per step of quick runs on the bundled model's architecture.

    Patching sweeps reuse the clean/source runs, so a layer costs about 0.6 of a forward per pair (the
    last-token patch recomputes one token per layer: ~0.1); keeping only correctly answered pairs
    scores clean and counterfactual inputs (~3 forwards per kept pair for a model that is mostly right).
    """
    layers = len(config.get("layers") or []) or num_layers
    strict = 2 if task.forced_choice else 1
    filtering = 3 if config.get("filter_correct", True) else 0
    if experiment == "behavior":
        return _config_n(config, task.size) * strict
    if experiment == "last-token":  # n pairs per direction under the paper protocol (four directions)
        directions = 4 if config.get("per") == "direction" else 1
        return directions * _config_n(config, 50) * (filtering + 2 + 0.1 * layers)
    if experiment == "criss-cross":
        return _config_n(config, 50) * (filtering + 2 + 0.6 * (layers + 1))
    if experiment == "backup":  # plus the ablation's alone/blank images, for both runs
        return _config_n(config, 50) * (1.5 * filtering + 4 + 0.6 * (layers + 1))
    if experiment == "probe":
        images = config.get("images_per_axis") or _config_n(config, 120)
        return 2 * 1.2 * int(images) + 5
    if experiment == "ablate-vision":  # four conditions per item; its pictures are encoded once (~0.4 a forward per extra condition)
        items = _config_n(config, 0) * task.task_count or task.size
        return 2.2 * items
    if experiment == "amplify":  # probe features + probe-item scoring + baseline + 2 directions x alphas
        n = _config_n(config, 300 if task.unbounded else task.size // 2)
        alphas = len(config.get("alphas") or range(16))
        if config.get("protocol") == "paper":  # baseline once; features of the right items; only failed orders re-run
            return n * (strict + 0.5 + 2 * 0.75 * (alphas - 1))  # (about half the items fail, 1.5 orders each)
        return n * (1 + 2 * strict + 2 * strict * (alphas - 1))
    return 100.0


def time_forward(adapter: Any, batch_size: int, repeats: int = 2) -> float:
    """Seconds per item of encode+forward on a batch of squares items: the best of `repeats` timings
    after a warm-up batch (the first forward of a process pays one-off allocation costs)."""
    from spatialmech.experiments.common import encode_items
    from spatialmech.tasks import get_task

    task = get_task("squares", geometry=adapter.grid_spec())
    items = task.items(max(1, min(batch_size, 8)), seed=0)
    adapter.forward(encode_items(adapter, task, items))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        adapter.forward(encode_items(adapter, task, items))
        best = min(best, time.perf_counter() - start)
    return best / len(items)


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def task_facts(task_name: str, adapter: Any, data_root: str | None) -> TaskFacts:
    """Size and scoring of a task, for the time estimate ("all": the three grid tasks)."""
    from spatialmech.tasks import get_task

    if task_name == "all":
        parts = [task_facts(name, adapter, data_root) for name in ("squares", "shapes", "objects")]
        return TaskFacts(sum(p.size for p in parts), False, len(parts))
    task = get_task(task_name, geometry=adapter.grid_spec(), data_root=data_root)
    first = task.items(1, seed=0)
    forced = bool(first and first[0].options and (first[0].meta or {}).get("prompt_swapped"))
    if hasattr(task, "__len__"):
        return TaskFacts(len(task), forced)
    return TaskFacts(int(getattr(task, "default_n", 0) or 0), forced, unbounded=True)
