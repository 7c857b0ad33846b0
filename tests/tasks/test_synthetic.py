"""Grid tasks: counts, layout on the token grid, boxes matching pixels, prompts, counterfactuals."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from spatialmech.tasks import GEMMA, QWEN, get_task
from spatialmech.tasks.base import CF_ALONE, CF_BLANK, CF_OPPOSITE_QUERY, CF_REVERSED, Item
from spatialmech.tasks.vocabulary import ALL_WORDS, words_in

GRID_TASKS = ["squares", "shapes", "objects"]
WHITE = (255, 255, 255)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def dominant_colour(region: np.ndarray) -> tuple[int, int, int]:
    """Most common non-white colour of a pixel region."""
    flat = region.reshape(-1, 3)
    flat = flat[(flat != 255).any(axis=1)]
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    return tuple(int(v) for v in colours[counts.argmax()])


@pytest.mark.parametrize(("name", "count"), [("squares", 480), ("shapes", 480), ("objects", 1344)])
def test_item_counts_match_paper(name, count):
    task = get_task(name)
    items = task.items()
    assert len(items) == count == len(task)
    assert len({item.id for item in items}) == count
    by_axis = Counter((item.axis, item.relation) for item in items)
    assert set(by_axis.values()) == {count // 4}


@pytest.mark.parametrize("name", GRID_TASKS)
@pytest.mark.parametrize("geometry", [QWEN, GEMMA])
def test_boxes_match_rendered_pixels(name, geometry):
    task = get_task(name, geometry=geometry)
    for item in task.items(12 if geometry is QWEN else 4, seed=3):
        image = pixels(task.image(item))
        assert image.shape == (geometry.image_size, geometry.image_size, 3)
        outside = np.ones(image.shape[:2], dtype=bool)
        for slot, obj in enumerate(item.objects):
            x0, y0, x1, y1 = obj.box_px
            r0, c0, r1, c1 = obj.box_cells
            p = geometry.pixels_per_token
            assert (x0, y0, x1, y1) == (c0 * p, r0 * p, c1 * p, r1 * p)
            assert (r1 - r0, c1 - c0) == (geometry.object_tokens, geometry.object_tokens)
            assert obj.ordinal == {item.axis: slot}
            region = image[y0:y1, x0:x1]
            assert dominant_colour(region) == tuple(obj.color)
            centre = image[(y0 + y1) // 2, (x0 + x1) // 2]
            assert tuple(int(v) for v in centre) == tuple(obj.color)
            outside[y0:y1, x0:x1] = False
        assert (image[outside] == 255).all(), "pixels outside the object boxes must be white background"


def test_layout_is_centred_and_spaced_on_the_grid():
    task = get_task("squares")
    item = next(i for i in task.items() if i.axis == "horizontal")
    cols = [o.box_cells[1] for o in item.objects]
    assert cols == [1, 5, 9]
    assert {o.box_cells[0] for o in item.objects} == {5}
    vertical = next(i for i in get_task("squares", geometry="gemma").items() if i.axis == "vertical")
    assert [o.box_cells[0] for o in vertical.objects] == [0, 6, 12]
    assert {o.box_cells[1] for o in vertical.objects} == {6}


def test_squares_prompt_and_answer_per_spec():
    task = get_task("squares")
    item = task.layout_item(("Blue", "Green", "Red"), "horizontal", "left")
    assert item.prompt == "The color of the square to the left of the green square is "
    assert item.answer == "Blue"
    assert item.answer_variants == [" Blue", "Blue", " blue", "blue"]
    below = task.layout_item(("Blue", "Green", "Red"), "vertical", "below")
    assert below.prompt == "The color of the square below the green square is "
    assert below.answer == "Red" and below.target == 2 and below.reference == 1


def test_prompts_and_answers_use_only_listed_words():
    vocabulary = set(ALL_WORDS)
    for name in GRID_TASKS:
        for item in get_task(name).items():
            assert set(words_in(item.prompt)) <= vocabulary, item.prompt
            assert item.answer in vocabulary


@pytest.mark.parametrize("name", GRID_TASKS)
def test_deterministic_subsets_and_pixels(name):
    task = get_task(name)
    first = task.items(10, seed=7)
    again = get_task(name).items(10, seed=7)
    assert [i.id for i in first] == [i.id for i in again]
    assert [i.id for i in task.items(10, seed=8)] != [i.id for i in first]
    assert task.image(first[0]).tobytes() == get_task(name).image(again[0]).tobytes()


@pytest.mark.parametrize("name", GRID_TASKS)
def test_item_round_trips_through_json(name):
    import json

    item = get_task(name).items(1)[0]
    back = Item.from_dict(json.loads(json.dumps(item.to_dict())))
    assert back == item


@pytest.mark.parametrize("name", GRID_TASKS)
def test_opposite_query_counterfactual(name):
    task = get_task(name)
    for item in task.items(20, seed=1):
        (cf,) = task.counterfactuals(item, CF_OPPOSITE_QUERY)
        clean_attrs = item.meta["attributes"]
        cf_attrs = cf.item.meta["attributes"]
        assert cf_attrs[1] == clean_attrs[1]
        assert not {cf_attrs[0], cf_attrs[2]} & set(clean_attrs)
        assert cf.item.relation != item.relation and cf.item.axis == item.axis
        assert cf.item.target == 2 - item.target
        assert cf.item.answer == cf_attrs[cf.item.target]
        # the clean object at the counterfactual answer's slot is the "same ordinal" answer
        assert item.objects[cf.item.target].attribute == clean_attrs[2 - item.target]
        assert task.counterfactuals(item, CF_OPPOSITE_QUERY)[0].item == cf.item  # deterministic


@pytest.mark.parametrize("name", GRID_TASKS)
def test_reversed_counterfactual(name):
    task = get_task(name)
    item = task.items(1, seed=2)[0]
    (cf,) = task.counterfactuals(item, CF_REVERSED)
    assert cf.item.meta["attributes"] == item.meta["attributes"][::-1]
    assert cf.item.prompt == item.prompt
    assert cf.item.answer == item.meta["attributes"][2 - item.target]


@pytest.mark.parametrize("geometry", [QWEN, GEMMA])
def test_alone_and_blank_counterfactuals_render(geometry):
    task = get_task("shapes", geometry=geometry)
    item = task.items(1)[0]
    alone = task.counterfactuals(item, CF_ALONE)
    assert [cf.source_object for cf in alone] == [0, 1, 2]
    centre = geometry.centre_cells()
    for cf, obj in zip(alone, item.objects):
        (single,) = cf.item.objects
        assert single.attribute == obj.attribute and single.box_cells == centre
        image = pixels(task.image(cf.item))
        x0, y0, x1, y1 = single.box_px
        assert dominant_colour(image[y0:y1, x0:x1]) == tuple(obj.color)
        mask = np.ones(image.shape[:2], dtype=bool)
        mask[y0:y1, x0:x1] = False
        assert (image[mask] == 255).all()
    (blank,) = task.counterfactuals(item, CF_BLANK)
    assert blank.item.objects == [] and blank.item.prompt == item.prompt
    assert (pixels(task.image(blank.item)) == 255).all()


def test_unknown_counterfactual_kind_is_a_user_error():
    from spatialmech.errors import UserInputError

    task = get_task("squares")
    with pytest.raises(UserInputError, match="unknown counterfactual kind"):
        task.counterfactuals(task.items(1)[0], "sideways")
