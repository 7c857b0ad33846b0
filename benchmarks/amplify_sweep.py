"""An amplification alpha sweep: scoring every alpha from raw inputs vs reusing each batch's encoded pictures.

The `amplify` experiment scores the same evaluation items at every alpha (and both option orders of a
forced-choice question). Before `Engine.encode_images`, each of those forwards re-rendered the image,
re-ran the image processor and the vision tower; now each batch is encoded once per option order and
every alpha runs the LM only. This benchmark times both on the same items, probes and alphas in the same
run, checks they give identical scores, and prints the ratio.

    python benchmarks/amplify_sweep.py [--model bundled] [--items 32] [--alphas 0 2 4 8 12 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import describe, dumps, load_benchmark_model, machine_info, save_result  # noqa: E402

from spatialmech.engine import Engine  # noqa: E402
from spatialmech.experiments import amplify  # noqa: E402
from spatialmech.experiments.common import ReusedEncodings, encode_items, score_items  # noqa: E402
from spatialmech.experiments.probing import LinearProbe  # noqa: E402
from spatialmech.tasks import get_task  # noqa: E402


def random_probes(hidden: int) -> dict[str, LinearProbe]:
    """Fixed directions stand in for fitted probes: the cost of a sweep does not depend on them."""
    return {axis: amplify.random_directions(hidden, 0, axis, classes) for axis, classes in amplify.AXIS_CLASSES.items()}


def sweep(adapter, task, items, probes, alphas, batch, reuse: bool) -> list[list[bool]]:
    encode = ReusedEncodings(Engine(adapter)) if reuse else encode_items
    out = []
    for alpha in alphas:
        logits_fn = amplify.amplification_logits(adapter, probes, alpha) if alpha else None
        out.append([s.correct for s in score_items(adapter, task, items, batch, logits_fn, encode=encode)])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", choices=["bundled", "mid"])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0, 2, 4, 8, 12, 15])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter, description = load_benchmark_model(args.model)
    task = get_task("scenes", geometry=adapter.grid_spec())
    items = task.items(args.items, seed=0)
    probes = random_probes(adapter.hidden_size)
    runs: dict[str, list[dict[str, float]]] = {"raw": [], "reused": []}
    scores = {}
    with torch.no_grad():
        for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
            for name in ("raw", "reused"):
                wall, cpu = time.perf_counter(), time.process_time()
                scores[name] = sweep(adapter, task, items, probes, args.alphas, args.batch, reuse=name == "reused")
                runs[name].append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
    identical = scores["raw"] == scores["reused"]
    median = {name: {k: statistics.median(r[k] for r in rows) for k in ("wall", "cpu")} for name, rows in runs.items()}
    result = {
        "benchmark": "amplify_sweep",
        "machine": machine_info(),
        "config": vars(args),
        "model": {"name": args.model, "description": description, "architecture": describe(adapter)},
        "runs": runs,
        "median_seconds": median,
        "speedup": round(median["raw"]["wall"] / median["reused"]["wall"], 2),
        "cpu_speedup": round(median["raw"]["cpu"] / median["reused"]["cpu"], 2),
        "identical_scores": identical,
    }
    path = save_result(f"amplify_sweep-{args.model}", result)
    print(f"{args.items} scenes items x {len(args.alphas)} alphas x 2 option orders on {args.model} ({args.threads} threads)")
    print(f"  raw inputs every alpha: {median['raw']['wall']:.2f} s wall, {median['raw']['cpu']:.2f} s CPU")
    print(f"  encoded once, reused:   {median['reused']['wall']:.2f} s wall, {median['reused']['cpu']:.2f} s CPU")
    print(f"  speed-up {result['speedup']}x wall, {result['cpu_speedup']}x CPU; identical scores: {identical}")
    print(f"saved {path}")
    print(dumps(result["machine"]))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
