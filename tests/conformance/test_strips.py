"""Criss-cross strips tile the grid as the authors' criss_cross_patching/src/regions.py (_STRIP_LAYOUT:
middle = object + spacing, outer strips equal: Qwen 4/4/4, Gemma 5/6/5, Pixtral 5/5/5), and a Gemma3
16x16 strip criss-cross runs end to end on a tiny random Gemma3."""

from __future__ import annotations

import pytest

from spatialmech.engine import regions
from spatialmech.experiments import criss_cross
from spatialmech.experiments.common import encode_items
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.models.gemma3 import Adapter as Gemma3
from spatialmech.tasks import get_task
from spatialmech.tasks.geometry import GEMMA, PIXTRAL, QWEN


@pytest.mark.parametrize("geometry, widths", [(QWEN, (4, 4, 4)), (GEMMA, (5, 6, 5)), (PIXTRAL, (5, 5, 5))])
def test_strip_bands_tile_the_grid_as_theirs(geometry, widths):
    """_STRIP_LAYOUT of criss_cross_patching/src/regions.py; every object lies inside its own band."""
    bands = geometry.strip_bands()
    assert tuple(end - start for start, end in bands) == widths
    assert bands[0][0] == 0 and bands[-1][1] == geometry.tokens_per_side
    task = get_task("squares", geometry=geometry)
    item = next(i for i in task.items(None) if i.axis == "horizontal")
    for index, band in enumerate(bands):
        row0, col0, row1, col1 = item.objects[index].box_cells
        assert band[0] <= col0 and col1 <= band[1]
        n = geometry.tokens_per_side
        box = regions.tiling_strip_box(item, index)
        assert box == pytest.approx((band[0] / n, 0.0, band[1] / n, 1.0))


def test_gemma_strips_are_columns_0_to_4_and_11_to_15():
    """The issue's example: on Gemma's 16x16 grid the swapped strips are columns 0-4 and 11-15
    (theirs: range(0, 5) and range(11, 16)), not the 3-token bands around each object."""
    adapter = Gemma3.tiny(tokens_per_side=16, pool_kernel=4, patch_size=14)
    task = get_task("squares", geometry=adapter.grid_spec())
    assert task.geometry.tokens_per_side == 16
    item = next(i for i in task.items(None) if i.axis == "horizontal" and i.relation == "left")
    inputs = encode_items(adapter, task, [item])
    first, last = criss_cross.end_regions(inputs, [item], "strip")
    tokens = inputs.images[0][0]
    where = {int(p): (int(r), int(c)) for p, r, c in zip(tokens.positions, tokens.rows, tokens.cols)}
    assert {where[int(p)][1] for p in first[0]} == set(range(0, 5))
    assert {where[int(p)][1] for p in last[0]} == set(range(11, 16))
    assert len(first[0]) == len(last[0]) == 5 * 16


def test_gemma3_16x16_strip_criss_cross_end_to_end(tmp_path):
    adapter = Gemma3.tiny(tokens_per_side=16, pool_kernel=4, patch_size=14)
    options = {"n": 2, "filter_correct": False, "region": "strip", "layers": "0"}
    path = run_experiment("criss-cross", adapter, out_root=tmp_path, options=options, batch_size=2, progress=False)
    assert path.parent.name == "criss-cross-strip"
    metrics = load_result(path.parent)["metrics"]
    assert metrics["region"] == "strip" and metrics["layers"] == ["emb", 0] and metrics["n_pairs"] == 2
    assert len(metrics["flip_rate"]) == 2 and 0.0 <= metrics["max_flip_rate"] <= 1.0
