"""`spatialmech run` and `spatialmech eval`: the command line as a thin layer over `spatialmech.api`.

Flags, checks and printed lines are the CLI's; the work is `api.run`. Bad --out, --task and --data
(custom rows included) are caught before a model loads.
"""

from __future__ import annotations

import argparse
import sys
import time

from spatialmech import api
from spatialmech.catalog import check_batch_size
from spatialmech.experiments.commands import check_before_loading
from spatialmech.experiments.runner import experiment_module
from spatialmech.models.registry import load_adapter_from_args


def _check_custom(args: argparse.Namespace, experiment: str) -> None:
    """With --task custom: read every row now, refuse an experiment the items cannot feed, say what they run."""
    if args.task == api.CustomTask.name:
        task = api.load_task(api.CustomTask.name, data=args.data)
        api.require_support(experiment, task)
        print(api.describe_support(task), file=sys.stderr)


def _model(args: argparse.Namespace) -> api.Model:
    return api.Model(load_adapter_from_args(args), name=str(args.model))


def run_command(args: argparse.Namespace) -> int:
    check_batch_size(args.batch_size, args.n)
    check_before_loading(args, experiment_module(args.experiment))
    _check_custom(args, args.experiment)
    from spatialmech.pipeline.distributed import cluster_from_args

    with cluster_from_args(args) as cluster:  # --workers / --ray-address: units on Ray workers (None: here)
        model = _model(args)
        start = time.time()
        result = api.run(
            args.experiment, model, task=args.task, n=args.n, out=args.out, data=args.data, seed=args.seed,
            batch_size=args.batch_size, resume=args.resume, progress=True, executor=cluster,
            layers=args.layers, region=args.region, variant=args.variant, save_probe=args.save_probe,
            protocol=args.protocol,
            **({"pairs": args.pairs} if args.pairs is not None else {}),
        )
    assert result.folder is not None
    print(f"{args.experiment} on {args.model} ({result.task}) finished in {time.time() - start:.1f}s: {result.folder / 'result.json'}")
    for key, value in result.metrics.items():
        if isinstance(value, (int, float, str)) or value is None:
            print(f"  {key}: {value}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """`spatialmech eval --task T`: print accuracy and n (and write OUT/behavior/result.json with --out)."""
    from spatialmech.experiments.behavior import config_from

    options = {"amplify": getattr(args, "amplify", None), "alpha": getattr(args, "alpha", None), "protocol": getattr(args, "protocol", None)}
    config_from({"n": args.n, **options})  # fail fast on bad options before loading a model
    check_batch_size(args.batch_size, args.n)
    check_before_loading(args)
    _check_custom(args, "behavior")
    start = time.time()
    model = _model(args)
    result = api.run("behavior", model, task=args.task, n=args.n, out=args.out, data=args.data, seed=args.seed,
                     batch_size=args.batch_size, progress=args.out is not None, **options)
    metrics = result.metrics
    amplified = f", amplified with {args.amplify} at alpha {args.alpha}" if args.amplify else ""
    print(f"{args.task}: accuracy {metrics['accuracy']:.4f} on n={metrics['n']} items "
          f"(chance {metrics['chance']:.2f}{amplified}) [model {args.model}, {time.time() - start:.1f}s]")
    if result.folder is not None:
        print(f"wrote {result.folder / 'result.json'}")
    return 0
