"""Data from elsewhere: broken images, broken or wrongly shaped JSON, paths that escape the data root.

Each case goes through the real CLI: `spatialmech eval` (model + runner, result files) for COCO-spatial
and `spatialmech render` (no model) for the stitched What'sUp task. Every one must exit 2 with a
one-line 'problem; fix' message and leave no result file behind.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from reliability_helpers import assert_bad_input, assert_no_partial_result, run_cli

COCO_IMAGE = Path("data/val2017/000000000139.jpg")  # used by two of the three usable COCO-spatial items
WHATSUP_IMAGE = Path("data/controlled_images/mug_left_of_chair.jpeg")  # left half of two composites
CONTROLLED_JSON = Path("data/controlled_images_dataset.json")
COCO_QA_JSON = Path("data/coco_qa_two_obj.json")
INSTANCES_JSON = Path("data/annotations/instances_val2017.json")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few dozen bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


IMAGE_BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda p: p.unlink(), "does not exist"),
    "zero-byte": (lambda p: p.write_bytes(b""), "zero-byte"),
    "corrupt": (lambda p: p.write_bytes(os.urandom(2048)), "corrupt"),
    "truncated": (_truncate, "truncated"),
    "not-an-image": (lambda p: p.write_text('{"this": "is json"}'), "corrupt"),
    "huge": (lambda p: p.write_bytes(png_header_only(9000, 9000)), "pixel limit"),
    "decompression-bomb": (lambda p: p.write_bytes(png_header_only(40000, 40000)), "pixel limit"),
}


@pytest.mark.parametrize("breakage", sorted(IMAGE_BREAKAGES))
def test_broken_coco_image_through_eval(breakage, data, tiny_model, tmp_path, capsys):
    breaker, expected = IMAGE_BREAKAGES[breakage]
    breaker(data / COCO_IMAGE)
    out = tmp_path / "out"
    result = run_cli(["eval", "--model", tiny_model, "--task", "coco-spatial", "--data", data, "--out", out], capsys)
    assert_bad_input(result, expected, COCO_IMAGE.name)
    assert_no_partial_result(out)


@pytest.mark.parametrize("breakage", sorted(IMAGE_BREAKAGES))
def test_broken_whatsup_photo_through_render(breakage, data, tmp_path, capsys):
    breaker, expected = IMAGE_BREAKAGES[breakage]
    breaker(data / WHATSUP_IMAGE)
    out = tmp_path / "rendered"
    result = run_cli(["render", "whatsup", "--data", data, "--out", out], capsys)
    assert_bad_input(result, expected, WHATSUP_IMAGE.name)
    assert not (out / "items.jsonl").exists()


def test_failed_render_does_not_leave_an_older_items_file(data, tmp_path, capsys):
    """A render into a folder that holds an earlier render must not leave the old items.jsonl next to
    new images: that pair would look like a complete, consistent render."""
    out = tmp_path / "rendered"
    assert run_cli(["render", "whatsup", "--data", data, "--out", out], capsys).code == 0
    assert (out / "items.jsonl").is_file()
    (data / WHATSUP_IMAGE).write_bytes(b"")
    assert_bad_input(run_cli(["render", "whatsup", "--data", data, "--out", out], capsys), "zero-byte")
    assert not (out / "items.jsonl").exists()


# ------------------------------------------------------------------------------------------ JSON files

NOT_JSON: dict[str, tuple[bytes, str]] = {
    "zero-byte": (b"", "empty"),
    "truncated": (b'[{"image_path": "data/controlled_images/mug_left', "not valid JSON"),
    "not-utf8": (b"\xff\xfe\x00\x81garbage", "cannot be read"),
    "html-error-page": (b"<html><body>404 Not Found</body></html>", "not valid JSON"),
}

# (file, JSON of the wrong shape, a word the message must contain)
WRONG_SHAPES: list[tuple[Path, object, str]] = [
    (CONTROLLED_JSON, {"image_path": "x.jpeg"}, "wrong shape"),
    (CONTROLLED_JSON, ["data/controlled_images/mug_left_of_chair.jpeg"], "entry 0"),
    (CONTROLLED_JSON, [{"image_path": 7, "caption_options": ["a"]}], "entry 0"),
    (CONTROLLED_JSON, [{"image_path": "data/controlled_images/mug_left_of_chair.jpeg", "caption_options": "a mug"}], "entry 0"),
    (CONTROLLED_JSON, [{"image_path": "data/controlled_images/mug_left_of_chair.jpeg", "caption_options": []}], "entry 0"),
    (CONTROLLED_JSON, [], "no What'sUp composites"),
    (COCO_QA_JSON, {"139": "A photo of a dog to the left of a cat"}, "wrong shape"),
    (COCO_QA_JSON, [[139, "A photo of a dog to the left of a cat"]], "entry 0"),
    (COCO_QA_JSON, [[None, "a", "b"]], "entry 0"),
    (COCO_QA_JSON, [["../../../etc/passwd", "a", "b"]], "non-numeric"),
    (COCO_QA_JSON, [[139, 1, 2]], "entry 0"),
    (COCO_QA_JSON, [], "no usable COCO-spatial questions"),
    (INSTANCES_JSON, [], "wrong shape"),
    (INSTANCES_JSON, {"images": [], "annotations": []}, "missing lists"),
    (INSTANCES_JSON, {"images": [{"id": "139"}], "annotations": [], "categories": []}, "image 0"),
    (INSTANCES_JSON, {"images": [], "annotations": [{"image_id": 139, "category_id": 1, "bbox": [1, 2, 3]}],
                      "categories": [{"id": 1, "name": "person"}]}, "annotation 0"),
    (INSTANCES_JSON, {"images": [], "annotations": [], "categories": [{"id": 1}]}, "category 0"),
]


def _task_for(file: Path) -> str:
    return "whatsup" if file == CONTROLLED_JSON else "coco-spatial"


def _run_task(task: str, data: Path, model: Path, out: Path, capsys):
    """What'sUp through render (its tiny-model answers are multi-token), COCO-spatial through eval."""
    if task == "whatsup":
        return run_cli(["render", "whatsup", "--data", data, "--out", out], capsys)
    return run_cli(["eval", "--model", model, "--task", task, "--data", data, "--out", out], capsys)


@pytest.mark.parametrize("file", [CONTROLLED_JSON, COCO_QA_JSON, INSTANCES_JSON], ids=lambda f: f.name)
@pytest.mark.parametrize("kind", sorted(NOT_JSON))
def test_malformed_json(kind, file, data, tiny_model, tmp_path, capsys):
    content, expected = NOT_JSON[kind]
    (data / file).write_bytes(content)
    out = tmp_path / "out"
    result = _run_task(_task_for(file), data, tiny_model, out, capsys)
    assert_bad_input(result, expected, file.name)
    assert_no_partial_result(out)
    assert not (out / "items.jsonl").exists()


@pytest.mark.parametrize(("file", "content", "expected"), WRONG_SHAPES, ids=lambda v: v.name if isinstance(v, Path) else None)
def test_json_of_the_wrong_shape(file, content, expected, data, tiny_model, tmp_path, capsys):
    (data / file).write_text(json.dumps(content))
    out = tmp_path / "out"
    result = _run_task(_task_for(file), data, tiny_model, out, capsys)
    assert_bad_input(result, expected)
    assert_no_partial_result(out)
    assert not (out / "items.jsonl").exists()


def test_missing_data_files(data, tiny_model, tmp_path, capsys):
    (data / INSTANCES_JSON).unlink()
    assert_bad_input(_run_task("coco-spatial", data, tiny_model, tmp_path / "a", capsys), "instances_val2017.json", "not found")
    (data / CONTROLLED_JSON).unlink()
    assert_bad_input(_run_task("whatsup", data, tiny_model, tmp_path / "b", capsys), "controlled_images_dataset.json", "not found")
    assert_bad_input(_run_task("whatsup", tmp_path / "nowhere", tiny_model, tmp_path / "c", capsys), "not a folder")
    assert_bad_input(run_cli(["render", "coco-spatial", "--out", tmp_path / "d"], capsys), "needs real data", "--data")


# ------------------------------------------------------------------------------------------ escaping paths


def _outside_photo(tmp_path: Path, name: str) -> Path:
    """A valid photo outside the data root: reading it would make the run succeed, so exit 2 proves refusal."""
    folder = tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    path = folder / name
    Image.new("RGB", (64, 48), (10, 200, 10)).save(path)
    return path


def _point_controlled_entry(data: Path, image_path: str) -> None:
    entries = json.loads((data / CONTROLLED_JSON).read_text())
    entries[0]["image_path"] = image_path
    (data / CONTROLLED_JSON).write_text(json.dumps(entries))


def test_whatsup_image_path_with_dotdot(data, tmp_path, capsys):
    _outside_photo(tmp_path, "mug_left_of_chair.jpeg")
    _point_controlled_entry(data, "../../elsewhere/mug_left_of_chair.jpeg")
    result = run_cli(["render", "whatsup", "--data", data, "--out", tmp_path / "out"], capsys)
    assert_bad_input(result, "escapes the data root")


def test_whatsup_absolute_image_path(data, tmp_path, capsys):
    outside = _outside_photo(tmp_path, "mug_left_of_chair.jpeg")
    _point_controlled_entry(data, str(outside))
    result = run_cli(["render", "whatsup", "--data", data, "--out", tmp_path / "out"], capsys)
    assert_bad_input(result, "is absolute")


def test_whatsup_photo_symlinked_outside(data, tmp_path, capsys):
    outside = _outside_photo(tmp_path, "photo.jpeg")
    (data / WHATSUP_IMAGE).unlink()
    (data / WHATSUP_IMAGE).symlink_to(outside)
    result = run_cli(["render", "whatsup", "--data", data, "--out", tmp_path / "out"], capsys)
    assert_bad_input(result, "escapes the data root")


def test_coco_image_symlinked_outside(data, tiny_model, tmp_path, capsys):
    outside = _outside_photo(tmp_path, "photo.jpg")
    (data / COCO_IMAGE).unlink()
    (data / COCO_IMAGE).symlink_to(outside)
    out = tmp_path / "out"
    result = run_cli(["eval", "--model", tiny_model, "--task", "coco-spatial", "--data", data, "--out", out], capsys)
    assert_bad_input(result, "escapes the data root")
    assert_no_partial_result(out)


def test_coco_image_folder_symlinked_outside_is_followed(data, tiny_model, tmp_path, capsys):
    """A folder the user linked to a shared copy (val2017 -> /shared/coco/val2017) is the usual cluster
    set-up and works (issue 17); paths written in the data files still may not climb out."""
    elsewhere = tmp_path / "elsewhere-val2017"
    (data / "data" / "val2017").rename(elsewhere)
    (data / "data" / "val2017").symlink_to(elsewhere, target_is_directory=True)
    result = run_cli(["eval", "--model", tiny_model, "--task", "coco-spatial", "--data", data], capsys)
    assert result.code == 0, result.err


@pytest.mark.parametrize("file", [CONTROLLED_JSON, COCO_QA_JSON, INSTANCES_JSON], ids=lambda f: f.name)
def test_data_file_symlinked_outside(file, data, tiny_model, tmp_path, capsys):
    """The benchmark files themselves are read only from inside the data root, like the images."""
    outside = tmp_path / "elsewhere" / file.name
    outside.parent.mkdir()
    (data / file).rename(outside)
    (data / file).symlink_to(outside)
    result = _run_task(_task_for(file), data, tiny_model, tmp_path / "out", capsys)
    assert_bad_input(result, "escapes the data root")


def test_coco_image_of_extreme_aspect_ratio(data, tiny_model, tmp_path, capsys):
    """A valid photo the model's processor cannot take (Qwen2-VL refuses aspect ratios over 200)."""
    Image.new("RGB", (2, 500), (200, 30, 30)).save(data / COCO_IMAGE, format="JPEG")
    out = tmp_path / "out"
    result = run_cli(["eval", "--model", tiny_model, "--task", "coco-spatial", "--data", data, "--out", out], capsys)
    assert_bad_input(result, "2x500", "aspect ratio")
    assert_no_partial_result(out)
