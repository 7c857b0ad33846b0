"""`spatialmech tasks` and `spatialmech render`, run as a user would (through the CLI entry point)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialmech.cli import main
from spatialmech.tasks.base import COUNTERFACTUAL_KINDS, Item

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "whatsup"


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]


def test_tasks_lists_every_task_with_counts(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"squares", "shapes", "objects", "scenes", "whatsup", "coco-spatial", "custom"}
    assert "480 items" in lines["squares"] and "480 items" in lines["shapes"] and "1344 items" in lines["objects"]
    assert "unbounded" in lines["scenes"] and "needs --data" in lines["coco-spatial"] and "needs --data" in lines["custom"]


@pytest.mark.parametrize("task", ["squares", "shapes", "objects", "scenes"])
def test_render_writes_pngs_whose_boxes_hold_the_objects(task, tmp_path, capsys):
    out = tmp_path / task
    assert main(["render", task, "--out", str(out), "--n", "8"]) == 0
    assert "wrote 8 images" in capsys.readouterr().out
    rows = read_rows(out)
    assert len(rows) == 8 and len(list(out.glob("*.png"))) == 8
    for row in rows:
        image = np.asarray(Image.open(out / row["image_file"]).convert("RGB")).astype(int)
        assert image.shape[:2] == tuple(row["image_size"][::-1])
        item = Item.from_dict({k: v for k, v in row.items() if k not in ("image_file", "counterfactuals")})
        for obj in item.objects[:3] if task != "scenes" else item.objects[:2]:
            x0, y0, x1, y1 = obj.box_px
            close = np.abs(image[y0:y1, x0:x1] - np.array(obj.color)).max(axis=-1) <= 40
            assert close.mean() > 0.1, (row["id"], obj.name)
        assert set(row["counterfactuals"]) == set(COUNTERFACTUAL_KINDS)
        assert len(row["counterfactuals"]["alone"]) == (3 if task != "scenes" else 2)
        counterfactual = row["counterfactuals"]["opposite_query"][0]
        Item.from_dict({k: v for k, v in counterfactual.items() if k not in ("source_object", "image_file", "counterfactuals")})
        assert set(counterfactual["counterfactuals"]) == {"alone", "blank"}  # its own ablation sources (backup)
        assert (out / counterfactual["image_file"]).is_file()  # render writes counterfactual images too


def test_render_is_byte_identical_for_a_seed(tmp_path):
    for name in ("a", "b"):
        assert main(["render", "scenes", "--out", str(tmp_path / name), "--n", "3", "--seed", "5"]) == 0
    for file in ("00000.png", "00002.png", "items.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_render_gemma_geometry(tmp_path):
    assert main(["render", "squares", "--out", str(tmp_path), "--n", "2", "--geometry", "gemma"]) == 0
    row = read_rows(tmp_path)[0]
    assert row["image_size"] == [896, 896] and row["grid"]["name"] == "gemma"
    assert Image.open(tmp_path / row["image_file"]).size == (896, 896)


def test_render_real_data_tasks(tmp_path):
    assert main(["render", "coco-spatial", "--data", str(FIXTURE), "--out", str(tmp_path / "c")]) == 0
    rows = read_rows(tmp_path / "c")
    # 5 entries: several people in image 632 -> the largest box (kept); no horse in image 724 -> dropped.
    assert len(rows) == 4 and rows[0]["meta"]["prompt_swapped"].endswith("right or left.")
    assert main(["render", "whatsup", "--data", str(FIXTURE), "--out", str(tmp_path / "w"), "--n", "3"]) == 0
    assert len(read_rows(tmp_path / "w")) == 3


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


@pytest.mark.parametrize("task", ["whatsup", "coco-spatial"])
def test_render_without_data_says_how_to_get_it(task, tmp_path, capsys):
    assert main(["render", task, "--out", str(tmp_path)]) == 2
    assert "--data" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("task", "breakage", "message"),
    [
        ("whatsup", ("data/controlled_images/mug_left_of_chair.jpeg", None), "does not exist"),
        ("whatsup", ("data/controlled_images_dataset.json", '[{"image_path": "x", "caption'), "not valid JSON"),
        ("whatsup", ("data/controlled_images_dataset.json", '{"rows": []}'), "wrong shape"),
        ("whatsup", ("data/controlled_images_dataset.json", '[{"image_path": "../../x/mug_left_of_chair.jpeg", "caption_options": ["a"]}]'), "escapes the data root"),
        ("coco-spatial", ("data/val2017/000000000139.jpg", None), "does not exist"),
        ("coco-spatial", ("data/coco_qa_two_obj.json", "[[139"), "not valid JSON"),
        ("coco-spatial", ("data/coco_qa_two_obj.json", '{"139": "dog"}'), "wrong shape"),
        ("coco-spatial", ("data/annotations/instances_val2017.json", '{"images": 1}'), "wrong shape"),
    ],
)
def test_bad_data_gives_one_line_error_and_exit_2(task, breakage, message, tmp_path, capsys):
    data = Path(shutil.copytree(FIXTURE, tmp_path / "data"))
    relative, content = breakage
    if content is None:
        (data / relative).unlink()
    else:
        (data / relative).write_text(content)
    assert main(["render", task, "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    assert message in _one_line_error(capsys)


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["render", "squares", "--out", str(tmp_path), "--n", "0"]) == 2
    assert "--n" in _one_line_error(capsys)
    assert main(["render", "squares", "--out", str(tmp_path), "--geometry", "huge"]) == 2
    assert "qwen, gemma" in _one_line_error(capsys)
    assert main(["render", "squares", "--out", str(tmp_path), "--geometry", "qwen", "--model", "x"]) == 2
    assert "only one" in _one_line_error(capsys)


def test_render_on_a_models_own_grid(tmp_path):
    """--model: the grid comes from the adapter (a tiny Qwen2-VL saved to disk), not from a preset."""
    qwen = pytest.importorskip("spatialmech.models.qwen2_vl")
    adapter = qwen.Adapter.tiny()
    adapter.save_pretrained(str(tmp_path / "model"))
    spec = adapter.grid_spec()
    assert main(["render", "objects", "--out", str(tmp_path / "out"), "--n", "2", "--model", str(tmp_path / "model")]) == 0
    row = read_rows(tmp_path / "out")[0]
    assert row["grid"]["tokens_per_side"] == spec.tokens_per_side
    assert row["image_size"] == [spec.image_size, spec.image_size]
    k = spec.tokens_per_side // 5
    assert Counter((o["box_cells"][2] - o["box_cells"][0]) for o in row["objects"]) == Counter({k: 3})
