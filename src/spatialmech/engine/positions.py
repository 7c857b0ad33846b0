"""Positions: callers always speak LM sequence positions, per batch row.

A *positions* value is one 1-D LongTensor of LM positions per batch row (after left padding, as in
`ImageTokens.positions`). Sites in the `image_tokens` space (`projector.out`, `vision.out`) hold rows
of all images of the batch concatenated; `ImageRowMap` translates LM positions to those rows, so the
same positions address the residual stream and the projector output alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spatialmech.errors import UserInputError
from spatialmech.models.base import BatchInputs, HookPoint

# What callers may pass: per-row tensors/lists, or one tensor/list applied to every row.
PositionsLike = Sequence[torch.Tensor] | Sequence[Sequence[int]] | torch.Tensor | Sequence[int]


def as_positions(positions: PositionsLike, inputs: BatchInputs, what: str = "positions") -> list[torch.Tensor]:
    """Normalise to one 1-D LongTensor per batch row, checked against the batch's sequence length."""
    batch, seq_len = inputs.batch_size, inputs.seq_len
    if isinstance(positions, torch.Tensor):
        if positions.dim() == 2 and positions.shape[0] == batch:
            rows = list(positions)
        elif positions.dim() <= 1:
            rows = [positions.reshape(-1)] * batch
        else:
            raise UserInputError(
                f"{what} tensor has shape {tuple(positions.shape)}", f"pass a 1-D tensor or one row per batch item ({batch})"
            )
    elif len(positions) > 0 and all(isinstance(p, int) for p in positions):
        rows = [torch.tensor(list(positions), dtype=torch.long)] * batch
    else:
        rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in positions]
        if len(rows) != batch:
            raise UserInputError(f"{what} has {len(rows)} rows for a batch of {batch}", "pass one entry per batch row")
    out = []
    for row, pos in enumerate(rows):
        pos = pos.to(dtype=torch.long, device="cpu")
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= seq_len):
            raise UserInputError(
                f"{what} of row {row} reach outside the sequence (0..{seq_len - 1}): {pos.tolist()}",
                "use LM positions of this batch, e.g. from ImageTokens.positions or last_position()",
            )
        out.append(pos)
    return out


def last_position(inputs: BatchInputs) -> list[torch.Tensor]:
    """The next-token position of every row (inputs are left padded, so it is the last index)."""
    return [torch.tensor([inputs.seq_len - 1], dtype=torch.long) for _ in range(inputs.batch_size)]


def image_positions(inputs: BatchInputs, image: int | None = None) -> list[torch.Tensor]:
    """LM positions of all image tokens of every row (or of image number `image` of each row)."""
    out = []
    for row, per_row in enumerate(inputs.images):
        chosen = per_row if image is None else [per_row[image]] if image < len(per_row) else None
        if chosen is None:
            raise UserInputError(f"row {row} has {len(per_row)} images, no image {image}", "pick an existing image index")
        out.append(torch.cat([t.positions for t in chosen]) if chosen else torch.zeros(0, dtype=torch.long))
    return out


def positions_in_boxes(
    inputs: BatchInputs, boxes: Sequence[Sequence[Sequence[float]]], image: int = 0, tile: int | None = None
) -> list[torch.Tensor]:
    """Per row, LM positions of tokens of `image` whose centre lies in any of that row's boxes (fractions)."""
    if len(boxes) != inputs.batch_size:
        raise UserInputError(f"got boxes for {len(boxes)} rows, batch has {inputs.batch_size}", "pass one box list per row")
    out = []
    for row, row_boxes in enumerate(boxes):
        tokens = inputs.images[row][image]
        found = [tokens.positions_in_box(box, tile) for box in row_boxes]
        merged = torch.cat(found) if found else torch.zeros(0, dtype=torch.long)
        out.append(torch.unique(merged, sorted=True))
    return out


class ImageRowMap:
    """LM positions -> rows of an `image_tokens` site's (rows, hidden) value, for one batch.

    Row k of the site (in LM order) is the k-th image token of `BatchInputs.image_rows()`; sites with
    `rows_per_lm_token = r` hold r consecutive rows per LM token; `BatchInputs.row_order[site]` maps LM
    order to the module's own row order where the two differ.
    """

    def __init__(self, inputs: BatchInputs, point: HookPoint):
        self.site = point.site
        self.rows_per_token = point.rows_per_lm_token
        self.lookup = torch.full((inputs.batch_size, inputs.seq_len), -1, dtype=torch.long)
        offset = 0
        for row, per_row in enumerate(inputs.images):
            for tokens in per_row:
                n = len(tokens)
                self.lookup[row, tokens.positions] = torch.arange(offset, offset + n)
                offset += n
        self.num_tokens = offset
        self.num_rows = offset * self.rows_per_token
        order = inputs.row_order.get(point.site)
        self.module_order = None if order is None else order.to("cpu", torch.long)

    def rows(self, row: int, positions: torch.Tensor) -> torch.Tensor:
        """Module rows holding the given LM positions of batch row `row` (r rows per position, in order)."""
        index = self.lookup[row, positions]
        if bool((index < 0).any()):
            bad = positions[index < 0].tolist()
            raise UserInputError(
                f"positions {bad} of row {row} are not image tokens, but site {self.site} holds image tokens only",
                "select image positions (ImageTokens.positions) for image-token sites",
            )
        r = self.rows_per_token
        lm_rows = (index[:, None] * r + torch.arange(r)).reshape(-1)
        return lm_rows if self.module_order is None else self.module_order[lm_rows]
