"""`spatialmech reproduce`: run every experiment of the paper and write report.html."""

from __future__ import annotations

import argparse


def reproduce_command(args: argparse.Namespace) -> int:
    from spatialmech.pipeline.reproduce import reproduce

    path = reproduce(args)
    print(f"report written: {path}")
    return 0
