"""The `scenes` task: clear relations, boxes on the drawn objects, clutter, determinism, counterfactuals."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from spatialmech.tasks import get_task
from spatialmech.tasks.base import CF_ALONE, CF_BLANK, CF_OPPOSITE_QUERY, CF_REVERSED, OPPOSITE, Item
from spatialmech.tasks.prompts import strict_prompts
from spatialmech.tasks.scenes import MAX_OCCLUDED_FRACTION, relation_holds
from spatialmech.tasks.vocabulary import ALL_WORDS, words_in


@pytest.fixture(scope="module")
def task():
    return get_task("scenes")


@pytest.fixture(scope="module")
def items(task):
    return task.items(60, seed=0)


def colour_fraction(image: np.ndarray, box, colour, tolerance: int = 40) -> float:
    x0, y0, x1, y1 = box
    region = image[y0:y1, x0:x1].astype(int)
    close = np.abs(region - np.array(colour)).max(axis=-1) <= tolerance
    return float(close.mean())


def test_questions_are_clear_and_balanced(items):
    relations = Counter(item.relation for item in items)
    assert set(relations) == {"left", "right", "above", "below"}
    for item in items:
        subject, reference = item.objects[item.target], item.objects[item.reference]
        assert relation_holds(subject.box_px, reference.box_px, item.relation)
        assert item.answer == item.relation and item.options in (["left", "right"], ["above", "below"])
        assert subject.name != reference.name
        assert len({o.name for o in item.objects}) == len(item.objects), "named objects must be unique in the picture"
        assert subject.ordinal[item.axis] == (0 if item.relation in ("left", "above") else 1)
        assert f"which side is the {subject.name} on" in item.prompt and f"Using the {reference.name} " in item.prompt


def test_prompts_offer_both_option_orders(items):
    item = next(i for i in items if i.axis == "horizontal")
    natural, swapped = strict_prompts(item, "qwen")
    assert natural == item.prompt and natural.endswith("left or right.") and swapped.endswith("right or left.")
    assert item.meta["prompt_swapped"] == swapped
    gemma = strict_prompts(item, "gemma")
    assert gemma[0].startswith("Is the ") and "to the left or to the right of the" in gemma[0]
    vertical = next(i for i in items if i.axis == "vertical")
    assert strict_prompts(vertical)[1].endswith("below or above.")
    vocabulary = set(ALL_WORDS)
    for item in items:
        for prompt in [*strict_prompts(item, "qwen"), *strict_prompts(item, "gemma")]:
            assert set(words_in(prompt)) <= vocabulary, prompt


def test_boxes_cover_the_drawn_objects(task, items):
    for item in items:
        image = np.asarray(task.image(item))
        assert image.shape == (336, 336, 3)
        for obj in item.objects[:2]:
            assert colour_fraction(image, obj.box_px, obj.color) > 0.1, (item.id, obj.name)
            r0, c0, r1, c1 = obj.box_cells
            x0, y0, x1, y1 = obj.box_px
            assert c0 * 28 <= x0 < x1 <= c1 * 28 and r0 * 28 <= y0 < y1 <= r1 * 28


def test_scenes_have_clutter_and_bounded_occlusion(items):
    clutter = Counter(len(item.objects) - 2 for item in items)
    assert set(clutter) == {0, 1, 2, 3}
    occluded = 0
    for item in items:
        order = item.meta["draw_order"]
        for index in order[order.index(1) + 1 :]:
            clutter_box = item.objects[index].box_px
            for named in item.objects[:2]:
                x0, y0, x1, y1 = named.box_px
                overlap = max(0, min(x1, clutter_box[2]) - max(x0, clutter_box[0])) * max(
                    0, min(y1, clutter_box[3]) - max(y0, clutter_box[1])
                )
                assert overlap <= MAX_OCCLUDED_FRACTION * (x1 - x0) * (y1 - y0) + 1
                occluded += overlap > 0
    assert occluded > 0, "some scenes must partially occlude a named object"


def test_background_is_textured_not_flat(task, items):
    image = np.asarray(task.image(items[0])).astype(float)
    assert image.std() > 5
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000


def test_deterministic_and_prefix_stable(task):
    first = task.items(5, seed=3)
    assert [i.to_dict() for i in get_task("scenes").items(5, seed=3)] == [i.to_dict() for i in first]
    assert [i.id for i in task.items(8, seed=3)[:5]] == [i.id for i in first]
    assert task.items(5, seed=4)[0].to_dict() != first[0].to_dict()
    assert task.image(first[0]).tobytes() == get_task("scenes").image(first[0]).tobytes()
    assert len(get_task("scenes").items()) == 500


def test_round_trip_and_gemma_size(items):
    back = Item.from_dict(json.loads(json.dumps(items[0].to_dict())))
    assert back == items[0]
    gemma = get_task("scenes", geometry="gemma")
    item = gemma.items(1)[0]
    assert item.image_size == (896, 896) and gemma.image(item).size == (896, 896)


def test_counterfactuals(task, items):
    item = items[1]
    (opposite,) = task.counterfactuals(item, CF_OPPOSITE_QUERY)
    assert opposite.item.answer == OPPOSITE[item.answer]
    assert opposite.item.objects[opposite.item.target].name == item.objects[item.reference].name
    assert task.image(opposite.item).tobytes() == task.image(item).tobytes()

    (reversed_,) = task.counterfactuals(item, CF_REVERSED)
    assert reversed_.item.prompt == item.prompt and reversed_.item.answer == OPPOSITE[item.answer]
    subject = reversed_.item.objects[reversed_.item.target]
    assert subject.box_px == item.objects[item.reference].box_px
    assert relation_holds(subject.box_px, reversed_.item.objects[reversed_.item.reference].box_px, reversed_.item.relation)
    assert item.objects[item.target].box_px != subject.box_px, "the clean item must be left untouched"

    alone = task.counterfactuals(item, CF_ALONE)
    assert [cf.source_object for cf in alone] == [item.target, item.reference]
    for cf in alone:
        (obj,) = cf.item.objects
        image = np.asarray(task.image(cf.item))
        assert colour_fraction(image, obj.box_px, obj.color, tolerance=2) > 0.1
        cx, cy = (obj.box_px[0] + obj.box_px[2]) / 2, (obj.box_px[1] + obj.box_px[3]) / 2
        assert abs(cx - 168) <= 1 and abs(cy - 168) <= 1
    (blank,) = task.counterfactuals(item, CF_BLANK)
    assert (np.asarray(task.image(blank.item)) == 255).all()
