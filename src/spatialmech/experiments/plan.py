"""Experiments as plans of independent units, and the seam where an executor plugs in.

Every experiment module is a plan: besides `config_from` it defines three functions,

    plan(ctx) -> Iterator[Stage]         the work, stage by stage. A stage's unit keys may depend on
                                         the *results* of earlier stages (read with `ctx.load_unit`),
                                         never on anything else computed in this process; units within
                                         one stage are independent and may run in any order, anywhere.
    compute_unit(ctx, key) -> Mapping    one unit: a pure function of the run's config (on `ctx`) and
                                         the key (plus earlier stages' saved results). It returns
                                         JSON-able data; `run_unit` saves it atomically.
    combine(ctx) -> ExperimentOutput     metrics, tables and figures from the saved unit results only.

Expensive per-process objects (the task, an `Engine`, a vision ablation) are built on demand with
`ctx.shared(name, factory)`, once per process, so a worker that runs many units pays for them once.

The executor seam: `Executor.run(stage, run_unit)` must call `run_unit(key)` once for every key of
`stage` (in any order, in any process) and return when all are saved. `InProcessExecutor` (the
default) runs them here, in order, reversed or shuffled. A distributed executor ships each key to a
worker that holds a loaded adapter and computes it there,

    ctx = open_context(out_dir, adapter)        # rebuilt from OUT/<folder>/run_config.json alone
    compute_unit(ctx, unit_key)                 # the unit's value, computed on the worker

which needs only the run folder (on a shared filesystem) and the adapter, never this process's state;
the value comes back and this process saves it with `run_unit(key, computed=value)`, so every unit
file is written by the same code (`ctx.unit`) whatever ran it (`spatialmech.pipeline.distributed`).
There is no other way to run an experiment: one code path, whoever executes it. An executor may also
define `bind(ctx) -> Executor`, called once per run before anything else, to learn the run it serves
(its folder).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, experiment_module

ORDERS = ("given", "reversed", "shuffled")


@dataclass(frozen=True)
class Stage:
    """One step of a plan: units whose keys are known once the earlier stages are done."""

    name: str
    keys: tuple[str, ...]
    desc: str = ""  # progress-bar label


class UnitRunner(Protocol):
    """Computes and saves one unit (idempotent: a saved unit is read back, not recomputed); given
    `computed` (the value a worker computed elsewhere) it saves that instead of computing here."""

    def __call__(self, key: str, computed: Mapping[str, Any] | None = None) -> Mapping[str, Any]: ...


class Executor(Protocol):
    """Runs every unit of one stage through `run_unit`."""

    def run(self, stage: Stage, run_unit: UnitRunner) -> None: ...


class InProcessExecutor:
    """The default executor: this process, one unit after another, in the given, reversed or a
    seeded shuffled order (the last two are how tests check that units are independent)."""

    def __init__(self, order: str = "given", seed: int = 0, progress: bool = False):
        if order not in ORDERS:
            raise ValueError(f"order {order!r} is not one of {ORDERS}")
        self.order, self.seed, self.progress = order, seed, progress

    def ordered(self, keys: Sequence[str]) -> list[str]:
        keys = list(keys)
        if self.order == "reversed":
            keys.reverse()
        elif self.order == "shuffled":
            random.Random(self.seed).shuffle(keys)
        return keys

    def run(self, stage: Stage, run_unit: UnitRunner) -> None:
        keys: Any = self.ordered(stage.keys)
        if self.progress and len(keys) > 1:
            from tqdm import tqdm

            keys = tqdm(keys, desc=stage.desc or stage.name, unit="unit", leave=False)
        for key in keys:
            run_unit(key)


def has_plan(module: Any) -> bool:
    return all(hasattr(module, name) for name in ("plan", "compute_unit", "combine"))


def run_unit(ctx: ExperimentContext, experiment_name: str, unit_key: str,
             computed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Compute (or read back) and save one unit of `experiment_name`; its saved result. `computed`: the
    unit's value from a worker, saved as is (a unit saved meanwhile is read back, not overwritten)."""
    if computed is not None:
        return ctx.unit(unit_key, lambda: computed)
    module = experiment_module(experiment_name)
    return ctx.unit(unit_key, lambda: module.compute_unit(ctx, unit_key))


def open_context(out_dir: str | Path, adapter: Any, progress: bool = False) -> ExperimentContext:
    """The context of a prepared run folder, rebuilt from its manifest, for a worker in another process."""
    return ExperimentContext.from_manifest(Path(out_dir), adapter, progress=progress)


def execute(ctx: ExperimentContext, module: Any, executor: Executor | None = None) -> ExperimentOutput:
    """Run an experiment: its plan stage by stage through the executor, then combine the saved units."""
    if not has_plan(module):
        raise TypeError(f"experiment module {module.__name__} declares no plan (plan, compute_unit, combine)")
    bind = getattr(executor, "bind", None)  # an executor that needs the run (its folder) binds to it first
    if bind is not None:
        executor = bind(ctx)
    executor = executor or InProcessExecutor(progress=ctx.progress)
    stages: Iterator[Stage] = module.plan(ctx)
    for stage in stages:
        executor.run(stage, lambda key, computed=None: run_unit(ctx, ctx.experiment, key, computed))
    return module.combine(ctx)
