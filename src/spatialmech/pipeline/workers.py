"""A Ray worker pool: one actor per GPU (one per CPU slot without GPUs), each building its heavy state
(a loaded model) once, fed picklable tasks one at a time so a fast worker takes more.

Why actors and not plain Ray tasks: loading a 7B model takes longer than most units, so each worker
loads it once (`factory(spec)`) and keeps it. Results stream back to the caller, which writes them:
workers never touch the run folder, so `result.json` is written by the same code as in one process.

    with ray_cluster(workers=2):                       # or ray_cluster(address="10.0.0.1:6379")
        pool = WorkerPool(load_adapter, ModelSpec("bundled"))
        for index, result in pool.map(score, payloads):  # completion order; every index exactly once
            save(index, result)
        pool.close()

A task whose actor dies (out of memory, a killed node, os._exit) is rerun on a replacement actor, up to
`max_attempts` times; an exception raised by the task itself is the caller's (it is not retried).
Ctrl-C (or any exception in the caller's loop) cancels the tasks in flight and kills the actors.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from spatialmech.errors import UserInputError
from spatialmech.models.placement import Placement, require_extra

State = TypeVar("State")
Spec = TypeVar("Spec")
Payload = TypeVar("Payload")
Result = TypeVar("Result")


# ------------------------------------------------------------------------------------------ the cluster


@contextmanager
def ray_cluster(workers: int | None = None, address: str | None = None, **init_kwargs: Any) -> Iterator[dict[str, float]]:
    """Start a local Ray cluster with `workers` CPU slots (`--workers N`) or connect to one at `address`
    (`--ray-address`, e.g. a head started by `ray start --head` in a SLURM job); yields its resources.
    Shuts Ray down on exit if this call started it (an already initialised Ray is reused as is)."""
    if workers is not None and address is not None:
        raise UserInputError("--workers and --ray-address both given", "pass --workers N for a local cluster or --ray-address for an existing one")
    require_extra("ray", "--ray-address" if address is not None else "--workers")
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers {workers} must be at least 1", "pass a positive number of workers")
    import ray

    started = False
    if not ray.is_initialized():
        try:
            if address is not None:
                ray.init(address=address, **init_kwargs)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, **init_kwargs)
        except ConnectionError as exc:
            raise UserInputError(
                f"cannot reach a Ray cluster at {address} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                "start one with `ray start --head` and pass the address it prints",
            ) from exc
        started = True
    try:
        yield dict(ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------ what a worker loads


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads its model (picklable): model id or folder, dtype name, placement. The
    placement's device stays 'auto' until the worker resolves it, so it takes its own GPU."""

    model: str | None = "bundled"
    dtype: str | None = None
    placement: Placement = field(default_factory=Placement)
    trust_remote_code: bool = False
    grid: int | None = None  # --grid: the token grid synthetic stimuli are drawn on


def model_spec_from_args(args: Any) -> ModelSpec:
    """The `ModelSpec` of a command's model options (--model, --dtype, placement flags, --grid), so every
    worker loads what `load_adapter_from_args(args)` loads in the driver."""
    from spatialmech.models.placement import placement_from_args

    return ModelSpec(str(args.model), getattr(args, "dtype", None), placement_from_args(args),
                     bool(getattr(args, "trust_remote_code", False)), getattr(args, "grid", None))


def load_adapter(spec: ModelSpec) -> Any:
    """The factory for model workers: `load_model` from a `ModelSpec`, once per actor."""
    import torch

    from spatialmech.models import load_model

    dtype = getattr(torch, spec.dtype) if spec.dtype else None
    return load_model(spec.model, dtype=dtype, device=spec.placement, trust_remote_code=spec.trust_remote_code, grid=spec.grid)


# ------------------------------------------------------------------------------------------ the pool


class WorkerLost(RuntimeError):
    """A task's actors died more often than the pool retries (a task that kills every worker)."""


class _Worker:
    """The actor: builds its state once, then runs tasks on it."""

    def __init__(self, factory: Callable[[Any], Any], spec: Any):
        self.state = factory(spec)

    def run(self, fn: Callable[[Any, Any], Any], payload: Any) -> Any:
        return fn(self.state, payload)

    def ready(self) -> bool:
        return True


class WorkerPool(Generic[Spec, State]):
    """Actors that each hold `factory(spec)`; `map(fn, payloads)` runs `fn(state, payload)` on them.

    `num_workers`: how many actors (default: one per `gpus_per_worker` GPUs of the cluster, else one
    per CPU slot). `gpus_per_worker` > 1 for a model sharded over several GPUs (`--device-map`): Ray
    shows each actor only its own GPUs. `max_attempts`: how often a task may lose its actor before the
    pool gives up (`WorkerLost`).
    """

    def __init__(
        self,
        factory: Callable[[Spec], State],
        spec: Spec,
        *,
        num_workers: int | None = None,
        gpus_per_worker: int = 1,
        max_attempts: int = 3,
    ):
        require_extra("ray", "the Ray worker pool")
        import ray

        if not ray.is_initialized():
            raise RuntimeError("WorkerPool needs a running Ray: use it inside `with ray_cluster(...)`")
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        self.factory, self.spec = factory, spec
        if gpus_per_worker < 1:
            raise UserInputError(f"gpus_per_worker {gpus_per_worker} must be at least 1", "pass a positive number of GPUs")
        if gpus and gpus_per_worker > gpus:
            raise UserInputError(f"{gpus_per_worker} GPUs per worker but the cluster has {gpus}", "lower the GPUs per worker")
        self.uses_gpus = gpus > 0
        self.gpus_per_worker = gpus_per_worker
        self.num_workers = num_workers or (gpus // gpus_per_worker if self.uses_gpus else max(1, cpus))
        if self.uses_gpus and self.num_workers * gpus_per_worker > gpus:  # the extra actors would wait forever
            raise UserInputError(f"{self.num_workers} workers with {gpus_per_worker} GPU(s) each need more than the cluster's {gpus} GPUs",
                                 f"ask for at most {gpus // gpus_per_worker} workers")
        self.max_attempts = max_attempts
        self.replaced = 0  # actors replaced after dying (for logs and tests)
        self._actors: list[Any] = []

    # ------------------------------------------------------------------ actors
    def _new_actor(self) -> Any:
        import ray

        options = {"num_gpus": self.gpus_per_worker, "num_cpus": 0} if self.uses_gpus else {"num_cpus": 1}
        return ray.remote(_Worker).options(max_restarts=0, max_concurrency=1, **options).remote(self.factory, self.spec)

    def start(self) -> None:
        """Create the actors (each loads its state in the background; tasks queue behind it)."""
        while len(self._actors) < self.num_workers:
            self._actors.append(self._new_actor())

    def _replace(self, slot: int) -> None:
        import ray

        ray.kill(self._actors[slot], no_restart=True)
        self._actors[slot] = self._new_actor()
        self.replaced += 1

    def close(self) -> None:
        """Kill the actors (their state is dropped); a later `map` starts fresh ones."""
        import ray

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors.clear()

    def __enter__(self) -> WorkerPool[Spec, State]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ tasks
    def map(
        self,
        fn: Callable[[State, Payload], Result],
        payloads: Iterable[Payload],
        *,
        progress: bool = True,
        description: str = "units",
    ) -> Iterator[tuple[int, Result]]:
        """Yield (index into `payloads`, result) as tasks finish, every index exactly once.

        Each actor holds one task at a time and gets the next pending one when it returns: a fast
        worker takes more. `fn` and the payloads must be picklable (module-level functions, plain data)."""
        import ray
        from tqdm import tqdm

        items: Sequence[Payload] = list(payloads)
        pending = deque(range(len(items)))
        attempts: Counter[int] = Counter()
        in_flight: dict[Any, tuple[int, int]] = {}  # object ref -> (payload index, actor slot)
        bar = tqdm(total=len(items), desc=description, disable=not progress, unit=description.rstrip("s") or "unit")
        try:
            self.start()
            fn_ref = ray.put(fn)
            idle = list(range(len(self._actors)))
            while pending or in_flight:
                while pending and idle:
                    slot, index = idle.pop(0), pending.popleft()
                    in_flight[self._actors[slot].run.remote(fn_ref, items[index])] = (index, slot)
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                index, slot = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # the actor died (ActorDiedError, unavailable, ...)
                    attempts[index] += 1
                    if attempts[index] >= self.max_attempts:
                        raise WorkerLost(f"task {index} lost its worker {attempts[index]} times (last: {type(exc).__name__})") from exc
                    self._replace(slot)
                    pending.appendleft(index)
                    idle.append(slot)
                    continue
                idle.append(slot)
                bar.update(1)
                yield index, result
        except BaseException:  # Ctrl-C, a task's own error, or the caller stopping the iteration
            for ref in in_flight:
                ray.cancel(ref)
            self.close()
            raise
        finally:
            bar.close()
