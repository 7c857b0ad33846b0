"""`spatialmech report RUN_DIR` (rebuild the HTML report) and `spatialmech reproduce` (the main job)."""

from __future__ import annotations

import argparse

from spatialmech.report.html import build_report


def report_command(args: argparse.Namespace) -> int:
    path = build_report(args.run_dir)
    print(f"report written: {path}")
    return 0


def reproduce_command(args: argparse.Namespace) -> int:
    from spatialmech.report.reproduce import reproduce

    path = reproduce(args)
    print(f"report written: {path}")
    return 0
