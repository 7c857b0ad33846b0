"""`spatialmech run EXPERIMENT`: one entry point for every experiment module.

Each experiment module defines `NAME`, `DEFAULT_TASK`, `TASKS` (tasks it accepts),
`config_from(options) -> dict` (its configuration, from CLI options with the paper's defaults) and
`run(ctx: ExperimentContext) -> ExperimentOutput`. This module loads the model and task once, builds
the context, runs, and writes the result contract.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from spatialmech.catalog import check_batch_size
from spatialmech.errors import UserInputError
from spatialmech.experiments.runner import experiment_module, load_result, run_experiment
from spatialmech.models.registry import load_adapter_from_args


def check_before_loading(args: argparse.Namespace, module: Any | None = None) -> None:
    """Catch bad --out, --task and --data before spending minutes loading a large model."""
    from spatialmech.io import ensure_writable_dir
    from spatialmech.tasks import TASKS as TASK_NAMES
    from spatialmech.tasks import get_task

    if getattr(args, "out", None) is not None:
        ensure_writable_dir(args.out)
    task = getattr(args, "task", None) or (module.DEFAULT_TASK if module is not None else None)
    if module is not None and task not in module.TASKS:
        raise UserInputError(f"experiment {args.experiment} does not run on task {task!r}", f"use one of {', '.join(module.TASKS)}")
    if task in TASK_NAMES:  # experiments may also accept a group name (e.g. ablate-vision's "all")
        get_task(task, data_root=getattr(args, "data", None)).check_data()


def run_command(args: argparse.Namespace) -> int:
    check_batch_size(args.batch_size, args.n)
    check_before_loading(args, experiment_module(args.experiment))
    adapter = load_adapter_from_args(args)
    options = {"n": args.n, "layers": args.layers, "region": args.region, "variant": args.variant,
               "save_probe": args.save_probe}
    start = time.time()
    result_path = run_experiment(
        args.experiment, adapter, out_root=args.out, task=args.task, options=options, seed=args.seed,
        resume=args.resume, batch_size=args.batch_size, data_root=args.data, model_label=args.model,
    )
    result = load_result(result_path.parent)
    print(f"{args.experiment} on {args.model} ({result['task']}) finished in {time.time() - start:.1f}s: {result_path}")
    for key, value in result["metrics"].items():
        if isinstance(value, (int, float, str)) or value is None:
            print(f"  {key}: {value}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """`spatialmech eval --task T`: print accuracy and n (and write OUT/behavior/result.json with --out)."""
    from spatialmech.experiments.behavior import NAME, amplification, config_from, get_task_for, run_behavior

    options = {"n": args.n, "amplify": getattr(args, "amplify", None), "alpha": getattr(args, "alpha", None)}
    config = config_from(options)  # fail fast on bad options before loading a model
    check_batch_size(args.batch_size, args.n)
    check_before_loading(args)
    start = time.time()
    adapter = load_adapter_from_args(args)
    if args.out is not None:
        path = run_experiment(
            NAME, adapter, out_root=args.out, task=args.task, options=options, seed=args.seed,
            batch_size=args.batch_size, data_root=args.data, model_label=args.model,
        )
        metrics = load_result(path.parent)["metrics"]
    else:
        task = get_task_for(adapter, args.task, args.data)
        metrics = run_behavior(adapter, task, n=args.n, seed=args.seed, batch_size=args.batch_size,
                               logits_fn=amplification(adapter, config))
        path = None
    amplified = f", amplified with {args.amplify} at alpha {args.alpha}" if args.amplify else ""
    print(f"{args.task}: accuracy {metrics['accuracy']:.4f} on n={metrics['n']} items "
          f"(chance {metrics['chance']:.2f}{amplified}) [model {args.model}, {time.time() - start:.1f}s]")
    if path is not None:
        print(f"wrote {path}")
    return 0
