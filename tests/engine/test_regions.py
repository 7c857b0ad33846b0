"""The one token-region API: membership by token centre, raster order, nearest fallback, strips that tile."""

from __future__ import annotations

import torch

from spatialmech.engine import regions
from spatialmech.models.base import ImageTokens
from spatialmech.tasks import get_task
from spatialmech.tasks.base import Item


def grid_tokens(n: int, offset: int = 10) -> ImageTokens:
    """An n x n single-view grid, LM positions in column-major order (so LM and raster order differ)."""
    rows = torch.arange(n).repeat(n)
    cols = torch.arange(n).repeat_interleave(n)
    boxes = torch.stack([cols / n, rows / n, (cols + 1) / n, (rows + 1) / n], dim=1).float()
    return ImageTokens(positions=torch.arange(n * n) + offset, tiles=torch.zeros(n * n, dtype=torch.long),
                       rows=rows, cols=cols, boxes=boxes, grid_shapes=[(n, n)])


def test_centre_membership_and_orders():
    tokens = grid_tokens(4)
    box = (0.0, 0.0, 0.5, 0.5)  # the top-left 2x2 cells
    lm = regions.region_positions(tokens, box)
    raster = regions.region_positions(tokens, box, order="raster")
    assert sorted(lm.tolist()) == sorted(raster.tolist()) and len(lm) == 4
    assert lm.tolist() == sorted(lm.tolist())
    cells = {int(p): (int(r), int(c)) for p, r, c in zip(tokens.positions, tokens.rows, tokens.cols)}
    assert [cells[int(p)] for p in raster] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert regions.region_mask(tokens, box).sum() == 4
    # a token whose centre is on the box's far edge is outside (half-open boxes)
    assert len(regions.region_positions(tokens, (0.0, 0.0, 0.125, 1.0))) == 0


def test_nearest_fallback_is_explicit():
    tokens = grid_tokens(4)
    tiny = (0.70, 0.70, 0.72, 0.72)  # smaller than a token, holds no centre
    assert len(regions.region_positions(tokens, tiny)) == 0
    nearest = regions.region_positions(tokens, tiny, nearest=True)
    cells = {int(p): (int(r), int(c)) for p, r, c in zip(tokens.positions, tokens.rows, tokens.cols)}
    assert [cells[int(p)] for p in nearest] == [(2, 2)]


def test_strips_of_a_row_tile_the_grid_and_hold_their_object():
    task = get_task("squares")
    geometry = task.geometry
    n = geometry.tokens_per_side
    tokens = grid_tokens(n)
    for item in task.items(12, seed=3):
        strips = [regions.strip_box(item, i) for i in range(len(item.objects))]
        sets = [set(regions.region_positions(tokens, box).tolist()) for box in strips]
        for i, cells in enumerate(sets):
            assert len(cells) == geometry.strip_tokens * n
            assert set(regions.region_positions(tokens, regions.object_box(item, i)).tolist()) <= cells
        for i in range(len(sets)):
            for j in range(i + 1, len(sets)):
                assert not sets[i] & sets[j]
        # without recorded cells (other axis, or no meta) the strip comes from the object's own cells
        bare = Item.from_dict({**item.to_dict(), "meta": {}})
        assert [regions.strip_box(bare, i) for i in range(3)] == strips
        no_grid = Item.from_dict({**item.to_dict(), "grid": None})
        assert regions.strip_box(no_grid, 0) is None
