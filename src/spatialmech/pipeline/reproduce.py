"""`spatialmech reproduce`: every experiment of the paper on one model, then one `report.html`.

The run is a *plan* of steps (`pipeline.steps`: one experiment on one task, into its own folder under
`--out`), all run through `experiments.runner.run_experiment` on ONE loaded adapter, so every step
writes the usual result contract (`<folder>/result.json`, CSVs, figures). `reproduce.json` beside
them records the plan and each step's status (done / failed / not run), rewritten atomically after
every step (`pipeline.manifest`), so:

- the report marks steps that failed or never ran instead of looking complete;
- `--resume` skips steps whose `result.json` matches this run (same model weights, config, task, seed,
  data), and resumes the rest unit by unit (each experiment's own `--resume`);
- the command exits non-zero when any step failed, after writing the report of what finished.

Before starting, the run times one batch forward pass on the model and prints an estimate per step
(`pipeline.estimates`); during the run it prints "[k/N]" lines with elapsed and remaining time, and
each experiment shows its own tqdm bar.

With `--workers N` or `--ray-address ADDR` (`pipeline.distributed`) every step's units are computed
on Ray workers that each load the model once; the driver still loads it once too, for what needs a
model before any unit runs (the weights' fingerprint, each experiment's config, the timed forward
pass for the estimate, planning a stage's keys), and writes every result file itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from spatialmech.catalog import check_batch_size
from spatialmech.errors import SpatialmechError, UserInputError
from spatialmech.io import ensure_writable_dir
from spatialmech.pipeline.distributed import Cluster, cluster_from_args
from spatialmech.pipeline.estimates import estimate_forwards, format_seconds, task_facts, time_forward
from spatialmech.pipeline.manifest import (
    Manifest,
    StepRecord,
    check_resumable,
    refresh_report,
    resume_state,
    run_identity_of,
)
from spatialmech.pipeline.steps import Step, available_data_tasks, build_plan, select_steps
from spatialmech.provenance import utc_now
from spatialmech.report.html import build_report


class ReproduceFailed(SpatialmechError):
    """Some steps failed: the report of what finished is written, the exit code is 1."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def protocol_of(args: argparse.Namespace) -> str:
    """The run's protocol: paper (the authors' code, the default), strict, or both (amplify twice)."""
    return getattr(args, "protocol", None) or "paper"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, SpatialmechError) else text


def _size_steps(plan: Sequence[Step], records: list[StepRecord], adapter: Any, args: argparse.Namespace,
                out_root: Path, seconds_per_forward: float) -> dict[str, bool]:
    """Resolve each step's config (a bad option fails that step now), estimate its time and, with
    --resume, mark finished steps reused; returns folder -> continue its saved units."""
    from spatialmech.experiments.runner import experiment_module, model_fingerprint, resolve_config

    fingerprint = model_fingerprint(adapter) if args.resume else {}  # hashes the weights: once, not per step
    resume_from: dict[str, bool] = {}
    for step, record in zip(plan, records):
        try:
            module = experiment_module(step.experiment)
            record.task = step.task or module.DEFAULT_TASK
            config = resolve_config(module, record.options, adapter)
            forwards = estimate_forwards(step.experiment, config, adapter.num_layers, task_facts(record.task, adapter, args.data))
            record.estimated_seconds = forwards * seconds_per_forward
            if args.resume:
                state = resume_state(out_root, record, run_identity_of(record, config, fingerprint, args.seed, args.data))
                resume_from[step.folder] = state == "partial"
                if state == "finished":
                    record.status, record.estimated_seconds = "reused", 0.0
        except ModuleNotFoundError as exc:
            record.status, record.error = "failed", f"experiment module missing from this install ({exc.name})"
        except UserInputError as exc:
            record.status, record.error = "failed", _one_line(exc)
    return resume_from


def _announce(args: argparse.Namespace, plan: Sequence[Step], records: Sequence[StepRecord], out_root: Path,
              missing_data: Mapping[str, str], seconds_per_forward: float, cluster: Cluster | None,
              log: Callable[[str], None]) -> None:
    total = sum(r.estimated_seconds or 0.0 for r in records if r.status == "pending")
    where = f", units on {cluster.num_workers} Ray workers" if cluster is not None else ""
    log(f"reproduce: {len(plan)} steps on {args.model} ({'quick' if args.quick else 'full, paper sizes'}, {protocol_of(args)} protocol), "
        f"seed {args.seed}, into {out_root}{where}")
    for index, record in enumerate(records, 1):
        state = {"reused": "finished earlier, reused", "failed": f"cannot run: {record.error}"}.get(
            record.status, f"~{format_seconds(record.estimated_seconds)}")
        log(f"  {index:2d}. {record.folder:<22} {record.task:<13} {state}")
    for name, why in missing_data.items():
        log(f"  (skipping {name}: {why})")
    estimate = f"~{format_seconds(total)}" + (" in one process" if cluster is not None else "")
    log(f"estimated time: {estimate} (one forward pass = {seconds_per_forward * 1000:.0f} ms per item)")


def reproduce(
    args: argparse.Namespace,
    *,
    sizes: Mapping[str, int] | None = None,
    extra_options: Mapping[str, Any] | None = None,
    adapter: Any = None,
    progress: bool = True,
    log: Callable[[str], None] = _say,
    cluster: Cluster | None = None,
) -> Path:
    """Run the plan on `args.model` into `args.out`, write report.html, return its path.

    `sizes` (per experiment n) and `extra_options` (added to every step's options, e.g.
    `filter_correct=False` for untrained test models) are for tests and scripts, not the CLI; so is
    `cluster` (a ready worker pool; default: the one `--workers` / `--ray-address` ask for, if any).
    Raises `ReproduceFailed` (exit 1) after writing the report when any step failed.
    """
    check_batch_size(args.batch_size)
    out_root = Path(args.out)
    ensure_writable_dir(out_root)
    data_tasks, missing_data = available_data_tasks(args.data, None)  # before loading a model: fail fast
    plan = select_steps(build_plan(bool(args.quick), data_tasks, sizes, protocol_of(args)), getattr(args, "only", None))
    with nullcontext(cluster) if cluster is not None else cluster_from_args(args, progress) as workers:
        return _reproduce(args, plan, data_tasks, missing_data, out_root, extra_options, adapter, progress, log, workers)


def _reproduce(args: argparse.Namespace, plan: Sequence[Step], data_tasks: list[str], missing_data: Mapping[str, str],
               out_root: Path, extra_options: Mapping[str, Any] | None, adapter: Any, progress: bool,
               log: Callable[[str], None], cluster: Cluster | None) -> Path:
    from spatialmech.experiments.runner import RESULT_FILE
    from spatialmech.models.registry import load_adapter_from_args

    wall_start = time.time()
    if adapter is None:
        log(f"loading model {args.model} ...")
        adapter = load_adapter_from_args(args)
    header = {
        "command": "reproduce",
        "quick": bool(args.quick),
        "protocol": protocol_of(args),
        "model": str(args.model),
        "seed": int(args.seed),
        "data": None if args.data is None else str(Path(args.data).resolve()),
        "data_tasks": data_tasks,
        "data_tasks_missing": dict(missing_data),
        "started_at": utc_now(),
        "finished_at": None,
        "seconds": None,
        "seconds_per_forward": None,
        "workers": cluster.num_workers if cluster is not None else None,
    }
    if args.resume:
        check_resumable(out_root, header)
    records = [StepRecord(s.folder, s.experiment, s.task or "default", {**s.options, **dict(extra_options or {})}, s.what)
               for s in plan]
    manifest = Manifest(out_root, header, records)
    if not args.resume:  # results of this plan's folders from an older run must not look current
        for step in plan:
            (out_root / step.folder / RESULT_FILE).unlink(missing_ok=True)

    seconds_per_forward = time_forward(adapter, args.batch_size)
    header["seconds_per_forward"] = seconds_per_forward
    resume_from = _size_steps(plan, records, adapter, args, out_root, seconds_per_forward)
    manifest.save()
    refresh_report(out_root)  # from now on report.html always shows this run's state, never an older run's
    _announce(args, plan, records, out_root, missing_data, seconds_per_forward, cluster, log)

    spent, estimated_done = 0.0, 0.0
    for index, (step, record) in enumerate(zip(plan, records), 1):
        if record.status != "pending":
            continue
        remaining = sum(r.estimated_seconds or 0.0 for r in records[index - 1:] if r.status == "pending")
        pace = spent / estimated_done if estimated_done > 0 else 1.0
        log(f"[{index}/{len(plan)}] {step.folder}: {step.what} ({record.task}); "
            f"elapsed {format_seconds(time.time() - wall_start)}, ~{format_seconds(remaining * pace)} left")
        _run_step(args, step, record, adapter, out_root, resume_from.get(step.folder, False), progress, cluster, manifest, log)
        if record.status == "done":
            spent += record.seconds or 0.0
            estimated_done += record.estimated_seconds or 0.0
            log(f"  done in {format_seconds(record.seconds)}")

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


def _run_step(args: argparse.Namespace, step: Step, record: StepRecord, adapter: Any, out_root: Path, resume: bool,
              progress: bool, cluster: Cluster | None, manifest: Manifest, log: Callable[[str], None]) -> None:
    """One step through the runner (its units on the cluster's workers when there is one); a failure is
    recorded and the run goes on, Ctrl-C is recorded and re-raised."""
    from spatialmech.experiments.runner import run_experiment

    record.status, record.started_at = "running", utc_now()
    manifest.save()
    start, cpu_start = time.time(), time.process_time()
    try:
        run_experiment(
            step.experiment, adapter, out_root=out_root, task=record.task, options=dict(record.options),
            seed=args.seed, resume=resume, batch_size=args.batch_size, data_root=args.data,
            model_label=str(args.model), progress=progress, folder=step.folder,
            executor=cluster,
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
    manifest.save()
    refresh_report(out_root)
