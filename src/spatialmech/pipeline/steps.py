"""The plan of `spatialmech reproduce`: which experiment runs on which task, into which folder, at
which size (the paper's, or the quick run's), and which real-data tasks the user's `--data` holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spatialmech.errors import UserInputError

SYNTHETIC_TASKS = ("squares", "shapes", "objects", "scenes")
DATA_TASKS = ("whatsup", "coco-spatial")

# Items / pairs per step in a --quick run: measured so that the whole quick run on the bundled model
# takes well under 5 minutes on 2 CPU cores (see README). None in a full run = the paper's sizes.
QUICK_SIZES: dict[str, int] = {
    "behavior": 48,
    "last-token": 8,
    "probe": 24,
    "criss-cross": 8,
    "ablate-vision": 24,
    "backup": 8,
    "amplify": 32,
}
# A --quick amplify sweeps a few alphas (the full run: the paper's 0..15).
QUICK_ALPHAS = [0, 2, 4, 8]


@dataclass(frozen=True)
class Step:
    """One experiment on one task, written to `OUT/<folder>`."""

    folder: str
    experiment: str
    task: str | None  # None: the experiment's DEFAULT_TASK
    options: dict[str, Any] = field(default_factory=dict)
    what: str = ""


def build_plan(quick: bool, data_tasks: Sequence[str] = (), sizes: Mapping[str, int] | None = None,
               protocol: str = "paper") -> list[Step]:
    """The steps of a reproduce run, in the order of the paper's sections.

    behavior on every synthetic task (and each available real-data task); last-token; probe;
    criss-cross with object-only and whole-strip swaps (two folders); ablate-vision; backup; amplify on
    `scenes` (and on `coco-spatial` when its data is there). `protocol` "both": the steps run under the
    paper protocol, and amplify once more under strict (folders `amplify-strict`, ...), side by side.
    """
    chosen = dict(QUICK_SIZES if quick else {})
    chosen.update(sizes or {})
    main = "paper" if protocol == "both" else protocol

    def opts(experiment: str, **extra: Any) -> dict[str, Any]:
        return {"n": chosen.get(experiment), "protocol": main, **extra}

    amplify = opts("amplify", alphas=list(QUICK_ALPHAS)) if quick else opts("amplify")
    steps = [Step(f"behavior-{task}", "behavior", task, opts("behavior"), f"accuracy on {task}")
             for task in (*SYNTHETIC_TASKS, *data_tasks)]
    steps += [
        Step("last-token", "last-token", "squares", opts("last-token"), "last-token residual patching per layer"),
        Step("probe", "probe", "squares", opts("probe"), "ordinal-position probe on object tokens, applied to every token"),
        *([Step("probe-whatsup", "probe", "whatsup", opts("probe"), "ordinal-position probe on What'sUp composites")]
          if "whatsup" in data_tasks else []),
        Step("criss-cross", "criss-cross", "squares", opts("criss-cross", region="object"), "swap object tokens only"),
        Step("criss-cross-strip", "criss-cross", "squares", opts("criss-cross", region="strip"), "swap whole strips"),
        Step("ablate-vision", "ablate-vision", None, opts("ablate-vision"), "object-alone + blank-background ablation"),
        Step("backup", "backup", "squares", opts("backup"), "object-token swaps under the vision ablation"),
        Step("amplify", "amplify", "scenes", amplify, "ordering amplification on scenes"),
    ]
    if "coco-spatial" in data_tasks:
        steps.append(Step("amplify-coco-spatial", "amplify", "coco-spatial", amplify, "ordering amplification on COCO-spatial"))
    if protocol == "both":
        steps += [Step(f"{s.folder}-strict", s.experiment, s.task, {**s.options, "protocol": "strict"}, f"{s.what} (strict protocol)")
                  for s in steps if s.experiment == "amplify"]
    return steps


def available_data_tasks(data_root: str | None, geometry: Any = None) -> tuple[list[str], dict[str, str]]:
    """Which real-data tasks `data_root` holds (loadable, at least one item), and why the others are not.
    The geometry only shapes the items, not whether the data is there (None: the Qwen preset)."""
    if data_root is None:
        return [], {}
    root = Path(data_root)
    if not root.is_dir():
        raise UserInputError(f"--data {data_root} is not a folder", "pass the folder holding the What'sUp / COCO data")
    from spatialmech.tasks import get_task

    found, missing = [], {}
    for name in DATA_TASKS:
        try:
            task = get_task(name, geometry=geometry, data_root=str(root))
            if not task.items(1, seed=0):
                raise UserInputError(f"task {name} has no items in {root}", "check the data folder")
            found.append(name)
        except UserInputError as exc:
            missing[name] = str(exc)
    if not found:
        reasons = " | ".join(f"{name}: {why}" for name, why in missing.items())
        raise UserInputError(f"--data {data_root} holds neither What'sUp nor COCO-spatial data ({reasons})",
                             "point --data at the folder described in the README, or leave --data out")
    return found, missing




def select_steps(plan: Sequence[Step], only: str | None) -> list[Step]:
    """`--only STEP[,STEP...]`: the steps named by folder (`criss-cross-strip`) or experiment (`behavior`:
    every behavior step), in plan order; None = the whole plan. An unknown name is a one-line error."""
    if only is None:
        return list(plan)
    names = [name.strip() for name in only.split(",") if name.strip()]
    known = {step.folder for step in plan} | {step.experiment for step in plan}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UserInputError(f"--only {only!r} names no step of this plan ({', '.join(unknown) or 'empty'})",
                             f"use step folders or experiments: {', '.join(step.folder for step in plan)}")
    return [step for step in plan if step.folder in names or step.experiment in names]
