"""Peak memory of streaming activations to disk does not grow with the number of items.

Caches `projector.out` and every `lm.resid_post.{l}` at all image positions for N Squares items with
`Engine.cache_to_disk` (one shard per batch). Each N runs in its own subprocess; the child loads the
model, measures the peak RSS of processing a batch without caching (building inputs + a plain
forward; the largest of 3 batches), resets the kernel's peak-RSS mark, streams N items, and reports
the streaming peak minus that baseline (what caching adds), compared with the bytes of one batch's
recorded activations. Target: under 2x one batch, whatever N.

Usage: python benchmarks/cache_memory.py [--items 100 300 1000] [--batch 16] [--model bundled]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import dumps, load_benchmark_model, machine_info, save_result  # noqa: E402

# glibc would otherwise keep freed large blocks on its heap (its mmap threshold adapts upward), so RSS
# would measure allocator retention rather than live memory; a fixed threshold returns them at once.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def vm_hwm_bytes() -> int:
    """Peak RSS since the last reset (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def vm_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(n_items: int, batch: int, model_name: str, threads: int) -> dict:
    import torch

    from spatialmech.engine import Engine, image_positions
    from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
    from spatialmech.tasks.geometry import GridGeometry
    from spatialmech.tasks.synthetic import SquaresTask

    torch.set_num_threads(threads)
    adapter, description = load_benchmark_model(model_name)
    task = SquaresTask(GridGeometry.from_grid_spec(adapter.grid_spec()))
    pool = task.items(seed=0)
    sites = ["projector.out"] + [f"lm.resid_post.{layer}" for layer in range(adapter.num_layers)]

    def batches(count: int):
        for start in range(0, count, batch):
            items = [pool[i % len(pool)] for i in range(start, min(count, start + batch))]
            yield adapter.build_inputs([[task.image(item)] for item in items], [item.prompt for item in items], SYNTHETIC_SYSTEM_PROMPT)

    # Baseline: the peak of processing a batch *without* caching (building its inputs + one forward),
    # the largest over a few batches since the forward's transient peak varies from batch to batch.
    plain_peaks = []
    plain_batches = batches(3 * batch)
    for _ in range(3):
        reset_peak()
        inputs = next(plain_batches)  # built inside the measured window, as streaming does
        with torch.no_grad():
            adapter.forward(inputs)
        plain_peaks.append(vm_hwm_bytes())
        tokens_per_item = sum(len(t) for t in inputs.images[0])
        del inputs
    bytes_per_item = tokens_per_item * len(sites) * adapter.hidden_size * 4
    batch_bytes = bytes_per_item * batch
    folder = Path(tempfile.mkdtemp(prefix="cache-memory-"))
    try:
        baseline = max(plain_peaks)
        peak_reset = reset_peak()
        start = time.perf_counter()
        store = Engine(adapter).cache_to_disk(batches(n_items), sites, folder / "store", positions=image_positions, shard_items=batch)
        seconds = time.perf_counter() - start
        peak = vm_hwm_bytes()
        stored = sum(f.stat().st_size for f in (folder / "store").iterdir())
        assert store.num_items == n_items
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    growth = peak - baseline
    return {
        "items": n_items,
        "batch": batch,
        "model": description,
        "sites": len(sites),
        "image_tokens_per_item": tokens_per_item,
        "one_batch_activation_bytes": batch_bytes,
        "baseline_peak_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "peak_growth_bytes": growth,
        "peak_growth_over_one_batch": round(growth / batch_bytes, 3),
        "peak_mark_was_reset": peak_reset,
        "stored_bytes": stored,
        "seconds": round(seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="bundled", choices=["bundled", "mid"])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument(
        "--malloc", choices=["fixed", "default"], default="fixed",
        help="fixed: glibc returns freed large blocks at once (RSS = live memory); default: glibc as is",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.items[0], args.batch, args.model, args.threads)))
        return 0
    runs = []
    for n in args.items:
        command = [sys.executable, __file__, "--child", "--items", str(n), "--batch", str(args.batch), "--model", args.model, "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **(MALLOC_ENV if args.malloc == "fixed" else {})})
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        run = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(
            f"items {n:5d}: peak growth {run['peak_growth_bytes'] / 2**20:8.1f} MiB = {run['peak_growth_over_one_batch']:.2f} x one batch "
            f"({run['one_batch_activation_bytes'] / 2**20:.1f} MiB); stored {run['stored_bytes'] / 2**20:.0f} MiB in {run['seconds']:.0f} s",
            flush=True,
        )
    worst = max(r["peak_growth_over_one_batch"] for r in runs)
    result = {
        "benchmark": "cache_memory",
        "machine": machine_info(),
        "config": {**{k: v for k, v in vars(args).items() if k != "child"}, "child_environment": MALLOC_ENV if args.malloc == "fixed" else {}},
        "runs": runs,
        "worst_peak_growth_over_one_batch": worst,
        "target": 2.0,
        "met": worst < 2.0,
    }
    path = save_result(f"cache_memory-{args.model}-{args.malloc}-malloc", result)
    print(f"worst peak growth / one batch's activations: {worst:.2f} (target < 2): {'MET' if worst < 2 else 'NOT MET'}")
    print(f"saved {path}")
    print(dumps(result["machine"]["gpu"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
