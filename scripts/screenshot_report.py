#!/usr/bin/env python3
"""Render a report.html to a PNG with headless Chromium: `python scripts/screenshot_report.py REPORT.html OUT.png`.

Why: the report is meant to be read in a browser, so a browser-rendered image is the honest check that
its figures actually show (and it is what the README's figures are checked against). Chromium runs
offline and sandboxed from the network (`--disable-background-networking`, a throw-away profile).
Exit codes: 0 written, 2 bad input (missing file, no chromium), 1 chromium failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(report: Path, out: Path, width: int = 1200, height: int = 3000, timeout: float = 120.0) -> Path:
    """Render `report` (a local HTML file) at width x height CSS pixels into the PNG `out`."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (Debian/Ubuntu: apt-get install -y chromium)")
    report = report.resolve()
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="spatialmech-chromium-") as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out}",
            f"--window-size={width},{height}", report.as_uri(),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if not out.is_file():
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"chromium exited {completed.returncode} without writing {out}: {' | '.join(tail)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html to render")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"screenshot_report: error: {args.report} does not exist; pass a report.html", file=sys.stderr)
        return 2
    try:
        path = screenshot(args.report, args.out, args.width, args.height)
    except FileNotFoundError as exc:
        print(f"screenshot_report: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"screenshot_report: error: {exc}", file=sys.stderr)
        return 1
    print(f"screenshot written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
