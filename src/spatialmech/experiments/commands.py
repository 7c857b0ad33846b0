"""`spatialmech run EXPERIMENT`: one entry point for every experiment module.

Each experiment module defines `NAME`, `DEFAULT_TASK`, `TASKS` (tasks it accepts),
`config_from(options) -> dict` (its configuration, from CLI options with the paper's defaults) and
`run(ctx: ExperimentContext) -> ExperimentOutput`. This module loads the model and task once, builds
the context, runs, and writes the result contract.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.experiments.runner import ExperimentContext

CUSTOM_TASK = "custom"  # the user's own data (--data FILE): any experiment whose needs its items carry

# experiment name -> module under spatialmech.experiments
EXPERIMENT_MODULES: dict[str, str] = {
    "behavior": "behavior",
    "last-token": "last_token",
    "probe": "probe",
    "criss-cross": "criss_cross",
    "ablate-vision": "ablate_vision",
    "backup": "backup",
    "amplify": "amplify",
}


def experiment_module(name: str):
    if name not in EXPERIMENT_MODULES:
        raise UserInputError(f"unknown experiment {name!r}", f"use one of {', '.join(EXPERIMENT_MODULES)}")
    return importlib.import_module(f"spatialmech.experiments.{EXPERIMENT_MODULES[name]}")


def data_hashes(task_name: str, data_root: str | None) -> dict[str, Any]:
    """Hash the real data files a task reads, so reports refuse to mix results from different data."""
    from spatialmech.provenance import file_sha256

    if data_root is None:
        return {"data_root": None}
    from spatialmech.tasks.whatsup import SEARCH_FOLDERS

    root = Path(data_root)
    if root.is_file():  # custom data (--task custom --data FILE): the items file itself
        return {"data_root": str(root.resolve()), "files": {root.name: file_sha256(root)}}
    hashes: dict[str, str] = {}
    # The loaders look in the root and in data/ (the What'sUp repository layout); key by the name they
    # look for, so results from either layout compare. The first folder wins, as in the loaders.
    for folder in SEARCH_FOLDERS:
        base = root / folder
        for path in sorted(base.glob("*.json")) + sorted(base.glob("annotations/*.json")):
            name = str(path.relative_to(base))
            if path.is_file() and name not in hashes:
                hashes[name] = file_sha256(path)
    return {"data_root": str(root.resolve()), "files": hashes}


def run_experiment(
    name: str,
    adapter: Any,
    *,
    out_root: str | Path,
    task: str | None = None,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    batch_size: int = 8,
    data_root: str | None = None,
    model_label: str | None = None,
    progress: bool = True,
    folder: str | None = None,
) -> Path:
    """Run one experiment on an already-loaded adapter; return the path of its result.json.

    `folder` names the output folder under `out_root` (default: the experiment's name), so one run can
    hold the same experiment twice (e.g. `criss-cross` and `criss-cross-strip`).
    """
    module = experiment_module(name)
    task_name = task or module.DEFAULT_TASK
    if task_name not in module.TASKS and task_name != CUSTOM_TASK:
        raise UserInputError(f"experiment {name} does not run on task {task_name!r}", f"use one of {', '.join(module.TASKS)}")
    config = module.config_from(dict(options or {}), adapter)
    ctx = ExperimentContext(
        experiment=name,
        adapter=adapter,
        task_name=task_name,
        out_root=Path(out_root),
        config=config,
        seed=seed,
        resume=resume,
        batch_size=batch_size,
        data_root=data_root,
        progress=progress,
        input_hashes=data_hashes(task_name, data_root),
        folder=folder,
    )
    ctx.prepare()
    output = module.run(ctx)
    return ctx.finish(output, model_label=model_label)


def check_before_loading(args: argparse.Namespace, module: Any | None = None) -> None:
    """Catch bad --out, --task and --data before spending minutes loading a large model."""
    from spatialmech.io import ensure_writable_dir
    from spatialmech.tasks import TASKS as TASK_NAMES
    from spatialmech.tasks import get_task

    if getattr(args, "out", None) is not None:
        ensure_writable_dir(args.out)
    task = getattr(args, "task", None) or (module.DEFAULT_TASK if module is not None else None)
    if module is not None and task not in module.TASKS and task != CUSTOM_TASK:
        raise UserInputError(f"experiment {args.experiment} does not run on task {task!r}", f"use one of {', '.join(module.TASKS)}")
    if task in TASK_NAMES:  # experiments may also accept a group name (e.g. ablate-vision's "all")
        get_task(task, data_root=getattr(args, "data", None)).check_data()


def load_adapter_from_args(args: argparse.Namespace):
    import torch

    from spatialmech.models import load_model
    from spatialmech.models.placement import placement_from_args

    dtype = getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
    return load_model(args.model, dtype=dtype, device=placement_from_args(args), trust_remote_code=args.trust_remote_code,
                      grid=getattr(args, "grid", None))


def run_command(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size {args.batch_size} must be at least 1", "pass a positive batch size")
    if args.n is not None and args.n < 1:
        raise UserInputError(f"--n {args.n} must be at least 1", "pass a positive number of items")
    check_before_loading(args, experiment_module(args.experiment))
    adapter = load_adapter_from_args(args)
    options = {"n": args.n, "layers": args.layers, "region": args.region, "variant": args.variant,
               "save_probe": args.save_probe}
    start = time.time()
    result_path = run_experiment(
        args.experiment, adapter, out_root=args.out, task=args.task, options=options, seed=args.seed,
        resume=args.resume, batch_size=args.batch_size, data_root=args.data, model_label=args.model,
    )
    from spatialmech.experiments.runner import load_result

    result = load_result(result_path.parent)
    print(f"{args.experiment} on {args.model} ({result['task']}) finished in {time.time() - start:.1f}s: {result_path}")
    for key, value in result["metrics"].items():
        if isinstance(value, (int, float, str)) or value is None:
            print(f"  {key}: {value}")
    return 0
