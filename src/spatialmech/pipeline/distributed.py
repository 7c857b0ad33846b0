"""Runs an experiment's units on Ray workers: the executor behind `--workers N` and `--ray-address ADDR`.

The driver (the command's own process) prepares each run folder, plans the stages and writes every
result; the workers only compute. For each unit not saved yet the driver ships a small payload
(run folder, unit key) to the worker pool; a worker (holding the model, loaded once) rebuilds the
run's context from the folder's `run_config.json` (`experiments.plan.open_context`, so the folder
must be on a filesystem every node sees), computes the unit (`compute_unit`) and returns its value;
the driver saves it with the runner's own `run_unit(..., computed=value)`, atomically, exactly as a
one-process run would. `combine` and `result.json` then run in the driver as usual, so the metrics
are those of a one-process run.

Scheduling is the pool's (`pipeline.workers.WorkerPool`): dynamic (a free worker takes the next
unit), a dead worker's unit rerun on a replacement, one progress bar per stage, Ctrl-C cancels the
work in flight. Units already saved (`--resume`) are read back in the driver, never dispatched.

A unit may also write files of its own beside its JSON (`probe`'s feature store under
units/features-<axis>/, written before the unit's value comes back): those go straight into the run
folder on the shared filesystem, so the driver and later units read them there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spatialmech.experiments.plan import Stage, UnitRunner, open_context
from spatialmech.experiments.runner import (
    MANIFEST_FILE,
    UNITS_DIR,
    ExperimentContext,
    experiment_module,
)
from spatialmech.io import to_jsonable
from spatialmech.pipeline.workers import WorkerPool, load_adapter, model_spec_from_args, ray_cluster


@dataclass(frozen=True)
class UnitPayload:
    """What a worker gets: the run folder, the manifest's hash (a new run in the same folder gets a new
    context, not a stale cached one) and the unit key."""

    out_dir: str
    token: str
    key: str


_OPEN: dict[tuple[str, str], ExperimentContext] = {}  # per worker process: the run whose units it computes


def _context(adapter: Any, payload: UnitPayload) -> ExperimentContext:
    """The run's context on this worker, kept between units so its shared objects (task, engine) are
    built once per run, not once per unit; only the latest run is kept."""
    key = (payload.out_dir, payload.token)
    if key not in _OPEN:
        _OPEN.clear()
        _OPEN[key] = open_context(payload.out_dir, adapter)
    return _OPEN[key]


def work_on_worker(adapter: Any, payload: UnitPayload) -> Any:
    """The task a worker runs: one unit's value (JSON-able)."""
    ctx = _context(adapter, payload)
    module = experiment_module(ctx.experiment)
    return to_jsonable(dict(module.compute_unit(ctx, payload.key)))


def manifest_token(out_dir: Path) -> str:
    return hashlib.sha256((out_dir / MANIFEST_FILE).read_bytes()).hexdigest()[:16]


class RayExecutor:
    """The `experiments.plan.Executor` of one run folder: units computed on the pool, saved here."""

    def __init__(self, pool: WorkerPool, out_dir: Path, *, progress: bool = True,
                 work: Callable[[Any, UnitPayload], Any] = work_on_worker):
        self.pool, self.out_dir, self.progress, self.work = pool, Path(out_dir), progress, work

    def run(self, stage: Stage, run_unit: UnitRunner) -> None:
        units = self.out_dir / UNITS_DIR
        todo = []
        for key in stage.keys:
            if (units / f"{key}.json").is_file():
                run_unit(key)  # saved by an earlier (resumed) run: read back here, never dispatched
            else:
                todo.append(key)
        if not todo:
            return
        token = manifest_token(self.out_dir)
        payloads = [UnitPayload(str(self.out_dir), token, key) for key in todo]
        for index, value in self.pool.map(self.work, payloads, progress=self.progress and len(todo) > 1,
                                          description=stage.desc or stage.name):
            run_unit(todo[index], computed=value)


@dataclass
class Cluster:
    """A worker pool for one command, passed as the `executor` of every run it serves (`bind` gives
    each run folder its `RayExecutor`)."""

    pool: WorkerPool
    progress: bool = True
    work: Callable[[Any, UnitPayload], Any] = work_on_worker

    def bind(self, ctx: ExperimentContext) -> RayExecutor:
        """The executor of one run (`experiments.plan.execute` calls this with the prepared run)."""
        return RayExecutor(self.pool, ctx.out_dir, progress=self.progress and ctx.progress, work=self.work)

    @property
    def num_workers(self) -> int:
        return self.pool.num_workers


def wants_cluster(args: Any) -> bool:
    return getattr(args, "workers", None) is not None or getattr(args, "ray_address", None) is not None


@contextmanager
def cluster_from_args(args: Any, progress: bool = True) -> Iterator[Cluster | None]:
    """The `Cluster` that `--workers N` / `--ray-address ADDR` ask for (None without either flag): N
    workers on a local Ray cluster (each on a GPU of its own where there are GPUs, else on one CPU
    slot), or one worker per GPU (per CPU slot) of an existing cluster, each loading the command's model (`--model`, `--dtype`, placement, `--grid`). Without Ray
    installed: a one-line exit-2 error naming the `distributed` extra."""
    if not wants_cluster(args):
        yield None
        return
    workers = getattr(args, "workers", None)
    with ray_cluster(workers=workers, address=getattr(args, "ray_address", None)):
        pool = WorkerPool(load_adapter, model_spec_from_args(args), num_workers=workers)
        pool.start()  # the workers load the model while the driver plans
        try:
            yield Cluster(pool, progress)
        finally:
            pool.close()
