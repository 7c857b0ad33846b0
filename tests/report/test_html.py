"""The HTML report: its numbers are the result files' numbers, and it refuses to mix models."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spatialmech.errors import UserInputError
from spatialmech.experiments.runner import run_experiment
from spatialmech.io import read_json
from spatialmech.report.html import build_report, format_value


class _OurCells(HTMLParser):
    """Collects every <td class=ours> with its data-* attributes and shown text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self._open: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "td" and attributes.get("class") == "ours":
            self._open = {**attributes, "text": ""}

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open is not None:
            self.cells.append(self._open)
            self._open = None


def _lookup(metrics, path):
    for key in path:
        metrics = metrics[key]
    return metrics


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


def test_every_number_in_the_report_is_the_result_files_number(quick_run: Path) -> None:
    parser = _OurCells()
    parser.feed((quick_run / "report.html").read_text(encoding="utf-8"))
    assert len(parser.cells) > 100
    results = {}
    for cell in parser.cells:
        folder = cell["data-src"]
        results.setdefault(folder, read_json(quick_run / folder / "result.json"))
        expected = _lookup(results[folder]["metrics"], json.loads(cell["data-key"]))
        shown = json.loads(cell["data-value"])
        assert _same(shown, expected), (folder, cell["data-key"], shown, expected)
        assert cell["text"] == format_value(expected)
    # every finished step's metrics appear, and the headline numbers of SPEC section 6 are among them
    assert set(results) == {p.parent.name for p in quick_run.glob("*/result.json")}
    keys = {(c["data-src"], c["data-key"]) for c in parser.cells}
    for key in ('["baseline_accuracy"]', '["random_accuracy"]', '["accuracy"]', '["fails_fixed"]', '["best_alpha"]'):
        assert ("amplify", key) in keys
    assert ("behavior-squares", '["accuracy"]') in keys and ("behavior-squares", '["n"]') in keys
    assert ("probe", '["background_agreement", "horizontal"]') in keys


def test_report_refuses_results_of_two_models(tmp_path: Path, loaded_tiny) -> None:
    from spatialmech.models.qwen2_vl import Adapter

    options = {"n": 2}
    run_experiment("behavior", loaded_tiny, out_root=tmp_path, task="squares", options=options, progress=False, folder="behavior-a")
    other = Adapter.tiny(seed=1)
    run_experiment("behavior", other, out_root=tmp_path, task="squares", options=options, progress=False, folder="behavior-b")
    with pytest.raises(UserInputError, match="different models"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_report_of_plain_run_folders(tmp_path: Path, loaded_tiny) -> None:
    """`spatialmech report` on `spatialmech run` output (no reproduce.json): every result shown."""
    run_experiment("behavior", loaded_tiny, out_root=tmp_path, task="shapes", options={"n": 2}, progress=False)
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "id='behavior-section'" in html and "id='behavior'" in html and "data-src='behavior'" in html
    assert "INCOMPLETE" not in html


def test_report_of_an_empty_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no finished experiment results"):
        build_report(tmp_path)
    with pytest.raises(UserInputError, match="does not exist"):
        build_report(tmp_path / "missing")


def test_protocol_named_at_the_top_and_both_amplifications_side_by_side(quick_run: Path, tmp_path: Path) -> None:
    import shutil

    html = (quick_run / "report.html").read_text(encoding="utf-8")
    assert "Protocol: paper" in html[: html.index("<h2")] and "amplify-protocols" not in html
    run = tmp_path / "run"
    for folder in ("amplify", "behavior-squares"):
        shutil.copytree(quick_run / folder, run / folder)
    shutil.copytree(quick_run / "amplify", run / "amplify-strict")
    strict = read_json(run / "amplify-strict" / "result.json")
    strict["config"]["protocol"] = "strict"
    strict["metrics"]["accuracy"] = 0.123456
    (run / "amplify-strict" / "result.json").write_text(json.dumps(strict), encoding="utf-8")
    html = build_report(run).read_text(encoding="utf-8")
    assert "Protocol: both" in html[: html.index("<h2")]
    side = html[html.index("id='amplify-protocols'"):]
    side = side[: side.index("</table>")]
    assert "scenes, paper" in side and "scenes, strict" in side
    assert "data-src='amplify-strict' data-key='[&#34;accuracy&#34;]' data-value='0.123456'" in side
    assert "data-src='amplify' data-key='[&#34;accuracy&#34;]'" in side
