"""Checks the experiment commands make before a model loads (`spatialmech run` / `eval` live in
`spatialmech.commands`, a thin layer over the Python API)."""

from __future__ import annotations

import argparse
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.experiments.runner import CUSTOM_TASK


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
