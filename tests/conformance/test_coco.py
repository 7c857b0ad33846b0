"""COCO-spatial as the authors load it (issue 17 point 6), on a fixture in the real files' forms."""

from __future__ import annotations

import json
import os

import pytest

from spatialmech.errors import UserInputError
from spatialmech.tasks import get_task
from spatialmech.tasks.geometry import GEMMA, QWEN, GridGeometry
from spatialmech.tasks.prompts import PAPER_PROMPT_STYLE, strict_prompts

from .conftest import write_coco


@pytest.fixture
def coco_root(tmp_path):
    return write_coco(tmp_path / "coco")


def test_largest_instance_box_and_counts(coco_root):
    """Follows coco_amplification/src/common.py (make_find_coco_bbox: the largest box by w*h; the QA
    list kept whole) — several chairs in one image still give an item; a category COCO lacks in the
    image (their Grounding-DINO fallback, which we do not run) is dropped and counted."""
    task = get_task("coco-spatial", data_root=str(coco_root))
    items = task.items()
    assert task.stats["entries"] == 5 and len(items) == 4
    assert task.stats["skipped"] == {"no_coco_box": 1}
    assert task.stats["per_relation"] == {"left": 1, "right": 1, "above": 1, "below": 1}
    assert (task.stats["horizontal"], task.stats["vertical"]) == (2, 2)
    assert task.stats["largest_of_several_instances"] == 2
    chair = next(i for i in items if i.meta["captions"][0] == "A photo of a chair to the right of a dining table")
    assert chair.objects[0].name == "chair" and chair.objects[0].box_px == (75, 140, 115, 175)  # the 40x35 one
    assert chair.objects[1].name == "dining table" and chair.answer == "right"


def test_authors_prompts_per_family(coco_root):
    """Follows coco_amplification/src/prompts.py (relative_prompt_text for Qwen, direct_prompt_text for
    Gemma3 via src/gemma.py)."""
    qwen = get_task("coco-spatial", geometry=GridGeometry.from_grid_spec(
        {"tokens_per_side": 12, "pixels_per_token": 28, "preset": "qwen", "family": "qwen2-vl"}), data_root=str(coco_root))
    vertical = next(i for i in qwen.items() if i.relation == "above")
    assert strict_prompts(vertical) == [
        "Using the dog as the reference point, where is the cup located? Answer with one word: above or below.",
        "Using the dog as the reference point, where is the cup located? Answer with one word: below or above.",
    ]
    horizontal = next(i for i in qwen.items() if i.relation == "left")
    assert horizontal.prompt == ("Using the refrigerator as the reference point, which side is the dining table on? "
                                 "Answer with one word: left or right.")
    assert PAPER_PROMPT_STYLE == {"gemma3": "gemma"}
    gemma = get_task("coco-spatial", geometry=GridGeometry.from_grid_spec(
        {"tokens_per_side": 16, "pixels_per_token": 56, "preset": "gemma", "family": "gemma3"}), data_root=str(coco_root))
    item = next(i for i in gemma.items() if i.relation == "left")
    assert item.prompt == "Is the dining table to the left or to the right of the refrigerator? Answer with one word."
    assert item.meta["prompt_swapped"] == "Is the dining table to the right or to the left of the refrigerator? Answer with one word."
    above = next(i for i in gemma.items() if i.relation == "above")
    assert above.meta["prompt_swapped"] == "Is the cup below or above the dog? Answer with one word."
    assert gemma.stats["prompt_style"] == "gemma" and get_task("coco-spatial", geometry=GEMMA, data_root=str(coco_root))


def test_strict_chance_is_a_quarter(coco_root):
    """Follows coco_amplification/src/common.py (strict over both listings): chance 1/2 x 1/2."""
    for item in get_task("coco-spatial", geometry=QWEN, data_root=str(coco_root)).items():
        assert item.meta["strict_chance"] == 0.25


def test_symlinked_image_folder_works_but_written_paths_stay_inside(coco_root, tmp_path):
    """A cluster layout: val2017 -> a shared COCO copy elsewhere (the user's own link)."""
    shared = tmp_path / "shared_coco_val2017"
    (coco_root / "val2017").rename(shared)
    os.symlink(shared, coco_root / "val2017", target_is_directory=True)
    task = get_task("coco-spatial", data_root=str(coco_root))
    items = task.items()
    assert len(items) == 4 and task.image(items[0]).size == (200, 180)
    # A path written in a data file still may not climb out.
    from spatialmech.tasks.whatsup import resolve_image

    with pytest.raises(UserInputError, match="escapes the data root"):
        resolve_image(coco_root, "val2017/../../elsewhere.jpg")
    entries = json.loads((coco_root / "coco_qa_two_obj.json").read_text())
    assert entries[0] == [1, "A photo of a dining table to the left of a refrigerator",
                          "A photo of a dining table to the right of a refrigerator"]
