"""`reproduce --quick` on the bundled model at 1 and at 2 Ray workers (`--workers N`): wall times and ratio.

Each run is the real command path (`spatialmech reproduce --quick --workers N`, arguments from the CLI's
own parser) into a fresh folder; the result.json metrics of every run must be equal (they are written
by the same runner whatever computed the units). `--baseline` also times the one-process run (no Ray).

What ratio 2 cores allow: at most 2, and less in practice, because
- Ray gives each worker one CPU slot and sets OMP_NUM_THREADS=1 there, so 1 worker computes on one
  torch thread while the one-process run uses 2 (the baseline can beat 1 worker);
- the driver (planning, the timed forward pass, combine, figures, report) and Ray's own processes
  (GCS, raylet) share the same 2 cores, and every worker loads the model once;
- stages are barriers and some have fewer units than workers (probe: one features unit per axis,
  then four fits; amplify: two probe fits), so those stages use at most that many workers.

    python benchmarks/scaling.py                      # 1 and 2 workers
    python benchmarks/scaling.py --baseline --only behavior,last-token,criss-cross

Writes benchmarks/results/scaling-<model>-quick-<time>.json (and -latest.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import dumps, machine_info, save_result  # noqa: E402
from compare_results import compare_metrics  # noqa: E402

from spatialmech.cli import build_parser  # noqa: E402
from spatialmech.io import read_json  # noqa: E402
from spatialmech.pipeline.reproduce import reproduce  # noqa: E402

ONE_PROCESS_TOLERANCE = 1e-6


def one_run(model: str, out: Path, workers: int | None, only: str | None, batch_size: int) -> dict:
    """One `reproduce --quick` run: wall seconds, per-step seconds and every step's metrics."""
    argv = ["reproduce", "--quick", "--model", model, "--out", str(out), "--batch-size", str(batch_size)]
    argv += ["--workers", str(workers)] if workers is not None else []
    argv += ["--only", only] if only else []
    args = build_parser().parse_args(argv)
    log: list[str] = []
    start = time.perf_counter()
    reproduce(args, progress=False, log=log.append)
    seconds = time.perf_counter() - start
    manifest = read_json(out / "reproduce.json")
    return {
        "workers": workers,
        "seconds": seconds,
        "load_average_after": os.getloadavg(),
        "steps": {step["folder"]: round(step["seconds"], 2) for step in manifest["steps"]},
        "metrics": {path.parent.name: read_json(path)["metrics"] for path in sorted(out.glob("*/result.json"))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default: 1 2)")
    parser.add_argument("--baseline", action="store_true", help="also time the one-process run (no Ray)")
    parser.add_argument("--only", default=None, help="restrict the plan (reproduce --only)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    info = machine_info()
    print(f"machine: {info['cpu']} x{info['cpu_count']}, load average {info['load_average_at_start']}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="spatialmech-scaling-") as tmp:
        for workers in ([None] if args.baseline else []) + list(args.workers):
            run = one_run(args.model, Path(tmp) / f"w{workers}", workers, args.only, args.batch_size)
            label = "one process (no Ray)" if workers is None else f"{workers} worker(s)"
            print(f"{label:>22}: {run['seconds']:7.1f} s  (load after {run['load_average_after'][0]:.2f})", flush=True)
            runs.append(run)
    # Ray runs compute on one torch thread per worker: equal to each other exactly. The one-process run
    # uses the machine's threads (another reduction order): equal to float32 rounding (ONE_PROCESS_TOLERANCE).
    ray_runs = [run for run in runs if run["workers"] is not None]
    comparisons = {f"{run['workers']} vs {ray_runs[0]['workers']} workers": compare_metrics(ray_runs[0]["metrics"], run["metrics"], 0.0)
                   for run in ray_runs[1:]}
    if runs[0]["workers"] is None and ray_runs:
        comparisons["one process vs 1st Ray run"] = compare_metrics(ray_runs[0]["metrics"], runs[0]["metrics"], ONE_PROCESS_TOLERANCE)
    equal = all(not c["different"] for c in comparisons.values())
    for name, c in comparisons.items():
        print(f"{name}: {c['identical']} identical, {c['within_tolerance']} within tolerance, {len(c['different'])} different, "
              f"max abs diff {c['max_abs_diff']:.2e}")
    by_workers = {run["workers"]: run["seconds"] for run in runs}
    ratio = by_workers[1] / by_workers[2] if 1 in by_workers and 2 in by_workers else None
    if ratio is not None:
        print(f"speed-up 1 -> 2 workers: {ratio:.2f}x (2 cores allow < 2x: see this script's docstring)")
    print(f"metrics equal across runs: {equal}")
    path = save_result(f"scaling-{args.model}-quick", {
        "benchmark": "scaling", "model": args.model, "only": args.only, "batch_size": args.batch_size,
        "machine": info, "runs": [{k: v for k, v in run.items() if k != "metrics"} for run in runs],
        "ratio_1_to_2_workers": ratio, "metrics_equal": equal, "comparisons": comparisons,
        "note": "wall seconds of the whole command (Ray start, model loads, planning, report); the machine is "
                "shared, see the load averages",
    })
    print(f"wrote {path}")
    print(dumps({"ratio_1_to_2_workers": ratio, "metrics_equal": equal}))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
