"""The public API (`import spatialmech as sm`), used only through its public names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import spatialmech as sm
from spatialmech.catalog import EXPERIMENTS
from spatialmech.cli import main


@pytest.fixture(scope="module")
def model():
    return sm.load_model("bundled")


def test_import_is_light():
    """`import spatialmech` must not pull torch (the CLI's --help stays instant)."""
    code = "import sys, spatialmech; assert 'torch' not in sys.modules; print(spatialmech.run.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("spatialmech.api")


def test_run_reproduces_the_cli_last_token(model, tmp_path, capsys):
    """Done-when: sm.run gives the metrics of `spatialmech run last-token` (same n, seed, model)."""
    assert main(["run", "last-token", "--n", "3", "--layers", "0-3", "--out", str(tmp_path)]) == 0
    cli = json.loads((tmp_path / "last-token" / "result.json").read_text())
    result = sm.run("last-token", model, task="squares", n=3, layers="0-3")
    assert result.metrics == cli["metrics"]
    assert result.metrics["n_pairs"] == 12 and result.folder is None  # n per direction, 4 directions
    assert {"layer", "answer", "iia"} <= set(result.tables["curves"][0])
    assert isinstance(result.tables["curves"][0]["iia"], float)
    fig = result.figure()
    assert fig.axes and fig.get_size_inches()[0] > 1
    saved = result.save(tmp_path / "copy")
    assert json.loads(saved.read_text())["metrics"] == cli["metrics"]
    assert (tmp_path / "copy" / "curves.csv").is_file() and (tmp_path / "copy" / "iia_curves.png").is_file()


def test_inputs_and_image_tokens(model):
    """One image shared by prompts; positions of a box, a cell and a strip agree with the drawn grid."""
    task = sm.load_task("squares", model)
    item = task.items(1)[0]
    inputs = model.inputs(task.image(item), [item.prompt, item.prompt])
    assert inputs.batch_size == 2
    tokens = inputs.image_tokens[1]
    rows, cols = tokens.shape
    assert (rows, cols) == (model.grid.tokens_per_side,) * 2
    r0, c0, r1, c1 = item.objects[0].box_cells
    box = tokens.box(*item.objects[0].box_px)
    cells = torch.cat([tokens.cell(r, c) for r in range(r0, r1) for c in range(c0, c1)])
    assert sorted(box.tolist()) == sorted(cells.tolist())
    strip = tokens.strip("vertical", c0, c1)
    assert len(strip) == rows * (c1 - c0) and set(cells.tolist()) <= set(strip.tolist())
    assert len(tokens.positions) == rows * cols


def test_engine_scores_words(model):
    """Words in, spelling variants summed: equal to the core engine fed the token ids."""
    from spatialmech.engine import Engine as CoreEngine

    task = sm.load_task("squares", model)
    items = task.items(2)
    inputs = model.inputs([task.image(i) for i in items], [i.prompt for i in items], system="Answer in one word.")
    engine = sm.Engine(model)
    words = engine.answer_probabilities(inputs, ["Red", "Blue"])
    ids = [[model.answer_ids("Red"), model.answer_ids("Blue")]] * 2
    assert torch.allclose(words, CoreEngine(model.adapter).answer_probabilities(inputs, ids))
    per_row = engine.answer_probabilities(inputs, [[items[0].answer], [items[1].answer]])
    assert per_row.shape == (2, 1)
    assert len(engine.predict(inputs)) == 2


def test_run_on_custom_data_path(model, tmp_path):
    """A path (file or render folder) is the user's own data; the patching experiments run on it."""
    assert main(["render", "squares", "--out", str(tmp_path / "D"), "--n", "4"]) == 0
    task = sm.load_task(tmp_path / "D")
    support = sm.supported_experiments(task)
    assert set(support.values()) == {None}  # render output feeds every experiment
    assert tuple(support) == EXPERIMENTS  # the needs come from the one registry, in its order
    assert "runs behavior" in sm.describe_support(task)
    result = sm.run("criss-cross", model, task=tmp_path / "D", n=1, layers="0")  # a patching experiment
    assert result.task == "custom" and result.metrics["n_pairs"] == 1
    assert result.raw["inputs"]["files"] == {"items.jsonl": result.raw["inputs"]["files"]["items.jsonl"]}
