"""`spatialmech train-default --out DIR`: retrain the bundled model from scratch, deterministically.

The OpenMP wait policy defaults to active (worker threads spin between the many small parallel
regions of a tiny model's step) before torch loads its thread pool: on an otherwise idle 2-core machine
a language-stage step took 0.85-0.88 s against 1.10-1.14 s with passive waiting. On a machine busy
with other work, spinning threads fight it for the cores: run with OMP_WAIT_POLICY=PASSIVE there.
The policy changes speed only, not the numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from spatialmech.errors import UserInputError  # noqa: E402
from spatialmech.io import ensure_writable_dir  # noqa: E402


def train_default_command(args: argparse.Namespace) -> int:
    from spatialmech.training.recipe import CHECKPOINT_DIR, LOG_FILE, TrainingConfig, quick_config, train

    if args.seed < 0:
        raise UserInputError(f"--seed {args.seed} must be non-negative", "pass a seed such as 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file", "pass a folder for the checkpoint")
    if args.resume and not (out / CHECKPOINT_DIR / "state.json").is_file():
        if (out / LOG_FILE).is_file():
            print(f"{out} already holds a finished model ({LOG_FILE}); nothing to resume")
            return 0
        raise UserInputError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}", "run without --resume to start training")
    ensure_writable_dir(out)
    config = quick_config(args.seed) if args.quick else TrainingConfig(seed=args.seed)
    start = time.time()
    log = train(config, out, resume=args.resume)
    print(f"trained in {(time.time() - start) / 60:.1f} min -> {out} (weights {log['weights_megabytes']} MB)")
    for task, metrics in log.get("held_out", {}).items():
        line = f"  {task}: accuracy {metrics['accuracy']:.4f} (n={metrics['n']}, chance {metrics['chance']:.2f})"
        unseen = metrics.get("held_out_combinations")
        if unseen:
            line += f"; unseen combinations {unseen['accuracy']:.4f} (n={unseen['n']})"
        print(line)
    return 0
