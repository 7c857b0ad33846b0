"""Your own data (`--task custom --data FILE`): render output round-trips, CSV works, bad rows fail cleanly."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from spatialmech.cli import main
from spatialmech.tasks import get_task
from spatialmech.tasks.custom import CustomTask


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("render") / "D"
    assert main(["render", "squares", "--out", str(folder), "--n", "16"]) == 0
    return folder


def _predictions(folder: Path) -> list[dict[str, str]]:
    with open(folder / "behavior" / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_render_then_eval_custom_gives_the_task_accuracy(rendered, tmp_path, capsys):
    """Done-when: render squares --n 16, then eval --task custom on its items.jsonl = eval --task squares --n 16."""
    assert main(["eval", "--task", "custom", "--data", str(rendered / "items.jsonl"), "--out", str(tmp_path / "c")]) == 0
    custom_line = capsys.readouterr().out.splitlines()[0]
    assert main(["eval", "--task", "squares", "--n", "16", "--out", str(tmp_path / "s")]) == 0
    squares_line = capsys.readouterr().out.splitlines()[0]
    custom_result = json.loads((tmp_path / "c" / "behavior" / "result.json").read_text())
    squares_result = json.loads((tmp_path / "s" / "behavior" / "result.json").read_text())
    assert custom_result["metrics"] == squares_result["metrics"]
    assert custom_line.split("[")[0].replace("custom", "squares") == squares_line.split("[")[0]
    # the same items, pictures and system prompt: the same answer probabilities, item by item
    custom_rows, squares_rows = _predictions(tmp_path / "c"), _predictions(tmp_path / "s")
    # ids name the geometry (render's preset "qwen" vs the model's own grid, the same 12x28px grid)
    assert [r["id"].split("/", 2)[2] for r in custom_rows] == [r["id"].split("/", 2)[2] for r in squares_rows]
    assert [r["p_answer"] for r in custom_rows] == [r["p_answer"] for r in squares_rows]


def test_rendered_items_and_counterfactuals_match_the_task(rendered):
    task = CustomTask(rendered / "items.jsonl")
    original = get_task("squares").items(16, seed=0)
    assert [i.to_dict() | {"image_path": None} for i in task.items()] == [i.to_dict() for i in original]
    assert task.synthetic and set(task.counterfactual_kinds) == {"opposite_query", "reversed", "alone", "blank"}
    squares = get_task("squares")
    cf = task.counterfactuals(task.items()[0], "opposite_query")[0]
    expected = squares.counterfactuals(original[0], "opposite_query")[0]
    assert cf.item.prompt == expected.item.prompt and cf.item.answer == expected.item.answer
    assert task.image(cf.item).tobytes() == squares.image(expected.item).tobytes()


def test_csv_form(rendered, tmp_path):
    """The quick CSV form: image, prompt, answer, options and boxes (name:x0,y0,x1,y1 | ...)."""
    shutil.copy(rendered / "00000.png", tmp_path / "a.png")
    (tmp_path / "data.csv").write_text(
        "image,prompt,answer,options,boxes,prompt_swapped\n"
        'a.png,Is the red square left or right of the black one?,left,left|right,"red:28,140,84,196|black:140 140 196 196",'
        "Is the red square right or left of the black one?\n"
        "a.png,What colour is the first square?,Red,,,\n"
    )
    items = CustomTask(tmp_path / "data.csv").items()
    assert [i.answer for i in items] == ["left", "Red"]
    assert items[0].options == ["left", "right"] and items[0].axis == "horizontal"
    assert [o.name for o in items[0].objects] == ["red", "black"] and items[0].objects[1].box_px == (140, 140, 196, 196)
    assert items[0].target == 0 and items[0].reference == 1
    assert items[0].meta["prompt_swapped"].startswith("Is the red square right or left")  # scored strictly
    assert items[1].objects == [] and items[1].answer_variants == [" Red", "Red", " red", "red"]


BAD_ROWS = {
    "missing image": ({"image_file": "nope.png"}, "image_file"),
    "box outside the image": ({"objects": [{"name": "cup", "box_px": [200, 10, 400, 60]}]}, "objects[0].box_px"),
    "answer not among the options": ({"answer": "above", "options": ["left", "right"]}, "answer"),
    "prompt without text": ({"prompt": "   "}, "prompt"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_give_one_line_and_exit_2(case, rendered, tmp_path, capsys):
    change, field = BAD_ROWS[case]
    shutil.copy(rendered / "00000.png", tmp_path / "a.png")
    good = {"image_file": "a.png", "prompt": "Is the cup left or right of the table?", "answer": "left", "options": ["left", "right"]}
    lines = [json.dumps(good), json.dumps(good | change)]
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    for argv in (["eval", "--task", "custom", "--data", str(data), "--out", str(out)],
                 ["run", "behavior", "--task", "custom", "--data", str(data), "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert str(data) in err and "row 2" in err and repr(field) in err
        assert not list(out.rglob("result.json")) if out.exists() else True


def test_experiment_the_data_cannot_run_says_why(rendered, tmp_path, capsys):
    """Rows without counterfactuals: last-token refuses in one line naming what is missing."""
    rows = [json.loads(line) for line in (rendered / "items.jsonl").read_text().splitlines()]
    shutil.copy(rendered / "00000.png", tmp_path / "00000.png")
    row = {k: v for k, v in rows[0].items() if k != "counterfactuals"}
    (tmp_path / "items.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["run", "last-token", "--task", "custom", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "opposite_query" in err and "cannot run" in err
    assert not (tmp_path / "o" / "last-token" / "result.json").exists()
