"""Shared by the report tests: the tiny sizes of the test run and the CLI-shaped arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

TINY_SIZES = {"behavior": 2, "last-token": 2, "probe": 4, "criss-cross": 2, "ablate-vision": 2, "backup": 2, "amplify": 4}
TINY_OPTIONS = {"filter_correct": False, "alphas": [0, 2]}


def reproduce_args(model: str | Path, out: Path, *, resume: bool = False, quick: bool = True, data: str | None = None) -> argparse.Namespace:
    """The namespace `spatialmech reproduce` hands to `reproduce` (same fields as the CLI parser)."""
    return argparse.Namespace(model=str(model), device="cpu", dtype=None, trust_remote_code=False, batch_size=4,
                              out=str(out), quick=quick, resume=resume, data=data, seed=0)
