"""ablate-vision on real tiny models of four families: coverage of the grid, identity, effect, schema, resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spatialmech.engine import Engine, image_positions, regions
from spatialmech.errors import UserInputError
from spatialmech.experiments.ablate_vision import CONDITIONS
from spatialmech.experiments.common import encode_items
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.experiments.vision_ablation import (
    BACKGROUND,
    OBJECTS,
    PARTS,
    SITE,
    VisionAblation,
    single_view,
)
from spatialmech.models import adapter_class
from spatialmech.tasks import get_task
from spatialmech.tasks.base import CF_ALONE, CF_BLANK

# family -> tiny() keyword sizes; every grid has >= 5 tokens per side so 3 objects fit.
FAMILIES = {
    "qwen2-vl": {},  # 6x6 grid, 1-token objects
    "qwen2-vl-10": {"tokens_per_side": 10},  # 10x10 grid, 2x2-token objects
    "qwen2.5-vl": {},  # window-ordered merger rows
    "paligemma": {},
    "gemma3": {"tokens_per_side": 6},  # pooled SigLIP grid, bidirectional image attention
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    name = request.param
    adapter = adapter_class(name.removesuffix("-10")).tiny(0, **FAMILIES[name])
    return name, adapter, Engine(adapter)


def _items(adapter, task_name="squares", n=4, seed=3):
    task = get_task(task_name, geometry=adapter.grid_spec())
    items = task.items(n, seed=seed)
    # both axes, so rows and columns of objects are both covered
    assert {item.axis for item in items} == {"horizontal", "vertical"} or n < 2
    return task, items


@pytest.mark.parametrize("name, sizes", [("qwen2-vl", {}), ("qwen2-vl", {"tokens_per_side": 12}), ("gemma3", {"tokens_per_side": 16})])
def test_ablation_covers_every_image_token_exactly_once(name, sizes):
    """Objects + background = all image tokens, disjoint, on 6x6, Qwen's 12x12 and Gemma's 16x16 grids
    (the authors' `range(12*12)` under-ablated 16x16)."""
    adapter = adapter_class(name).tiny(0, **sizes)
    side = adapter.grid_spec().tokens_per_side
    task = get_task("shapes", geometry=adapter.grid_spec())
    k = task.geometry.object_tokens
    items = [task.items(None)[0], task.items(None)[-1]]  # first horizontal, last vertical
    assert {i.axis for i in items} == {"horizontal", "vertical"}
    inputs = encode_items(adapter, task, items)
    plans = VisionAblation(Engine(adapter), task).plan(inputs, items)
    for row, plan in enumerate(plans):
        every = image_positions(inputs)[row]
        assert every.numel() == side * side
        written = plan.positions.tolist()
        assert len(written) == len(set(written)) == side * side
        assert sorted(written) == sorted(every.tolist())
        assert [p.numel() for p in plan.object_positions] == [k * k] * 3
        assert plan.background_positions.numel() == side * side - 3 * k * k
        objects = set(torch.cat(plan.object_positions).tolist())
        assert objects.isdisjoint(plan.background_positions.tolist())
        assert objects | set(plan.background_positions.tolist()) == set(every.tolist())


def test_replacement_values_come_from_alone_and_blank_images(family):
    """Object tokens hold the centred-alone copy's tokens cell by cell, background the blank image's."""
    _, adapter, engine = family
    task, items = _items(adapter, n=2)
    item = items[0]
    inputs = encode_items(adapter, task, [item])
    plan = VisionAblation(engine, task).plan(inputs, [item])[0]
    offset = 0
    for index, positions in enumerate(plan.object_positions):
        alone = next(cf.item for cf in task.counterfactuals(item, CF_ALONE) if cf.source_object == index)
        alone_inputs = encode_items(adapter, task, [alone])
        tokens = single_view(alone_inputs, 0)
        cached = engine.cache(alone_inputs, [SITE], [tokens.positions])[SITE][0]
        expected = cached[regions.region_indices(tokens, alone.box_fraction(0), order="raster")]
        assert torch.equal(plan.values[offset : offset + positions.numel()], expected)
        offset += positions.numel()
    blank = task.counterfactuals(item, CF_BLANK)[0].item
    blank_inputs = encode_items(adapter, task, [blank])
    blank_values = engine.cache(blank_inputs, [SITE], image_positions(blank_inputs))[SITE][0]
    clean_tokens = single_view(inputs, 0)
    cell = {int(p): (int(r), int(c)) for p, r, c in zip(clean_tokens.positions, clean_tokens.rows, clean_tokens.cols)}
    side = clean_tokens.grid_shapes[0][1]
    for position, value in zip(plan.background_positions.tolist(), plan.values[offset:]):
        r, c = cell[position]
        assert torch.equal(value, blank_values[r * side + c])


def test_clean_sources_leave_logits_bit_identical(family):
    """Replacing every token by the clean image's own token is the identity, to the bit (against the same
    engine's unablated forward: with sharing on both run the same shared passes)."""
    _, adapter, engine = family
    task, items = _items(adapter)
    inputs = encode_items(adapter, task, items)
    baseline = engine.logits(inputs)
    torch.testing.assert_close(baseline, adapter.forward(inputs), atol=1e-5, rtol=0)
    for parts in (PARTS, (OBJECTS,), (BACKGROUND,)):
        ablated = VisionAblation(engine, task, parts, sources="clean").logits(inputs, items)
        assert torch.equal(ablated, baseline), parts


def test_real_ablation_changes_logits(family):
    _, adapter, engine = family
    task, items = _items(adapter)
    inputs = encode_items(adapter, task, items)
    baseline = adapter.forward(inputs)
    for parts in (PARTS, (OBJECTS,), (BACKGROUND,)):
        ablated = VisionAblation(engine, task, parts).logits(inputs, items)
        assert float((ablated - baseline).abs().max()) > 1e-6, parts  # far above float noise (0 for identity)


def test_ablation_is_the_same_for_every_item_with_the_same_objects():
    """Ablated inputs keep identity but lose position: items that differ only by where each object is
    (same objects, permuted) become the same input at the object-token *values* level, per object."""
    adapter = adapter_class("qwen2-vl").tiny(0)
    task = get_task("squares", geometry=adapter.grid_spec())
    a = task.layout_item(("Red", "Green", "Blue"), "horizontal", "left")
    b = task.layout_item(("Blue", "Green", "Red"), "horizontal", "left")
    inputs = encode_items(adapter, task, [a, b])
    plan_a, plan_b = VisionAblation(Engine(adapter), task).plan(inputs, [a, b])
    k2 = plan_a.object_positions[0].numel()
    # Red's tokens at slot 0 in a equal Red's tokens at slot 2 in b
    assert torch.equal(plan_a.values[:k2], plan_b.values[2 * k2 : 3 * k2])
    assert torch.equal(plan_a.values[3 * k2 :], plan_b.values[3 * k2 :])  # same blank background


def test_object_block_shape_mismatch_is_a_clear_error():
    adapter = adapter_class("qwen2-vl").tiny(0, tokens_per_side=10)
    task = get_task("squares", geometry=adapter.grid_spec())
    item = task.items(1, seed=0)[0]
    x0, y0, x1, y1 = item.objects[0].box_px
    grown = dataclasses.replace(item.objects[0], box_px=(x0, y0, x1 + task.geometry.pixels_per_token, y1))
    broken = dataclasses.replace(item, objects=[grown, *item.objects[1:]])
    inputs = encode_items(adapter, task, [broken])
    with pytest.raises(UserInputError, match="centred copy"):
        VisionAblation(Engine(adapter), task).plan(inputs, [broken])


def test_experiment_schema_figure_and_resume(tmp_path):
    adapter = adapter_class("qwen2-vl").tiny(0)
    path = run_experiment("ablate-vision", adapter, out_root=tmp_path, options={"n": 3}, progress=False)
    result = load_result(path.parent)
    metrics = result["metrics"]
    assert result["experiment"] == "ablate-vision" and result["task"] == "all"
    for key in ("accuracy", "baseline_accuracy", "objects_only_accuracy", "background_only_accuracy", "n"):
        assert set(metrics[key]) == {"squares", "shapes", "objects"}, key
    assert metrics["n"] == {"squares": 3, "shapes": 3, "objects": 3}
    assert metrics["chance"] == pytest.approx(1 / 3, abs=1e-6)
    assert metrics["tokens_replaced"] == {"grid": "6x6", "image_tokens": 36, "object_tokens": 3, "background_tokens": 33}
    assert all(0.0 <= v <= 1.0 for v in metrics["accuracy"].values())
    assert result["tables"] == {"accuracy": "accuracy.csv", "predictions": "predictions.csv"}
    assert {"accuracy_bars.png", "accuracy_bars.svg"} <= set(result["figures"])
    assert all((path.parent / f).is_file() for f in result["figures"])
    rows = (path.parent / "accuracy.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * len(CONDITIONS)

    # interrupt: drop one finished unit and the result, then resume -> the same result
    units = sorted((path.parent / "units").glob("*-items-*.json"))  # one batch per task (plus the token counts unit)
    assert len(units) == 3
    units[1].unlink()
    path.unlink()
    resumed = run_experiment("ablate-vision", adapter, out_root=tmp_path, options={"n": 3}, resume=True, progress=False)
    again = load_result(resumed.parent)
    assert again["metrics"] == metrics
    assert (path.parent / "predictions.csv").read_text().count("\n") == 1 + 9


def test_single_task_and_bad_n(tmp_path):
    adapter = adapter_class("paligemma").tiny(0)
    path = run_experiment("ablate-vision", adapter, out_root=tmp_path, task="objects", options={"n": 2}, progress=False)
    metrics = load_result(path.parent)["metrics"]
    assert set(metrics["accuracy"]) == {"objects"} and metrics["n"] == {"objects": 2}
    with pytest.raises(UserInputError, match="--n"):
        run_experiment("ablate-vision", adapter, out_root=tmp_path, options={"n": 0}, progress=False)
    with pytest.raises(UserInputError, match="does not run on task"):
        run_experiment("ablate-vision", adapter, out_root=tmp_path, task="scenes", progress=False)
