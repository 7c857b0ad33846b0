"""The `spatialmech` command line (SPEC section 6).

This module only parses arguments and maps errors to exit codes; each command's work lives in the
layer that owns it (tasks, models, experiments, report, training). Handlers are imported lazily so
`--help` is instant and a command whose machinery is missing says so clearly (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from spatialmech import __version__
from spatialmech.catalog import EXPERIMENTS
from spatialmech.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, NotAvailableError, SpatialmechError
from spatialmech.tasks import TASKS

# command -> "module:function" taking the parsed namespace and returning an exit code.
HANDLERS: dict[str, str] = {
    "tasks": "spatialmech.tasks.commands:list_tasks_command",
    "render": "spatialmech.tasks.commands:render_command",
    "models": "spatialmech.models.commands:models_command",
    "eval": "spatialmech.commands:eval_command",
    "run": "spatialmech.commands:run_command",
    "reproduce": "spatialmech.pipeline.commands:reproduce_command",
    "report": "spatialmech.report.commands:report_command",
    "train-default": "spatialmech.training.commands:train_default_command",
}

TASK_NAMES = TASKS  # one registry per concept: tasks in spatialmech.tasks, experiments in spatialmech.catalog
EXPERIMENT_NAMES = EXPERIMENTS
DATA_HELP = "data root for whatsup / coco-spatial, or the FILE.jsonl / FILE.csv of --task custom"


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="bundled", help="checkpoint folder or hub id (default: the bundled tiny Qwen2-VL)")
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--device-map", default=None, choices=["auto", "balanced", "sequential"],
                        help="split the model over GPUs, CPU and disk with accelerate (needs the distributed extra)")
    parser.add_argument("--max-memory", default=None, metavar="DEVICE=SIZE[,...]",
                        help="with --device-map: memory per device, e.g. cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB")
    parser.add_argument("--offload-folder", default=None, metavar="DIR", help="with --device-map: where weights that fit nowhere go")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (default: the authors' per family: float32 Qwen2-VL and Gemma3, bfloat16 Pixtral; others the checkpoint's)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow checkpoints that ship their own code (off by default)")
    parser.add_argument("--batch-size", type=int, default=8, help="pictures per forward pass, every question about them included, at most 2x that many rows (default: 8)")
    _add_grid_option(parser)


def _add_grid_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grid", type=int, default=None, metavar="N",
        help="draw synthetic stimuli on N x N image tokens (default: the family's preset: Qwen2-VL 12, Gemma3 16, "
        "Pixtral 15; else the processor's largest square); capped, with a warning, where the processor cannot keep it",
    )


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="compute the units on a local Ray cluster of N workers, each loading the model once (needs the distributed extra)")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="compute the units on an existing Ray cluster (e.g. HEAD:6379 from `ray start --head`); "
                       "--out must be on a filesystem every node sees")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spatialmech",
        description="Find where and how a vision-language model computes spatial relations, and fix them.",
    )
    parser.add_argument("--version", action="version", version=f"spatialmech {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("reproduce", help="run every experiment of the paper and write report.html")
    _add_model_options(p)
    p.add_argument("--out", default="runs/reproduce", help="output folder (default: runs/reproduce)")
    p.add_argument("--quick", action="store_true", help="small-sample run (minutes on the bundled model)")
    p.add_argument("--protocol", choices=["paper", "strict", "both"], default="paper",
                   help="paper: the authors' code on every point (default); strict: our stricter amplification; both: each, side by side")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run, skipping finished work")
    p.add_argument("--data", default=None, help="data root for whatsup / coco-spatial (optional)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, metavar="STEP[,STEP]",
                   help="run only these steps of the plan, by folder (criss-cross-strip) or experiment (behavior)")
    _add_cluster_options(p)

    p = sub.add_parser("run", help="run one experiment")
    p.add_argument("experiment", choices=EXPERIMENT_NAMES)
    _add_model_options(p)
    p.add_argument("--task", default=None, help=f"task ({', '.join(TASK_NAMES)}); default depends on the experiment")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--n", type=int, default=None, help="number of items / pairs (default: the paper's)")
    p.add_argument("--layers", default=None, help="layers to sweep, e.g. '0-11' or '0,4,8' (default: all)")
    p.add_argument("--region", choices=["object", "strip"], default="object", help="criss-cross: swap object tokens or whole strips")
    p.add_argument("--pairs", default=None, metavar="FILE",
                   help="last-token / criss-cross: the authors' counterfactual-pair JSON (last_token_exp/ or "
                        "criss_cross_patching/cf_pairs/<task>.json), run as given under --protocol paper")
    p.add_argument("--out", default="runs", help="output folder (default: runs)")
    p.add_argument("--resume", action="store_true", help="skip finished units of an interrupted run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-probe", default=None, help="amplify: also save the fitted probes to this safetensors file")
    p.add_argument("--protocol", choices=["paper", "strict"], default="paper",
                   help="paper: the authors' code on every point (default); strict: our stricter variants (amplify)")
    p.add_argument("--variant", choices=["projection", "add"], default="projection", help="amplify: projection (authors' code) or add-direction (paper text)")
    _add_cluster_options(p)

    p = sub.add_parser("eval", help="accuracy of a model on a task (the behavior experiment)")
    _add_model_options(p)
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--n", type=int, default=None, help="number of items (default: the whole task)")
    p.add_argument("--out", default=None, help="also write result.json here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amplify", default=None, help="apply a saved amplification probe (from run amplify --save-probe), or the folder of the authors' *_probe_<axis>_{W,b}_FP32.npy arrays")
    p.add_argument("--alpha", type=float, default=None, help="amplification strength with --amplify")
    p.add_argument("--protocol", choices=["paper", "strict"], default="paper",
                   help="paper: the authors' code on every point (default); strict: our stricter variants (amplify)")

    sub.add_parser("tasks", help="list the tasks")

    p = sub.add_parser("render", help="write a task's stimuli as PNGs plus items.jsonl")
    p.add_argument("task", choices=TASK_NAMES)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=None, help="number of items (default: all)")
    p.add_argument("--model", default=None, help="draw on this model's token grid (default: the Qwen geometry)")
    p.add_argument("--geometry", default=None, help="named geometry preset (qwen, gemma, pixtral) instead of --model")
    _add_grid_option(p)
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--seed", type=int, default=0)

    sub.add_parser("models", help="list supported model families and the bundled model")

    p = sub.add_parser("train-default", help="retrain the bundled tiny Qwen2-VL from scratch")
    p.add_argument("--out", required=True, help="output folder for weights, tokenizer and MODEL_CARD.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--quick", action="store_true", help="a few steps of every stage (smoke test)")

    p = sub.add_parser("report", help="rebuild the HTML report from a run folder's result files")
    p.add_argument("run_dir", help="folder written by reproduce or run")
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, function_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("spatialmech"):
            raise NotAvailableError(
                f"this command is not available in this install ({exc.name} is missing)",
                "update spatialmech to a release that includes it",
            ) from exc
        raise
    return getattr(module, function_name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        handler = _resolve(HANDLERS[args.command])
        return int(handler(args) or 0)
    except SpatialmechError as exc:
        print(f"spatialmech {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"spatialmech {args.command}: interrupted; finished work is saved, rerun with --resume", file=sys.stderr)
        return 130
    except Exception as exc:  # internal failure: one line, full traceback only on request
        if os.environ.get("SPATIALMECH_DEBUG"):
            raise
        print(
            f"spatialmech {args.command}: internal error: {type(exc).__name__}: {exc} (set SPATIALMECH_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
