"""`run behavior` writes its figure; strict scoring's chance line is the items' `strict_chance` (0.25 for
COCO-spatial's two options, as the authors' coco_amplification/src/common.py scores both orders)."""

from __future__ import annotations

from spatialmech.experiments.behavior import chance_level
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.models.qwen2_vl import Adapter as Qwen2VL
from spatialmech.tasks import get_task

from .conftest import write_coco


def test_strict_chance_is_a_quarter_on_coco_spatial(tmp_path):
    task = get_task("coco-spatial", data_root=str(write_coco(tmp_path / "coco")))
    items = task.items()
    assert items and all(item.meta["strict_chance"] == 0.25 for item in items)
    assert chance_level(items) == 0.25


def test_run_behavior_writes_its_figure(tmp_path):
    adapter = Qwen2VL.tiny(tokens_per_side=12)
    path = run_experiment("behavior", adapter, out_root=tmp_path, task="squares", options={"n": 4}, progress=False)
    result = load_result(path.parent)
    assert result["figures"] == ["accuracy.png", "accuracy.svg"]
    assert all((path.parent / name).stat().st_size > 0 for name in result["figures"])
    assert abs(result["metrics"]["chance"] - 1 / 3) < 1e-9
