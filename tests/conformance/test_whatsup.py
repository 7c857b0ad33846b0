"""What'sUp as the authors build it (issue 17 point 5), on fixtures in the real files' forms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spatialmech.cli import main
from spatialmech.models.registry import bundled_model_path
from spatialmech.tasks import get_task
from spatialmech.tasks.geometry import GEMMA, PIXTRAL, QWEN
from spatialmech.tasks.whatsup import load_controlled
from spatialmech.tasks.whatsup_data import OBJECT_REGIONS, SIDE_OBJECTS, STRIP_REGIONS, box_indices
from spatialmech.tasks.whatsup_stitched import stitch

from .conftest import REFERENCE_COLOR, SIDE_COLORS


class SpaceTokenizer:
    """A stand-in tokenizer (no model): hyphenated names are several tokens, capitalised 'Hat' too."""

    def tokenize(self, text: str) -> list[str]:
        if text == "Hat":
            return ["H", "at"]
        return text.replace("-", " - ").split()


def test_side_object_lists_are_the_authors():
    """Follows behavioral_analysis/src/tasks/whatsup.py (MIDDLE_OBJECTS): 44 / 29 / 31 names."""
    assert {r: len(v) for r, v in SIDE_OBJECTS.items()} == {"chair": 44, "table": 29, "armchair": 31}
    assert SIDE_OBJECTS["chair"][:3] == ("bottle-of-orange-juice", "oven-mitt", "toy-cactus")
    assert "chair2" in SIDE_OBJECTS["table"] and SIDE_OBJECTS["armchair"][-1] == "laptop"


def test_one_token_filter_counts_dropped_names_and_pairs_every_ordering(whatsup_root):
    """Follows behavioral_analysis/src/tasks/whatsup.py: names kept only if one token lower-case and
    capitalised; every ordered pair (permutations of 2), both directions."""
    task = get_task("whatsup", data_root=str(whatsup_root), tokenizer=SpaceTokenizer())
    items = task.items()
    chair = task.stats["side_objects"]["chair"]
    assert chair["kept"] == ["pot", "orange"]  # list order; hat: 'Hat' is two tokens
    assert sorted(chair["dropped_multi_token"]) == ["beer-bottle", "hat"]
    assert "mug" in chair["dropped_no_photos"]  # only its left-of photo exists
    assert task.stats["side_objects"]["armchair"]["kept"] == ["apple", "rose"]
    assert task.stats["side_objects"]["table"]["kept"] == ["orange"]  # one name: no pair
    # chair 2P2 + armchair 2P2 = 4 per direction.
    assert task.stats["items_per_direction"] == 4 and len(items) == 8 and task.stats["one_token_rule"] == "authors"
    by_id = {i.id: i for i in items}
    left = by_id["whatsup/chair/pot-vs-orange/left"]
    right = by_id["whatsup/chair/pot-vs-orange/right"]
    assert left.answer == right.answer == "pot"
    assert left.meta["sources"] == ["data/controlled_images/pot_left_of_chair.jpeg", "data/controlled_images/orange_right_of_chair.jpeg"]
    assert right.meta["sources"] == ["data/controlled_images/orange_left_of_chair.jpeg", "data/controlled_images/pot_right_of_chair.jpeg"]
    assert left.prompt.startswith("The object on the floor to the left of the chair is a(n)")


def test_composite_is_two_halves_and_shows_the_reference_once(whatsup_root):
    """Follows shared/whatsup.py (stitch_horizontal): both photos resized to size x size (bilinear), left
    half of the left-of photo + right half of the right-of photo."""
    task = get_task("whatsup", data_root=str(whatsup_root))
    item = next(i for i in task.items() if i.id == "whatsup/chair/pot-vs-hat/left")
    image = np.asarray(task.image(item)).astype(int)
    assert image.shape == (336, 336, 3) and tuple(item.image_size) == (336, 336)
    left = np.asarray(Image.open(whatsup_root / item.meta["sources"][0]).convert("RGB").resize((336, 336), Image.Resampling.BILINEAR))
    right = np.asarray(Image.open(whatsup_root / item.meta["sources"][1]).convert("RGB").resize((336, 336), Image.Resampling.BILINEAR))
    assert (image[:, :168] == left[:, :168]).all() and (image[:, 168:] == right[:, 168:]).all()
    assert (np.asarray(stitch(Image.fromarray(left.astype(np.uint8)), Image.fromarray(right.astype(np.uint8)), 336)) == image).all()
    # The reference: one brown block across the midline (columns ~126..210), nowhere else.
    row = image[200]
    brown = np.abs(row - np.array(REFERENCE_COLOR)).max(axis=1) < 30
    columns = np.flatnonzero(brown)
    assert columns.min() > 110 and columns.max() < 230 and (np.diff(columns) == 1).all()
    for x, side in ((40, "pot"), (290, "hat")):
        assert np.abs(image[170, x] - np.array(SIDE_COLORS[side])).max() < 30


@pytest.mark.parametrize(("geometry", "px"), [(QWEN, 336), (GEMMA, 896), (PIXTRAL, 512)])
def test_composite_size_per_model(whatsup_root, geometry, px):
    """Follows behavioral_analysis/src/tasks/whatsup.py (WHATSUP_IMAGE_SIZE): 336 / 896 / 512 px."""
    task = get_task("whatsup", geometry=geometry, data_root=str(whatsup_root))
    item = task.items(1)[0]
    assert tuple(item.image_size) == (px, px) and task.image(item).size == (px, px)


def test_hand_labelled_regions_are_exposed(whatsup_root):
    """Follows criss_cross_patching/src/regions.py (WHATSUP_OBJECT_REGIONS / WHATSUP_STRIP_REGIONS)."""
    assert box_indices(OBJECT_REGIONS[12]["chair"]["left"], 12) == [12 * r + c for r in range(8, 11) for c in range(1, 4)]
    assert box_indices(STRIP_REGIONS[16]["table"]["right"], 16) == [16 * r + c for r in range(16) for c in range(12, 16)]
    qwen = get_task("whatsup", geometry=QWEN, data_root=str(whatsup_root)).items()
    item = next(i for i in qwen if i.id.startswith("whatsup/armchair/"))
    assert item.meta["regions"]["object"] == {"left": (9, 1, 11, 4), "right": (9, 8, 11, 11)}
    gemma = get_task("whatsup", geometry=GEMMA, data_root=str(whatsup_root)).items()
    assert gemma[0].meta["regions"]["strip"]["left"] == (0, 0, 16, 6)
    pixtral = get_task("whatsup", geometry=PIXTRAL, data_root=str(whatsup_root)).items()
    assert "regions" not in pixtral[0].meta  # they labelled no Pixtral grid for criss-cross


def test_probe_boxes_and_images_are_the_authors(whatsup_root):
    """Follows probing/src/whatsup.py: WHATSUP_BBOX_NORM (64ths of the image) mapped by
    bbox_norm_to_patches (start floored, end rounded, >= 1 cell) for every object, on any grid; the
    probe's images are every (left, ref, right) with both photos, shuffled with seed 42, first 120."""
    import random
    from itertools import permutations

    from spatialmech.tasks.whatsup_data import probe_box

    assert probe_box("chair", "left", 12) == (9, 2, 11, 4)  # rows 48/64*12=9 .. round(11.25)=11; cols 2.25 -> 2 .. 4.5 -> 4
    assert probe_box("chair", "middle", 12) == (3, 4, 11, 8)
    assert probe_box("table", "middle", 16) == (5, 4, 15, 12)
    assert probe_box("armchair", "right", 15) == (12, 10, 14, 13)
    qwen = get_task("whatsup", geometry=QWEN, data_root=str(whatsup_root))
    item = next(i for i in qwen.items() if i.id.startswith("whatsup/chair/"))
    assert [o.box_cells for o in item.objects] == [probe_box("chair", p, 12) for p in ("left", "middle", "right")]
    assert item.objects[1].box_px == (4 * 28, 3 * 28, 8 * 28, 11 * 28)
    # any object with both photos (beer-bottle too, whatever the tokenizer), in their shuffled order
    expected = [(a, "chair", b) for a, b in permutations(sorted(["pot", "hat", "orange", "beer-bottle"]), 2)]
    expected += [(a, "armchair", b) for a, b in permutations(["apple", "rose"], 2)]
    random.Random(42).shuffle(expected)
    probe = qwen.probe_items()
    assert [(i.meta["side_names"][0], i.id.split("/")[1], i.meta["side_names"][1]) for i in probe] == expected
    assert all(i.relation == "left" and i.answer == i.objects[0].name for i in probe)


def test_real_image_paths_resolve_from_repo_root_or_data_folder(whatsup_root):
    """What'sUp's dataset_zoo/aro_datasets.py: image_path 'data/controlled_images/...' from the repo root."""
    from_root = get_task("whatsup", data_root=str(whatsup_root)).items()
    from_data = get_task("whatsup", data_root=str(whatsup_root / "data")).items()
    assert [i.id for i in from_root] == [i.id for i in from_data]
    data_task = get_task("whatsup", data_root=str(whatsup_root / "data"))
    item = data_task.items(1)[0]
    assert item.meta["sources"][0].startswith("controlled_images/") and data_task.image(item).size == (336, 336)


def test_subset_b_names_parse(whatsup_root):
    """What'sUp's dataset_zoo/aro_datasets.py: subset B names use 'in-front_of' and 'behind'."""
    records, skipped = load_controlled(whatsup_root, "B")
    assert skipped == {"unparsed_name": 0}
    assert [(r.subject, r.relation, r.reference) for r in records] == [
        ("cube", "left", "sphere"), ("cube", "in front", "sphere"), ("sphere", "behind", "cube")]


@pytest.mark.skipif(not (bundled_model_path() / "config.json").is_file(), reason="bundled model not installed")
@pytest.mark.parametrize("data_folder", ["", "data"])
def test_bundled_model_evaluates_whatsup_from_either_root(whatsup_root, data_folder, capsys):
    """End to end on the bundled model (its tokenizer splits most names: dropped names are reported)."""
    assert main(["eval", "--task", "whatsup", "--data", str(whatsup_root / data_folder), "--n", "4"]) == 0
    captured = capsys.readouterr()
    assert "whatsup: accuracy" in captured.out and "names dropped as several tokens" in captured.err
