"""The probe's split as the authors' probing/src/data.py: every ordering of the task per axis, 75/25 by
image (objects 8P3 = 336 -> 252/84; squares and shapes 6P3 = 120 -> 90/30)."""

from __future__ import annotations

import pytest

from spatialmech.experiments import probe
from spatialmech.experiments.probing import held_out_count
from spatialmech.tasks import get_task
from spatialmech.tasks.geometry import QWEN


@pytest.mark.parametrize("task_name, per_axis, test", [("objects", 336, 84), ("squares", 120, 30), ("shapes", 120, 30)])
def test_all_orderings_split_75_25(task_name, per_axis, test):
    config = probe.config_from({})
    assert config["images_per_axis"] is None and config["test_fraction"] == 0.25
    images = probe.select_images(get_task(task_name, geometry=QWEN).items(None), config["images_per_axis"], seed=0)
    assert {axis: len(items) for axis, items in images.items()} == {"horizontal": per_axis, "vertical": per_axis}
    assert held_out_count(per_axis, config["test_fraction"]) == test  # objects: 252 train / 84 test
    assert probe.config_from({"n": 10})["images_per_axis"] == 10  # --n caps the images per axis
