"""The authors' counterfactual-pair files read into our items (issue 17 point 4: `--pairs FILE`)."""

from __future__ import annotations

import json

import pytest

from spatialmech.errors import UserInputError
from spatialmech.tasks import get_task
from spatialmech.tasks.base import CF_OPPOSITE_QUERY, CF_REVERSED
from spatialmech.tasks.cf_pairs import load_pairs


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(json.dumps(content, indent=2))
    return path


def slots(item):
    return [o.attribute for o in item.objects]


def test_last_token_pairs(tmp_path):
    """Follows last_token_exp/src/data.py (build_vl_prompts): left/above clean (t0,t1,t2), cf (t4,t1,t3)
    asked the opposite way; right/below clean (t2,t1,t0), cf (t3,t1,t4); answers t0 and t3."""
    path = write(tmp_path, "squares.json", {
        "qwen2-vl-7b": {"left": [["Black", "Gray", "Red", "Blue", "Brown"]],
                        "below": [["Red", "Green", "Blue", "Black", "Gray"]]},
        "gemma-3-4b-it": {"left": [["Blue", "Brown", "Black", "Red", "Gray"]]},
    })
    left, below = load_pairs(path, get_task("squares"), model="qwen2-vl")
    assert left.direction == "left" and left.counterfactual.kind == CF_OPPOSITE_QUERY
    assert slots(left.clean) == ["Black", "Gray", "Red"] and left.clean.relation == "left" and left.clean.answer == "Black"
    cf = left.counterfactual.item
    assert slots(cf) == ["Brown", "Gray", "Blue"] and cf.relation == "right" and cf.answer == "Blue"
    assert cf.meta["clean_id"] == left.clean.id
    assert left.clean.meta["pair_entities"] == ["Black", "Gray", "Red", "Blue", "Brown"]
    assert below.clean.axis == "vertical" and slots(below.clean) == ["Blue", "Green", "Red"] and below.clean.answer == "Red"
    assert slots(below.counterfactual.item) == ["Black", "Green", "Gray"] and below.counterfactual.item.answer == "Black"
    (gemma,) = load_pairs(path, get_task("squares"), model="gemma-3-4b-it")
    assert gemma.clean.answer == "Blue"


def test_criss_cross_pairs_shapes_and_objects(tmp_path):
    """Follows criss_cross_patching/src/data.py: 3-tuples, the counterfactual is the reverse, same
    question; shapes entities are [shape, colour]."""
    path = write(tmp_path, "shapes.json", {"qwen2-vl-7b": {"right": [[["Circle", "Green"], ["Square", "Red"], ["Star", "Black"]]]}})
    (pair,) = load_pairs(path, get_task("shapes"))
    assert pair.counterfactual.kind == CF_REVERSED
    assert slots(pair.clean) == ["Black", "Red", "Green"] and pair.clean.answer == "Green"  # the circle's colour
    assert slots(pair.counterfactual.item) == ["Green", "Red", "Black"] and pair.counterfactual.item.answer == "Black"
    assert pair.clean.prompt == "The color of the shape to the right of the red square is "
    objects = write(tmp_path, "objects.json", {"qwen2-vl-7b": {"above": [["key", "apple", "rose"]]}})
    (pair,) = load_pairs(objects, get_task("objects"))
    assert pair.clean.axis == "vertical" and pair.clean.answer == "key" and pair.counterfactual.item.answer == "rose"


def test_whatsup_pairs(tmp_path, whatsup_root):
    """Follows last_token_exp/cf_pairs/whatsup.json: (side, reference, side, side, side), left/right only."""
    path = write(tmp_path, "whatsup.json", {"qwen2-vl-7b": {"left": [["pot", "chair", "hat", "orange", "beer-bottle"]]}})
    (pair,) = load_pairs(path, get_task("whatsup", data_root=str(whatsup_root)))
    assert pair.clean.answer == "pot" and [o.name for o in pair.clean.objects] == ["pot", "chair", "hat"]
    cf = pair.counterfactual.item
    assert cf.relation == "right" and cf.answer == "orange" and [o.name for o in cf.objects] == ["beer bottle", "chair", "orange"]
    assert cf.meta["sources"] == ["data/controlled_images/beer-bottle_left_of_chair.jpeg", "data/controlled_images/orange_right_of_chair.jpeg"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"pixtral-12b": {"left": [["Orange", "Red", "Blue"]]}}, "'Orange' is not a squares attribute"),
        ({"qwen2-vl-7b": {"left": [["Red", "Blue", "Green"], ["Red", "Blue", "Green", "Gray", "Black"]]}}, "mixes 3- and 5-entity"),
        ({"qwen2-vl-7b": {"sideways": [["Red", "Blue", "Green"]]}}, "not a direction"),
        ({"qwen2-vl-7b": {"left": [["Red", "Blue"]]}}, "not a list of 3"),
        ({"qwen2-vl-7b": {}, "gemma-3-4b-it": {}}, "holds several models"),
        ([1, 2], "wrong shape"),
    ],
)
def test_bad_pair_files_are_one_line_errors(tmp_path, content, message):
    path = write(tmp_path, "squares.json", content)
    with pytest.raises(UserInputError, match=message) as error:
        load_pairs(path, get_task("squares"))
    assert "\n" not in str(error.value)
    with pytest.raises(UserInputError, match="no pairs for model 'llava'"):
        load_pairs(write(tmp_path, "one.json", {"qwen2-vl-7b": {"left": [["Red", "Blue", "Green"]]}}), get_task("squares"), model="llava")
