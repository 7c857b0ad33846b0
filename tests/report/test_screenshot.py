"""A browser-rendered screenshot of a real report shows its figures (headless Chromium)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialmech.plotting import PALETTE

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import screenshot_report  # noqa: E402

pytestmark = pytest.mark.skipif(screenshot_report.find_chromium() is None, reason="chromium is not installed")


def _palette_pixels(png: Path) -> int:
    """Pixels close to a plot colour of `figures.PALETTE` (lines, bars, heatmaps): only figures draw them."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    count = 0
    for colour in PALETTE[:4]:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        count += int((np.abs(pixels - rgb).sum(axis=-1) < 40).sum())
    return count


def test_screenshot_shows_the_figures(quick_run: Path, tmp_path: Path) -> None:
    report = quick_run / "report.html"
    shot = screenshot_report.screenshot(report, tmp_path / "report.png", width=1200, height=1600)
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (1600, 1200)
    assert image.std() > 10  # not blank
    # The same page with its images removed: what remains (text, tables, links) has no plot colours.
    without = tmp_path / "no_figures.html"
    without.write_text(re.sub(r"<img [^>]*>", "", report.read_text(encoding="utf-8")), encoding="utf-8")
    bare = screenshot_report.screenshot(without, tmp_path / "bare.png", width=1200, height=1600)
    with_figures, without_figures = _palette_pixels(shot), _palette_pixels(bare)
    assert with_figures > 2000 and without_figures < with_figures / 20, (with_figures, without_figures)
    # The figures sit at the top ("Main figures"): the first screen holds plot colours.
    top = tmp_path / "top.png"
    Image.open(shot).crop((0, 0, 1200, 900)).save(top)
    assert _palette_pixels(top) > 1000


def test_script_reports_a_missing_file(tmp_path: Path) -> None:
    assert screenshot_report.main([str(tmp_path / "missing.html"), str(tmp_path / "x.png")]) == 2
