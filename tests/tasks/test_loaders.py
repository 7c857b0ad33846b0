"""Real-data loaders on tiny fixture files in the real What'sUp / COCO formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from spatialmech.errors import UserInputError
from spatialmech.tasks import get_task
from spatialmech.tasks.base import CF_BLANK
from spatialmech.tasks.prompts import strict_prompts
from spatialmech.tasks.whatsup import controlled_items, load_caption_questions, load_controlled, parse_caption

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "whatsup"
OBJECT_COLORS = {"mug": (220, 30, 30), "book": (30, 60, 220), "bowl": (30, 170, 60), "cup": (230, 200, 20),
                 "beer bottle": (150, 40, 170)}
REFERENCE_COLOR = (120, 70, 20)


@pytest.fixture
def data(tmp_path) -> Path:
    """A private copy of the fixture that a test may break."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "whatsup"))


def mean_colour(image: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


def test_parse_captions():
    assert parse_caption("A photo of a dog to the left of a cat") == ("dog", "left", "cat")
    assert parse_caption("A photo of a person above a dining table") == ("person", "above", "dining table")
    assert parse_caption("A photo of an apple below the oven.") == ("apple", "below", "oven")
    assert parse_caption("A photo of a dog on the right") == ("dog", "right", None)
    assert parse_caption("A photo of a lamp behind a sofa") == ("lamp", "behind", "sofa")
    assert parse_caption("two dogs playing") == (None, None, None)


def test_controlled_subsets_parse():
    records, skipped = load_controlled(FIXTURE, "A")
    assert len(records) == 9 and skipped == {"unparsed_name": 0}
    first = records[0]
    assert (first.subject, first.relation, first.reference) == ("mug", "left", "chair")
    assert first.file.is_file()
    items = controlled_items(FIXTURE, "B")
    assert [(i.answer, i.axis) for i in items] == [("left", "horizontal"), ("below", "vertical")]
    assert strict_prompts(items[1])[1].endswith("below or above.")


def test_caption_question_files():
    (vg,) = load_caption_questions(FIXTURE, "vg", "two")
    assert vg.image_path == "vg_images/2345.jpg" and vg.relation == "behind"
    (one,) = load_caption_questions(FIXTURE, "coco", "one")
    assert one.image_path == "val2017/000000000139.jpg" and one.relation == "left" and one.reference is None


def test_stitched_whatsup_composites():
    """The authors' stitching (details in tests/conformance/test_whatsup.py): on this fixture only the
    chair's mug and book have both photos, so 2 ordered pairs x 2 directions."""
    task = get_task("whatsup", data_root=str(FIXTURE))
    items = task.items()
    assert len(items) == len(task) == 4
    assert task.stats["side_objects"]["table"]["kept"] == []  # bowl / cup / beer-bottle lack a photo side
    item = next(i for i in items if i.id == "whatsup/chair/book-vs-mug/right")
    assert item.prompt == "The object on the floor to the right of the chair is a(n) "
    assert item.answer == "book" and item.target == 2 and item.reference == 1
    assert item.meta["sources"] == ["data/controlled_images/mug_left_of_chair.jpeg", "data/controlled_images/book_right_of_chair.jpeg"]
    assert [o.ordinal["horizontal"] for o in item.objects] == [0, 1, 2]
    image = np.asarray(task.image(item))
    assert image.shape[1::-1] == tuple(item.image_size) == (336, 336)
    # This fixture's photos put the object in the left half of a left-of photo: mug left, book right.
    for x, colour in ((40, OBJECT_COLORS["mug"]), (300, OBJECT_COLORS["book"])):
        assert np.abs(image[168, x].astype(int) - np.array(colour)).max() < 40
    (blank,) = task.counterfactuals(item, CF_BLANK)
    assert (np.asarray(task.image(blank.item)) == 255).all()


def test_coco_spatial_joins_boxes_and_filters():
    task = get_task("coco-spatial", data_root=str(FIXTURE))
    items = task.items()
    # Several people in image 632: the largest box (as the authors); no horse in image 724: dropped.
    assert task.stats["entries"] == 5 and len(items) == 4
    assert task.stats["skipped"] == {"no_coco_box": 1} and task.stats["largest_of_several_instances"] == 1
    assert (task.stats["horizontal"], task.stats["vertical"]) == (3, 1)
    dog = items[0]
    assert dog.prompt == "Using the cat as the reference point, which side is the dog on? Answer with one word: left or right."
    assert strict_prompts(dog, "qwen")[1].endswith("right or left.")
    assert strict_prompts(dog, "gemma") == [
        "Is the dog to the left or to the right of the cat? Answer with one word.",
        "Is the dog to the right or to the left of the cat? Answer with one word.",
    ]
    assert dog.answer == "left" and dog.options == ["left", "right"]
    assert dog.objects[0].box_px == (4, 10, 25, 41)  # COCO [4.5, 10.2, 20, 30] covered by whole pixels
    assert dog.objects[0].ordinal == {"horizontal": 0} and dog.objects[1].ordinal == {"horizontal": 1}
    table = items[1]
    assert table.objects[1].name == "dining table" and table.answer == "above" and table.axis == "vertical"
    for item in items:
        image = np.asarray(task.image(item))
        assert image.shape[1::-1] == tuple(item.image_size)
        for obj in item.objects:
            x0, y0, x1, y1 = obj.box_px
            inner = image[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3).astype(int)
            assert inner.std(axis=0).max() < 20, "a COCO box must cover one flat-coloured fixture object"
            assert inner.mean(axis=0).min() < 200
    subset = task.items(2, seed=1)
    assert len(subset) == 2 and [i.id for i in subset] == [i.id for i in task.items(2, seed=1)]


def test_data_tasks_need_a_data_root():
    with pytest.raises(UserInputError, match="--data"):
        get_task("coco-spatial")
    with pytest.raises(UserInputError, match="not a folder"):
        get_task("whatsup", data_root="/nonexistent/whatsup").items()


def test_missing_json_names_both_places(tmp_path):
    with pytest.raises(UserInputError, match="coco_qa_two_obj.json not found"):
        get_task("coco-spatial", data_root=str(tmp_path)).items()


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("data/controlled_images_dataset.json", '{"image_path": "x"}', "wrong shape"),
        ("data/controlled_images_dataset.json", '[{"image_path": 3, "caption_options": ["a"]}]', "entry 0 has the wrong shape"),
        ("data/controlled_images_dataset.json", '[{"image_path": "a.jpeg"', "not valid JSON"),
        ("data/controlled_images_dataset.json", "", "is empty"),
    ],
)
def test_bad_whatsup_json_is_a_one_line_error(data, file, content, message):
    (data / file).write_text(content)
    with pytest.raises(UserInputError, match=message) as exc:
        get_task("whatsup", data_root=str(data)).items()
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("data/coco_qa_two_obj.json", "[[139, 2]]", "entry 0 has the wrong shape"),
        ("data/coco_qa_two_obj.json", '[["abc", "A photo of a dog to the left of a cat", "x"]]', "non-numeric COCO image id"),
        ("data/annotations/instances_val2017.json", "[]", "wrong shape"),
        ("data/annotations/instances_val2017.json", '{"images": [], "annotations": [{"bbox": 1}], "categories": []}', "annotation 0"),
    ],
)
def test_bad_coco_json_is_a_one_line_error(data, file, content, message):
    (data / file).write_text(content)
    with pytest.raises(UserInputError, match=message):
        get_task("coco-spatial", data_root=str(data)).items()


def test_image_path_escaping_the_root_is_refused(data):
    import json

    path = data / "data" / "controlled_images_dataset.json"
    entries = json.loads(path.read_text())
    entries[0]["image_path"] = "../outside/mug_left_of_chair.jpeg"
    path.write_text(json.dumps(entries))
    with pytest.raises(UserInputError, match="escapes the data root"):
        get_task("whatsup", data_root=str(data)).items()


def test_missing_and_corrupt_images(data):
    (data / "data" / "val2017" / "000000000285.jpg").unlink()
    with pytest.raises(UserInputError, match="does not exist"):
        get_task("coco-spatial", data_root=str(data)).items()
    (data / "data" / "controlled_images" / "book_right_of_chair.jpeg").write_bytes(b"not a jpeg at all")
    task = get_task("whatsup", data_root=str(data))
    item = next(i for i in task.items() if "data/controlled_images/book_right_of_chair.jpeg" in i.meta["sources"])
    with pytest.raises(UserInputError, match="corrupt or truncated"):
        task.image(item)
