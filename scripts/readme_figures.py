#!/usr/bin/env python3
"""Copy a reproduce run's main figures to docs/figures/ and print the README's numbers from its result files.

    python scripts/readme_figures.py runs/full [docs/figures]

Why a script: the README's figures and numbers must be the ones a real run wrote, so they are copied
(never redrawn) from the run folder, and the numbers are printed from its result.json files, with
the folder they come from.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

# (step folder, figure file in it, name in docs/figures): the first existing file of each step is copied.
FIGURES = (
    ("report_figures", "behavior_accuracy.png", "behavior.png"),
    ("last-token", "iia_curves.png", "last_token.png"),
    ("probe", "probe_heatmaps_horizontal.png", "probe_heatmaps.png"),
    ("probe", "probe_accuracy.png", "probe_accuracy.png"),
    ("criss-cross", "iia_curves.png", "criss_cross_object.png"),
    ("criss-cross-strip", "iia_curves.png", "criss_cross_strip.png"),
    ("ablate-vision", "accuracy_bars.png", "ablate_vision.png"),
    ("backup", "iia_curves.png", "backup.png"),
    ("amplify", "amplify_bars.png", "amplify.png"),
    ("amplify", "amplify_alpha.png", "amplify_alpha.png"),
)


def copy_figures(run: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for folder, name, target in FIGURES:
        source = run / folder / name
        if source.is_file():
            copied.append(Path(shutil.copyfile(source, out / target)))
        else:
            print(f"readme_figures: {source} not found, skipped", file=sys.stderr)
    return copied


def numbers(run: Path) -> list[str]:
    """One line per headline number: `folder: key = value` straight from result.json."""
    lines = []
    for path in sorted(run.glob("*/result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        metrics = result.get("metrics", {})
        keys = [k for k, v in metrics.items() if isinstance(v, (int, float, str, dict)) and not isinstance(v, bool)]
        shown = {k: metrics[k] for k in keys if not isinstance(metrics[k], dict) or len(json.dumps(metrics[k])) < 200}
        lines.append(f"{path.parent.name} ({result.get('task')}): {json.dumps(shown)}")
    manifest = run / "reproduce.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        lines.append(f"run: quick={data.get('quick')} seconds={data.get('seconds')} model={data.get('model')}")
        for step in data.get("steps", []):
            lines.append(f"  {step['folder']}: {step['status']} {step.get('seconds')} s (estimated {step.get('estimated_seconds')})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the --out folder of a reproduce run")
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/figures"))
    args = parser.parse_args(argv)
    if not (args.run / "reproduce.json").is_file():
        print(f"readme_figures: error: {args.run} is not a reproduce run (no reproduce.json); pass its --out folder", file=sys.stderr)
        return 2
    for path in copy_figures(args.run, args.out):
        print(f"copied {path}")
    print("\n".join(numbers(args.run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
