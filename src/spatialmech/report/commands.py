"""`spatialmech report RUN_DIR`: rebuild the HTML report from a run folder's result files."""

from __future__ import annotations

import argparse

from spatialmech.report.html import build_report


def report_command(args: argparse.Namespace) -> int:
    path = build_report(args.run_dir)
    print(f"report written: {path}")
    return 0
