"""Compare the `metrics` of every step's result.json between two reproduce output folders.

Prefix sharing must not change results: a run with sharing on and one with it off
(SPATIALMECH_PREFIX_SHARING=0) must give the same metrics (to float32 rounding).

    SPATIALMECH_PREFIX_SHARING=1 spatialmech reproduce --quick --out /tmp/q_on
    SPATIALMECH_PREFIX_SHARING=0 spatialmech reproduce --quick --out /tmp/q_off
    python benchmarks/compare_results.py /tmp/q_on /tmp/q_off [--tolerance 1e-6]

The same check compares two versions of the code (e.g. before and after a redesign, each run from a
`git archive` of its commit, one after the other on the same quiet machine); where both folders hold
`reproduce.json`, each step's wall and CPU seconds are printed too, with the ratio b / a.

Exit code 0 when every metric is within the tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.0": leaf} for nested dicts/lists."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in flatten(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def compare_metrics(a: dict[str, Any], b: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Counts of equal / close / different leaves and the largest numeric difference."""
    fa, fb = flatten(a), flatten(b)
    out: dict[str, Any] = {"leaves": len(fa), "identical": 0, "within_tolerance": 0, "different": [], "max_abs_diff": 0.0}
    for key in sorted(set(fa) | set(fb)):
        x, y = fa.get(key), fb.get(key)
        if x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
            out["identical"] += 1
        elif isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            diff = abs(float(x) - float(y))
            out["max_abs_diff"] = max(out["max_abs_diff"], diff)
            if diff <= tolerance:
                out["within_tolerance"] += 1
            else:
                out["different"].append({"metric": key, "a": x, "b": y})
        else:
            out["different"].append({"metric": key, "a": x, "b": y})
    return out


def compare_folders(a: Path, b: Path, tolerance: float) -> dict[str, dict[str, Any]]:
    out = {}
    for result in sorted(a.glob("*/result.json")):
        other = b / result.parent.name / "result.json"
        if not other.is_file():
            out[result.parent.name] = {"missing_in_b": True}
            continue
        out[result.parent.name] = compare_metrics(
            json.loads(result.read_text()).get("metrics", {}), json.loads(other.read_text()).get("metrics", {}), tolerance
        )
    return out


def step_times(a: Path, b: Path) -> list[str]:
    """One line per step: wall and CPU seconds in a and b (from their reproduce.json) and b / a."""
    runs = [json.loads((folder / "reproduce.json").read_text()) for folder in (a, b)]
    steps = [{step["folder"]: step for step in run["steps"]} for run in runs]
    lines = [f"{'step':<22} {'a wall':>8} {'b wall':>8} {'b/a':>6} {'a cpu':>8} {'b cpu':>8} {'b/a':>6}"]
    for name, first in steps[0].items():
        second = steps[1].get(name)
        if second is None or first.get("seconds") is None or second.get("seconds") is None:
            continue
        lines.append(f"{name:<22} {first['seconds']:8.1f} {second['seconds']:8.1f} {second['seconds'] / first['seconds']:6.2f} "
                     f"{first['cpu_seconds']:8.1f} {second['cpu_seconds']:8.1f} {second['cpu_seconds'] / first['cpu_seconds']:6.2f}")
    lines.append(f"{'whole run':<22} {runs[0]['seconds']:8.1f} {runs[1]['seconds']:8.1f} {runs[1]['seconds'] / runs[0]['seconds']:6.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    report = compare_folders(args.a, args.b, args.tolerance)
    ok = True
    for step, res in report.items():
        if res.get("missing_in_b"):
            print(f"{step:<22} missing in {args.b}")
            ok = False
            continue
        print(f"{step:<22} {res['leaves']:4d} metrics: {res['identical']} identical, {res['within_tolerance']} within "
              f"{args.tolerance:g} (max diff {res['max_abs_diff']:.2e}), {len(res['different'])} different")
        for diff in res["different"][:10]:
            print(f"    {diff['metric']}: {diff['a']!r} vs {diff['b']!r}")
        ok = ok and not res["different"]
    if not report:
        print(f"no */result.json under {args.a}")
        return 1
    if (args.a / "reproduce.json").is_file() and (args.b / "reproduce.json").is_file():
        print("\n".join(step_times(args.a, args.b)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
