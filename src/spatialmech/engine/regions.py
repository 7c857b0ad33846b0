"""Which image tokens make up a region of the picture: the one place every experiment asks.

A region is a box in image fractions (x0, y0, x1, y1). A token belongs to it when its centre lies in
the box (`ImageTokens.in_box`, half-open, main view unless a tile is named). On top of that test:

- `region_indices` / `region_positions`: the tokens of one box, in LM order or in raster (row, col)
  order (raster order makes two equal-shaped regions line up token by token, as region swaps need),
  with an explicit `nearest=True` fallback to the single token nearest the box centre for boxes
  smaller than a token (pooled features of small objects);
- `strip_box`: an object's strip, the band across the whole image along the other axis, centred on
  the object and `strip_tokens` wide, so that the strips of a row of objects tile the grid;
- `tiling_strip_box`: the strip criss-cross swaps, as the authors' (criss_cross_patching/src/regions.py):
  the grid tiled into three bands (`GridGeometry.strip_bands`, middle = object + spacing, outer
  strips equal: Qwen 4/4/4, Gemma 5/6/5, Pixtral 5/5/5), the band holding the object;
- `object_box`: an object's own box;
- `touched_indices` / `touched_positions`: the "touched" rule, every token whose cell overlaps the box
  at all (the authors' COCO amplification probe pools these: coco_amplification/src/qwen.py maps a
  pixel box to the patch cells from its first to its last pixel), so a box smaller than a token still
  has the token(s) it lies in.

Why here: the paper's object-versus-strip result rests on exactly which tokens are swapped, probed
or ablated, so all experiments share this one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spatialmech.models.base import ImageTokens
from spatialmech.tasks.base import Item
from spatialmech.tasks.geometry import GridGeometry

Box = tuple[float, float, float, float]
ORDERS = ("lm", "raster")


def object_box(item: Item, index: int) -> Box:
    """Object `index`'s box as image fractions."""
    return item.box_fraction(index)


def _fraction(item: Item, box_px: Sequence[float]) -> Box:
    width, height = item.image_size
    x0, y0, x1, y1 = box_px
    return (x0 / width, y0 / height, x1 / width, y1 / height)


def strip_box(item: Item, index: int, axis: str | None = None) -> Box | None:
    """The strip of object `index` along `axis` (default the item's) as an image-fraction box, or None
    for an item not drawn on a token grid.

    The strip is the full band across the image along the other axis, `strip_tokens` wide and centred
    on the object (`GridGeometry.strip_cells`; grid tasks also record these cells in
    `meta["strip_cells"]`). An object without grid cells gets its pixel box widened by the grid's
    spacing (spacing // 2 tokens before it, the rest after), as the grid tasks draw it.
    """
    if not item.grid:
        return None
    axis = axis or item.axis
    geometry = GridGeometry.from_dict(item.grid)
    recorded = (item.meta or {}).get("strip_cells")
    if recorded is not None and axis == item.axis:
        return _fraction(item, geometry.cells_to_px(tuple(recorded[index])))
    obj = item.objects[index]
    if obj.box_cells is not None:
        return _fraction(item, geometry.cells_to_px(geometry.strip_cells(tuple(obj.box_cells), axis)))
    width, height = item.image_size
    x0, y0, x1, y1 = obj.box_px
    before = (geometry.spacing_tokens // 2) * geometry.pixels_per_token
    after = geometry.spacing_tokens * geometry.pixels_per_token - before
    if axis == "horizontal":
        return _fraction(item, (max(0, x0 - before), 0, min(width, x1 + after), height))
    return _fraction(item, (0, max(0, y0 - before), width, min(height, y1 + after)))


def tiling_strip_box(item: Item, index: int, axis: str | None = None) -> Box | None:
    """The band of `GridGeometry.strip_bands` that holds object `index` (along `axis`, default the
    item's), as an image-fraction box; None for an item not drawn on a token grid or an object
    without grid cells."""
    obj = item.objects[index]
    if not item.grid or obj.box_cells is None:
        return None
    geometry = GridGeometry.from_dict(item.grid)
    return _fraction(item, geometry.cells_to_px(geometry.tiling_strip_cells(tuple(obj.box_cells), axis or item.axis)))


def labelled_box(item: Item, index: int, kind: str) -> Box | None:
    """The hand-labelled `kind` ("object" / "strip") box of end object `index` (0 = left, last = right)
    where the item carries one (`meta["regions"]`, What'sUp composites on the authors' 12x12 and 16x16
    grids, tasks/whatsup_data.py); None otherwise."""
    labelled = ((item.meta or {}).get("regions") or {}).get(kind)
    if not labelled or not item.grid or index not in (0, len(item.objects) - 1):
        return None
    geometry = GridGeometry.from_dict(item.grid)
    return _fraction(item, geometry.cells_to_px(tuple(labelled["left" if index == 0 else "right"])))


def nearest_index(tokens: ImageTokens, box: Sequence[float], tile: int | None = None) -> torch.Tensor:
    """Index (shape (1,)) of the token of `tile` (default main) whose centre is nearest the box centre."""
    tile = tokens.main_tile if tile is None else tile
    candidates = (tokens.tiles == tile).nonzero().reshape(-1)
    boxes = tokens.boxes[candidates].float()
    centres = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)
    target = torch.tensor([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return candidates[int(((centres - target) ** 2).sum(dim=1).argmin())].reshape(1)


def region_indices(
    tokens: ImageTokens, box: Sequence[float], *, order: str = "lm", nearest: bool = False, tile: int | None = None
) -> torch.Tensor:
    """Indices into `tokens` of the tokens whose centre lies in `box`.

    order="lm" keeps LM sequence order; "raster" sorts by grid cell (row, then column). With
    `nearest=True` an empty selection becomes the one token nearest the box centre.
    """
    if order not in ORDERS:
        raise ValueError(f"order {order!r} is not one of {ORDERS}")
    index = tokens.in_box(box, tile).nonzero().reshape(-1)
    if index.numel() == 0 and nearest:
        return nearest_index(tokens, box, tile)
    if order == "raster" and index.numel():
        width = int(tokens.cols.max()) + 1
        index = index[torch.argsort(tokens.rows[index].long() * width + tokens.cols[index].long(), stable=True)]
    return index


def region_positions(
    tokens: ImageTokens, box: Sequence[float], *, order: str = "lm", nearest: bool = False, tile: int | None = None
) -> torch.Tensor:
    """LM positions of the tokens whose centre lies in `box` (see `region_indices` for the options)."""
    return tokens.positions[region_indices(tokens, box, order=order, nearest=nearest, tile=tile)].long()


def touched_indices(tokens: ImageTokens, box: Sequence[float], tile: int | None = None) -> torch.Tensor:
    """Indices into `tokens` (LM order) of the tokens of `tile` (default main) whose cell overlaps `box`.

    Overlap is strict on the far edge (a box ending exactly on a cell border does not touch the next
    cell), as the authors' pixel-to-cell map subtracts an epsilon from the box's far corner. A
    degenerate box touches the cell holding its corner.
    """
    tile = tokens.main_tile if tile is None else tile
    x0, y0, x1, y1 = (float(v) for v in box)
    cells = tokens.boxes.float()
    eps = 1e-9
    overlap_x = (cells[:, 0] < max(x1, x0 + eps)) & (cells[:, 2] > x0)
    overlap_y = (cells[:, 1] < max(y1, y0 + eps)) & (cells[:, 3] > y0)
    return ((tokens.tiles == tile) & overlap_x & overlap_y).nonzero().reshape(-1)


def touched_positions(tokens: ImageTokens, box: Sequence[float], tile: int | None = None) -> torch.Tensor:
    """LM positions of the tokens whose cell overlaps `box` (see `touched_indices`)."""
    return tokens.positions[touched_indices(tokens, box, tile)].long()


def region_mask(tokens: ImageTokens, box: Sequence[float], tile: int | None = None) -> torch.Tensor:
    """Boolean mask over `tokens`: centre in `box` and in `tile` (default main)."""
    return tokens.in_box(box, tile)
