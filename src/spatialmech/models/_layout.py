"""How images are laid out: in the prompt (placeholder expansion) and in the original image (views).

Every family here feeds the LM one or more *views* of an image (a centre crop, a grid of tiles plus a
global thumbnail, ...). Each view is resized uniformly per axis from a rectangle of the original
image, so its tokens form a raster grid that splits that rectangle evenly. Describing a view by
(rectangle, grid shape) is enough to give every token its cell and its box of the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from spatialmech.models._hf_common import image_slot_error, split_image_positions, tokenize_left_padded
from spatialmech.models.base import BatchInputs, ImageTokens

T = TypeVar("T")

Box = tuple[float, float, float, float]
FULL_IMAGE: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class View:
    """One view of an image: `name`, the rectangle of the original image it shows (fractions, may reach
    outside [0, 1] where the processor padded), and its (rows, cols) token grid in raster order."""

    name: str
    box: Box
    n_rows: int
    n_cols: int

    @property
    def num_tokens(self) -> int:
        return self.n_rows * self.n_cols


def views_image_tokens(positions: torch.Tensor, views: Sequence[View]) -> ImageTokens:
    """ImageTokens for an image whose LM tokens are the views' grids one after another (views in LM order).

    Token boxes are clipped to the image: a token that lies in padding gets an empty box on the border.
    """
    expected = sum(view.num_tokens for view in views)
    if positions.numel() != expected:
        raise RuntimeError(f"{positions.numel()} image positions for views holding {expected} tokens")
    tiles, rows, cols, boxes = [], [], [], []
    for tile, view in enumerate(views):
        index = torch.arange(view.num_tokens)
        row, col = index // view.n_cols, index % view.n_cols
        x0, y0, x1, y1 = view.box
        cell_w, cell_h = (x1 - x0) / view.n_cols, (y1 - y0) / view.n_rows
        box = torch.stack(
            [x0 + col * cell_w, y0 + row * cell_h, x0 + (col + 1) * cell_w, y0 + (row + 1) * cell_h], dim=1
        )
        tiles.append(torch.full((view.num_tokens,), tile, dtype=torch.long))
        rows.append(row)
        cols.append(col)
        boxes.append(box.double().clamp(0.0, 1.0).float())
    return ImageTokens(
        positions=positions.clone().long(),
        tiles=torch.cat(tiles),
        rows=torch.cat(rows),
        cols=torch.cat(cols),
        boxes=torch.cat(boxes),
        grid_shapes=[(view.n_rows, view.n_cols) for view in views],
        tile_names=[view.name for view in views],
    )


def tile_grid_views(n_tile_rows: int, n_tile_cols: int, tokens_per_side: int, with_thumbnail: bool) -> list[View]:
    """Views of an image resized onto an (n_tile_rows x n_tile_cols) grid of equal tiles, row-major, plus
    (optionally) the whole image resized to one tile as the global thumbnail, last (Idefics3, InternVL)."""
    views = [
        View(
            f"tile_r{r}_c{c}",
            (c / n_tile_cols, r / n_tile_rows, (c + 1) / n_tile_cols, (r + 1) / n_tile_rows),
            tokens_per_side,
            tokens_per_side,
        )
        for r in range(n_tile_rows)
        for c in range(n_tile_cols)
    ]
    if with_thumbnail:
        views.append(View("global", FULL_IMAGE, tokens_per_side, tokens_per_side))
    return views


def left_padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, as `generate` computes them.

    Without them a left-padded row's tokens sit at shifted positions, so a prompt's logits would depend
    on the longest prompt in its batch.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def expand_placeholders(text: str, placeholder: str, expansions: Sequence[str]) -> str:
    """Replace the k-th `placeholder` of a rendered chat by `expansions[k]` (one per image, in order)."""
    parts = text.split(placeholder)
    if len(parts) - 1 != len(expansions):
        raise image_slot_error(len(parts) - 1, len(expansions), placeholder)
    out = [parts[0]]
    for expansion, rest in zip(expansions, parts[1:]):
        out.extend([expansion, rest])
    return "".join(out)


def split_per_row(flat: Sequence[T], rows: Sequence[Sequence[Any]]) -> list[list[T]]:
    """Regroup one entry per image of the whole batch (processor order) into per-row lists."""
    out, cursor = [], 0
    for row in rows:
        out.append(list(flat[cursor : cursor + len(row)]))
        cursor += len(row)
    return out


def views_batch(
    adapter: Any,
    texts: Sequence[str],
    views: Sequence[Sequence[Sequence[View]]],
    pixel_inputs: dict[str, Any],
    prompts: Sequence[str],
) -> BatchInputs:
    """The batch of expanded prompts `texts` (left padded, padding-aware position ids) whose image b, i
    is laid out as `views[b][i]`: each image's LM positions mapped onto its views' grids."""
    encoded = tokenize_left_padded(adapter.tokenizer, texts)
    counts = [[sum(view.num_tokens for view in image_views) for image_views in row] for row in views]
    positions = split_image_positions(encoded["input_ids"], adapter.image_token_id, counts)
    images: list[list[ImageTokens]] = [
        [views_image_tokens(pos, image_views) for pos, image_views in zip(row_positions, row_views)]
        for row_positions, row_views in zip(positions, views)
    ]
    model_kwargs = {**encoded, "position_ids": left_padded_position_ids(encoded["attention_mask"]), **pixel_inputs}
    return BatchInputs(model_kwargs=model_kwargs, images=images, prompts=list(prompts))
