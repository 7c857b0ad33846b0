"""Training data: held out from evaluation by construction, with labels that describe the image."""

from __future__ import annotations

import random

import numpy as np

from spatialmech.tasks import get_task
from spatialmech.tasks.geometry import QWEN
from spatialmech.training.data import (
    EVALUATION_LAYOUT_SHARE,
    GRID_TASKS,
    IGNORE,
    SCENES_TRAIN_SEED_BASE,
    SIDES,
    TrainingSource,
    class_vocabulary,
    data_shares,
    dense_labels,
    grid_questions,
    is_held_out_combination,
    nearest_neighbour,
    random_grid_item,
    strip_ordinal_labels,
)


def _layout(item) -> tuple:
    return (item.axis, tuple(tuple(o.box_px) for o in item.objects))


def test_held_out_evaluation_items_never_appear_in_training() -> None:
    """Grid tasks evaluate on one fixed layout. Training uses it only with combinations that are not
    held out; every other training image is in another layout."""
    rng = random.Random(0)
    for name in GRID_TASKS:
        task = get_task(name, geometry=QWEN)
        items = task.items()
        held_out = [item for item in items if is_held_out_combination(item.meta["attributes"])]
        assert 0.15 < len(held_out) / len(items) < 0.35
        evaluation_layouts = {_layout(item) for item in items}
        assert len(evaluation_layouts) == 2  # one horizontal and one vertical layout
        held_out_images = {(_layout(item), tuple(item.meta["attributes"])) for item in held_out}
        training = [random_grid_item(task, rng, 3) for _ in range(2000)]
        in_layout = [item for item in training if _layout(item) in evaluation_layouts]
        assert abs(len(in_layout) / len(training) - EVALUATION_LAYOUT_SHARE) < 0.05
        assert not any(is_held_out_combination([o.attribute for o in item.objects]) for item in in_layout)
        assert not held_out_images & {(_layout(item), tuple(o.attribute for o in item.objects)) for item in training}
        # the other layouts are many and varied
        assert len({_layout(item) for item in training if _layout(item) not in evaluation_layouts}) > 30


def test_questions_ask_for_the_nearest_neighbour_on_the_asked_side() -> None:
    rng = random.Random(1)
    task = get_task("squares", geometry=QWEN)
    for _ in range(50):
        item = random_grid_item(task, rng, rng.randint(2, 3))
        questions = grid_questions(task, item)
        assert len(questions) == 2 * (len(item.objects) - 1)
        order = sorted(range(len(item.objects)), key=lambda i: item.objects[i].box_px[0 if item.axis == "horizontal" else 1])
        for prompt, answer in questions:
            reference = next(o for o in item.objects if f" {o.attribute.lower()} square" in prompt)
            slot = order.index(item.objects.index(reference))
            step = -1 if ("left" in prompt or "above" in prompt) else 1
            assert item.objects[order[slot + step]].attribute == answer


def test_dense_labels_mark_object_cells_and_their_neighbours() -> None:
    task = get_task("objects", geometry=QWEN)
    vocabulary = class_vocabulary(GRID_TASKS)
    item = task.items(1, seed=0)[0]  # horizontal canonical layout: objects in slots 0, 1, 2
    cells, neighbours = dense_labels(item, vocabulary, QWEN)
    assert (cells > 0).sum() == 3 * 4  # three 2x2-token objects
    for index, obj in enumerate(item.objects):
        row0, col0, row1, col1 = obj.box_cells
        assert (cells[row0:row1, col0:col1] == vocabulary.of("objects", obj.attribute)).all()
        for side_index, side in enumerate(SIDES):
            j = nearest_neighbour(item.objects, index, side)
            expected = 0 if j is None else vocabulary.of("objects", item.objects[j].attribute)
            assert (neighbours[row0:row1, col0:col1, side_index] == expected).all()
    assert (neighbours[cells == 0] == IGNORE).all()  # background cells are not told about neighbours


def test_scenes_training_items_come_from_seeds_disjoint_from_evaluation() -> None:
    source = TrainingSource(("scenes",), seed=0)
    evaluation_ids = {item.id for item in get_task("scenes").items(50, seed=0)}
    rng = random.Random(0)
    for _ in range(5):
        example = source.sample(rng)
        assert example.task == "scenes"
        assert len(example.questions) == 2  # both option orders of the forced-choice question
        assert example.questions[0][1] == example.questions[1][1]
        assert example.cell_labels.max() > 0
    assert SCENES_TRAIN_SEED_BASE > 1000
    assert all(str(SCENES_TRAIN_SEED_BASE) not in item_id for item_id in evaluation_ids)
    assert np.all(example.neighbour_labels == IGNORE)
    assert np.all(example.ordinal_labels == IGNORE)  # scenes are not laid out on one line


def test_strip_ordinal_labels_mark_each_objects_whole_strip() -> None:
    """Every cell across the image (background too) whose position along the axis falls inside an
    object's extent gets that object's 1-based ordinal; cells between strips get 0."""
    rng = random.Random(3)
    task = get_task("squares", geometry=QWEN)
    for _ in range(20):
        item = random_grid_item(task, rng, rng.randint(2, 3))
        labels = strip_ordinal_labels(item, QWEN)
        along = 1 if item.axis == "horizontal" else 0
        expected = np.zeros(QWEN.tokens_per_side, dtype=np.int64)
        for obj in item.objects:
            start, end = obj.box_cells[along], obj.box_cells[along + 2]
            expected[start:end] = obj.ordinal[item.axis] + 1
        profile = labels if along == 1 else labels.T
        assert (profile == expected[None, :]).all()  # constant across the image: a strip
        assert sorted(set(expected[expected > 0])) == list(range(1, len(item.objects) + 1))


def test_grid_images_hold_three_objects_at_the_recorded_share() -> None:
    """Relation questions about the middle object are the only ones that need a direction, so most
    grid images hold three objects; the curriculum's two-object level still draws only two."""
    source = TrainingSource(GRID_TASKS, seed=0)
    rng = random.Random(1)
    counts = [source.sample(rng).n_objects for _ in range(400)]
    assert set(counts) == {2, 3}
    assert abs(counts.count(3) / len(counts) - data_shares()["three_object_share"]) < 0.06
    assert {source.sample(rng, max_objects=2).n_objects for _ in range(20)} == {2}
