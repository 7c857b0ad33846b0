"""`spatialmech reproduce`: every experiment of the paper on one model, then one `report.html`.

The run is a *plan* of steps (one experiment on one task, into its own folder under `--out`), all run
on ONE loaded adapter through `experiments.runner.run_experiment`, so every step writes the usual
result contract (`<folder>/result.json`, CSVs, figures). `reproduce.json` beside them records the plan
and each step's status (done / failed / not run), rewritten atomically after every step, so:

- the report marks steps that failed or never ran instead of looking complete;
- `--resume` skips steps whose `result.json` matches this run (same model weights, config, task, seed,
  data), and resumes the rest unit by unit (each experiment's own `--resume`);
- the command exits non-zero when any step failed, after writing the report of what finished.

Before starting, the run times one batch forward pass on the model and prints an estimate per step
(a cost model in forward-pass equivalents, see `estimate_forwards`); during the run it prints
"[k/N]" lines with elapsed and remaining time, and each experiment shows its own tqdm bar.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spatialmech.catalog import check_batch_size
from spatialmech.errors import SpatialmechError, UserInputError
from spatialmech.io import ensure_writable_dir, read_json, write_json
from spatialmech.provenance import utc_now
from spatialmech.report.html import MANIFEST_FILE, REPORT_FILE, build_report

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


class ReproduceFailed(SpatialmechError):
    """Some steps failed: the report of what finished is written, the exit code is 1."""


@dataclass(frozen=True)
class Step:
    """One experiment on one task, written to `OUT/<folder>`."""

    folder: str
    experiment: str
    task: str | None  # None: the experiment's DEFAULT_TASK
    options: dict[str, Any] = field(default_factory=dict)
    what: str = ""


@dataclass
class StepRecord:
    """What happened to a step, as saved in reproduce.json."""

    folder: str
    experiment: str
    task: str
    options: dict[str, Any]
    what: str
    status: str = "pending"  # pending | running | done | reused | failed
    estimated_seconds: float | None = None
    seconds: float | None = None
    cpu_seconds: float | None = None  # process CPU time (all threads): comparable across busy machines
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


# ------------------------------------------------------------------------------------------ plan
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


# ------------------------------------------------------------------------------------------ time
def _config_n(config: Mapping[str, Any], default: int) -> int:
    value = config.get("n")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


@dataclass(frozen=True)
class TaskFacts:
    """What the time estimate needs to know about a step's task."""

    size: int  # items in the task (an unbounded generator: its default count)
    forced_choice: bool = False  # strict two-order scoring: two forwards per item
    task_count: int = 1  # "all" = the three grid tasks
    unbounded: bool = False  # generated on demand (scenes)


def estimate_forwards(experiment: str, config: Mapping[str, Any], num_layers: int, task: TaskFacts) -> float:
    """A step's cost in single-item forward passes: a model of each experiment's work, calibrated on
    CPU time per step of quick runs on the bundled model's architecture.

    Patching sweeps reuse the clean/source runs, so a layer costs about 0.6 of a forward per pair (the
    last-token patch recomputes one token per layer: ~0.1); keeping only correctly answered pairs
    scores clean and counterfactual inputs (~3 forwards per kept pair for a model that is mostly right).
    """
    layers = len(config.get("layers") or []) or num_layers
    strict = 2 if task.forced_choice else 1
    filtering = 3 if config.get("filter_correct", True) else 0
    if experiment == "behavior":
        return _config_n(config, task.size) * strict
    if experiment == "last-token":
        return _config_n(config, 50) * (filtering + 2 + 0.1 * layers)
    if experiment == "criss-cross":
        return _config_n(config, 50) * (filtering + 2 + 0.6 * (layers + 1))
    if experiment == "backup":  # plus the ablation's alone/blank images, for both runs
        return _config_n(config, 50) * (1.5 * filtering + 4 + 0.6 * (layers + 1))
    if experiment == "probe":
        images = config.get("images_per_axis") or _config_n(config, 120)
        return 2 * 1.2 * int(images) + 5
    if experiment == "ablate-vision":  # four conditions per item; its pictures are encoded once (~0.4 a forward per extra condition)
        items = _config_n(config, 0) * task.task_count or task.size
        return 2.2 * items
    if experiment == "amplify":  # probe features + probe-item scoring + baseline + 2 directions x alphas
        n = _config_n(config, 300 if task.unbounded else task.size // 2)
        alphas = len(config.get("alphas") or range(16))
        if config.get("protocol") == "paper":  # baseline once; features of the right items; only failed orders re-run
            return n * (strict + 0.5 + 2 * 0.75 * (alphas - 1))  # (about half the items fail, 1.5 orders each)
        return n * (1 + 2 * strict + 2 * strict * (alphas - 1))
    return 100.0


def time_forward(adapter: Any, batch_size: int, repeats: int = 2) -> float:
    """Seconds per item of encode+forward on a batch of squares items: the best of `repeats` timings
    after a warm-up batch (the first forward of a process pays one-off allocation costs)."""
    from spatialmech.experiments.common import encode_items
    from spatialmech.tasks import get_task

    task = get_task("squares", geometry=adapter.grid_spec())
    items = task.items(max(1, min(batch_size, 8)), seed=0)
    adapter.forward(encode_items(adapter, task, items))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        adapter.forward(encode_items(adapter, task, items))
        best = min(best, time.perf_counter() - start)
    return best / len(items)


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# ------------------------------------------------------------------------------------------ resume
def _run_identity(step: StepRecord, config: Mapping[str, Any], fingerprint: Mapping[str, Any], seed: int,
                  data_root: str | None) -> dict[str, Any]:
    """What a step's result and run_config.json must match to be this run's: weights (the model's
    fingerprint), task, config, seed, data (the fields `ExperimentContext.prepare` writes to run_config.json)."""
    from spatialmech.experiments.runner import data_hashes, run_identity

    return run_identity(step.experiment, fingerprint, step.task, config, seed, data_hashes(step.task, data_root))


def _read_or_none(path: Path) -> Any:
    try:
        return read_json(path, "result file") if path.is_file() else None
    except UserInputError:
        return None


def resume_state(out_root: Path, step: StepRecord, identity: Mapping[str, Any]) -> str:
    """'finished' (its result.json is this run's: reuse it), 'partial' (units of this run: continue them)
    or 'fresh' (nothing of this run there: start it from scratch)."""
    from spatialmech.experiments.runner import RESULT_FILE, saved_identity

    folder = out_root / step.folder
    result = _read_or_none(folder / RESULT_FILE)
    if result is not None:
        seen = {"experiment": result.get("experiment"), "model": result.get("model_fingerprint"), "task": result.get("task"),
                "config": result.get("config"), "seed": (result.get("provenance") or {}).get("seed"), "inputs": result.get("inputs")}
        if seen == dict(identity):
            return "finished"
    if saved_identity(folder) == dict(identity):
        return "partial"
    return "fresh"


# ------------------------------------------------------------------------------------------ manifest
class Manifest:
    """reproduce.json: the plan, each step's status and timing; saved atomically after every change."""

    def __init__(self, out_root: Path, header: dict[str, Any], records: list[StepRecord]):
        self.path = out_root / MANIFEST_FILE
        self.header = header
        self.records = records

    def save(self) -> None:
        write_json(self.path, {**self.header, "steps": [asdict(r) for r in self.records]})

    @property
    def failed(self) -> list[StepRecord]:
        return [r for r in self.records if r.status == "failed"]


def check_resumable(out_root: Path, header: Mapping[str, Any]) -> None:
    """--resume must continue the same kind of run: same mode, model, seed and data."""
    path = out_root / MANIFEST_FILE
    if not path.is_file():
        return
    previous = read_json(path, "reproduce manifest")
    for key, flag in (("quick", "--quick"), ("protocol", "--protocol"), ("model", "--model"), ("seed", "--seed"), ("data", "--data")):
        if previous.get(key) != header.get(key):
            raise UserInputError(
                f"--resume: {out_root} holds a run with {key}={previous.get(key)!r}, not {header.get(key)!r}",
                f"pass the same {flag} as the interrupted run, or a new --out folder",
            )


def refresh_report(out_root: Path) -> None:
    """Rewrite report.html from what is on disk now (so a crash leaves an accurate, incomplete report);
    if it cannot be built yet (e.g. a resumed folder still holds another model's result), remove it."""
    try:
        build_report(out_root)
    except UserInputError:
        (out_root / REPORT_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ run
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, SpatialmechError) else text


def reproduce(
    args: argparse.Namespace,
    *,
    sizes: Mapping[str, int] | None = None,
    extra_options: Mapping[str, Any] | None = None,
    adapter: Any = None,
    progress: bool = True,
    log: Callable[[str], None] = _say,
) -> Path:
    """Run the plan on `args.model` into `args.out`, write report.html, return its path.

    `sizes` (per experiment n) and `extra_options` (added to every step's options, e.g.
    `filter_correct=False` for untrained test models) are for tests and scripts, not the CLI.
    Raises `ReproduceFailed` (exit 1) after writing the report when any step failed.
    """
    from spatialmech.experiments.runner import (
        RESULT_FILE,
        experiment_module,
        model_fingerprint,
        resolve_config,
        run_experiment,
    )
    from spatialmech.models.registry import load_adapter_from_args

    check_batch_size(args.batch_size)
    out_root = Path(args.out)
    ensure_writable_dir(out_root)
    wall_start = time.time()
    data_tasks, missing_data = available_data_tasks(args.data, None)  # before loading a model: fail fast
    if adapter is None:
        log(f"loading model {args.model} ...")
        adapter = load_adapter_from_args(args)
    header = {
        "command": "reproduce",
        "quick": bool(args.quick),
        "protocol": getattr(args, "protocol", None) or "paper",
        "model": str(args.model),
        "seed": int(args.seed),
        "data": None if args.data is None else str(Path(args.data).resolve()),
        "data_tasks": data_tasks,
        "data_tasks_missing": missing_data,
        "started_at": utc_now(),
        "finished_at": None,
        "seconds": None,
        "seconds_per_forward": None,
    }
    if args.resume:
        check_resumable(out_root, header)

    plan = build_plan(bool(args.quick), data_tasks, sizes, header["protocol"])
    records = [StepRecord(s.folder, s.experiment, s.task or "default", {**s.options, **dict(extra_options or {})}, s.what) for s in plan]
    manifest = Manifest(out_root, header, records)
    if not args.resume:  # results of this plan's folders from an older run must not look current
        for step in plan:
            (out_root / step.folder / RESULT_FILE).unlink(missing_ok=True)

    # Resolve configs (fails fast on a bad option) and estimate the time.
    seconds_per_forward = time_forward(adapter, args.batch_size)
    header["seconds_per_forward"] = seconds_per_forward
    configs: dict[str, dict[str, Any] | None] = {}
    fingerprint = model_fingerprint(adapter) if args.resume else {}  # hashes the weights: once, not per step
    resume_from: dict[str, bool] = {}  # --resume: continue this step's saved units (else start it fresh)
    for step, record in zip(plan, records):
        try:
            module = experiment_module(step.experiment)
            record.task = step.task or module.DEFAULT_TASK
            configs[step.folder] = resolve_config(module, record.options, adapter)
            forwards = estimate_forwards(step.experiment, configs[step.folder], adapter.num_layers,
                                         task_facts(record.task, adapter, args.data))
            record.estimated_seconds = forwards * seconds_per_forward
            if args.resume:
                state = resume_state(out_root, record, _run_identity(record, configs[step.folder], fingerprint, args.seed, args.data))
                resume_from[step.folder] = state == "partial"
                if state == "finished":
                    record.status, record.estimated_seconds = "reused", 0.0
        except ModuleNotFoundError as exc:
            configs[step.folder] = None
            record.status, record.error = "failed", f"experiment module missing from this install ({exc.name})"
        except UserInputError as exc:
            configs[step.folder] = None
            record.status, record.error = "failed", _one_line(exc)
    manifest.save()
    refresh_report(out_root)  # from now on report.html always shows this run's state, never an older run's

    total = sum(r.estimated_seconds or 0.0 for r in records if r.status == "pending")
    log(f"reproduce: {len(plan)} steps on {args.model} ({'quick' if args.quick else 'full, paper sizes'}, {header['protocol']} protocol), "
        f"seed {args.seed}, into {out_root}")
    for index, record in enumerate(records, 1):
        state = {"reused": "finished earlier, reused", "failed": f"cannot run: {record.error}"}.get(
            record.status, f"~{format_seconds(record.estimated_seconds)}")
        log(f"  {index:2d}. {record.folder:<22} {record.task:<13} {state}")
    for name, why in missing_data.items():
        log(f"  (skipping {name}: {why})")
    log(f"estimated time: ~{format_seconds(total)} (one forward pass = {seconds_per_forward * 1000:.0f} ms per item)")

    spent, estimated_done = 0.0, 0.0
    for index, (step, record) in enumerate(zip(plan, records), 1):
        if record.status != "pending":
            continue
        remaining = sum(r.estimated_seconds or 0.0 for r in records[index - 1:] if r.status == "pending")
        pace = spent / estimated_done if estimated_done > 0 else 1.0
        log(f"[{index}/{len(plan)}] {step.folder}: {step.what} ({record.task}); "
            f"elapsed {format_seconds(time.time() - wall_start)}, ~{format_seconds(remaining * pace)} left")
        record.status, record.started_at = "running", utc_now()
        manifest.save()
        start, cpu_start = time.time(), time.process_time()
        try:
            run_experiment(
                step.experiment, adapter, out_root=out_root, task=record.task, options=dict(record.options),
                seed=args.seed, resume=resume_from.get(step.folder, False), batch_size=args.batch_size, data_root=args.data,
                model_label=str(args.model), progress=progress, folder=step.folder,
            )
            record.status = "done"
        except KeyboardInterrupt:
            record.status, record.error = "interrupted", "interrupted by the user"
            record.seconds = time.time() - start
            manifest.save()
            refresh_report(out_root)
            raise
        except Exception as exc:  # one failing experiment must not stop the others
            record.status, record.error = "failed", _one_line(exc)
            log(f"  FAILED: {record.error}")
        record.seconds = time.time() - start
        record.cpu_seconds = time.process_time() - cpu_start
        record.finished_at = utc_now()
        if record.status == "done":
            spent += record.seconds
            estimated_done += record.estimated_seconds or 0.0
            log(f"  done in {format_seconds(record.seconds)}")
        manifest.save()
        refresh_report(out_root)

    header["finished_at"] = utc_now()
    header["seconds"] = time.time() - wall_start
    manifest.save()
    report = build_report(out_root)
    log(f"finished in {format_seconds(header['seconds'])}")
    if manifest.failed:
        names = ", ".join(f"{r.folder} ({r.error})" for r in manifest.failed)
        raise ReproduceFailed(f"{len(manifest.failed)} of {len(records)} steps failed: {names}; "
                              f"the report of what finished, with the failures marked, is {report}")
    return report


def task_facts(task_name: str, adapter: Any, data_root: str | None) -> TaskFacts:
    """Size and scoring of a task, for the time estimate ("all": the three grid tasks)."""
    from spatialmech.tasks import get_task

    if task_name == "all":
        parts = [task_facts(name, adapter, data_root) for name in ("squares", "shapes", "objects")]
        return TaskFacts(sum(p.size for p in parts), False, len(parts))
    task = get_task(task_name, geometry=adapter.grid_spec(), data_root=data_root)
    first = task.items(1, seed=0)
    forced = bool(first and first[0].options and (first[0].meta or {}).get("prompt_swapped"))
    if hasattr(task, "__len__"):
        return TaskFacts(len(task), forced)
    return TaskFacts(int(getattr(task, "default_n", 0) or 0), forced, unbounded=True)
