"""What the toolkit passes around about a batch and a model, as plain data: where a hook site lives
(`HookPoint`), which LM positions hold which part of each image (`ImageTokens`), a batch's model inputs
with that map (`BatchInputs`) and the token grid synthetic stimuli are drawn on (`GridSpec`). Defined
here, below the adapter interface (`models.base`, which re-exports them), so data types and the
interface each stay one readable file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

PIXELS_KWARG = "pixel_values"
ENCODED_IMAGES_KWARG = "mm_encoder_outputs"  # transformers' input for precomputed image-encoder outputs

# Set by `pixels_elsewhere`: the inputs being built need no pixels (they will be replaced).
PIXELS_ELSEWHERE: ContextVar[bool] = ContextVar("pixels_elsewhere", default=False)


@contextmanager
def pixels_elsewhere() -> Iterator[None]:
    """While open, inputs built carry zero pixels of the right shape instead of processed ones (families
    that `processes_images_alone`): for a caller that replaces every picture's pixels with its encoder
    output kept elsewhere (the picture memo), preprocessing them was wasted work."""
    token = PIXELS_ELSEWHERE.set(True)
    try:
        yield
    finally:
        PIXELS_ELSEWHERE.reset(token)


@dataclass(frozen=True)
class HookPoint:
    """Where a site lives and how its value is read or written.

    when:  "output" -> forward hook; the value is the module output (first element if a tuple).
           "input"  -> forward pre-hook; the value is the first positional argument (or `input_kwarg`).
    space: "sequence"     -> value is (batch, seq, hidden) indexed by LM position.
           "image_tokens" -> value is (n_tokens, hidden) rows of all images of the batch concatenated in
                             the order the LM consumes them (i.e. the order of `BatchInputs.image_rows`),
                             e.g. `projector.out`. `vision.out` may have more rows than LM image tokens
                             (before a merger); `rows_per_lm_token` says how many.
    """

    site: str
    module: nn.Module
    when: Literal["output", "input"] = "output"
    space: Literal["sequence", "image_tokens"] = "sequence"
    input_kwarg: str | None = None
    rows_per_lm_token: int = 1


@dataclass
class ImageTokens:
    """The LM tokens of one image of one batch row.

    All tensors have one entry per LM image token, in LM sequence order.
    positions: LM sequence index (after left padding) of each token.
    tiles:     which view the token belongs to (0 for single-view models; tiled models number their
               crops 0..n-1 and the global thumbnail last, see `tile_names`).
    rows/cols: grid cell of the token inside its tile, raster order.
    boxes:     (x0, y0, x1, y1) of the original image the token covers, as fractions in [0, 1]; lets
               experiments select object/strip tokens on any family, tiled or not.
    grid_shapes: (rows, cols) of each tile's grid.
    """

    positions: torch.Tensor
    tiles: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    boxes: torch.Tensor
    grid_shapes: list[tuple[int, int]]
    tile_names: list[str] = field(default_factory=lambda: ["image"])

    def __len__(self) -> int:
        return int(self.positions.numel())

    @property
    def main_tile(self) -> int:
        """The tile that covers the whole image at the finest single grid (the global view)."""
        return len(self.grid_shapes) - 1

    def cell_positions(self, tile: int | None = None) -> torch.Tensor:
        """(rows, cols) tensor of LM positions of one tile, -1 where a cell has no token."""
        tile = self.main_tile if tile is None else tile
        n_rows, n_cols = self.grid_shapes[tile]
        table = torch.full((n_rows, n_cols), -1, dtype=torch.long)
        mask = self.tiles == tile
        table[self.rows[mask], self.cols[mask]] = self.positions[mask]
        return table

    def in_box(self, box: Sequence[float], tile: int | None = None) -> torch.Tensor:
        """Which tokens (of one tile, default main) have their centre inside `box` (image fractions,
        half-open): the one membership test every region selection builds on (`engine.regions`)."""
        tile = self.main_tile if tile is None else tile
        x0, y0, x1, y1 = box
        centre_x = (self.boxes[:, 0] + self.boxes[:, 2]) / 2
        centre_y = (self.boxes[:, 1] + self.boxes[:, 3]) / 2
        return (self.tiles == tile) & (centre_x >= x0) & (centre_x < x1) & (centre_y >= y0) & (centre_y < y1)

    def positions_in_box(self, box: Sequence[float], tile: int | None = None) -> torch.Tensor:
        """LM positions of the tokens (of one tile, default main) whose centre lies inside `box` (fractions)."""
        return self.positions[self.in_box(box, tile)]


@dataclass
class BatchInputs:
    """Model inputs for a batch plus the map from LM positions to image parts."""

    model_kwargs: dict[str, Any]
    images: list[list[ImageTokens]]  # per batch row, per image in the prompt
    prompts: list[str]
    # For `image_tokens` sites whose module rows are NOT in LM order (Qwen2.5-VL's window attention
    # permutes them): `value[row_order[site]]` is in `image_rows()` order (for sites with
    # rows_per_lm_token > 1, grouped per LM token). Read: `value[order]`; write: `value[order] = new`.
    # Sites absent from the dict are already in LM order.
    row_order: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.images)

    @property
    def seq_len(self) -> int:
        return int(self.model_kwargs["input_ids"].shape[1])

    def image_rows(self) -> list[tuple[int, int, int]]:
        """(batch row, image index, token index in that image) for every row of an `image_tokens` site."""
        out = []
        for b, per_row in enumerate(self.images):
            for i, tokens in enumerate(per_row):
                out.extend((b, i, t) for t in range(len(tokens)))
        return out

    @property
    def images_encoded(self) -> bool:
        """True for inputs from `VLMAdapter.encode_images`: the image encoder's output rides along in
        place of the pixels, so the vision tower and projector do not run again."""
        return ENCODED_IMAGES_KWARG in self.model_kwargs

    def to(self, device: torch.device | str) -> BatchInputs:
        kwargs = {k: to_device(v, device) for k, v in self.model_kwargs.items()}
        return BatchInputs(kwargs, self.images, self.prompts, {k: v.to(device) for k, v in self.row_order.items()})


def to_device(value: Any, device: torch.device | str) -> Any:
    """Tensors moved, containers (tuples, lists, dicts, HF model outputs) walked, anything else kept."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):  # includes transformers' ModelOutput
        moved = {k: to_device(v, device) for k, v in value.items()}
        return type(value)(**moved) if type(value) is not dict else moved
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def concat_encoded(parts: Sequence[Any]) -> Any:
    """Image-encoder outputs of several batches joined as one batch's (their images in order): tensors
    concatenated along their first axis (images, tiles or all image rows), per-image lists of tensors
    joined, other fields walked (taken from the first part where they are not tensors). Containers are
    always new, so a caller may rebind fields of the result without touching the parts."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts)) if len(parts) > 1 else first
    if isinstance(first, dict):  # includes transformers' ModelOutput
        walked = {k: concat_encoded([p[k] for p in parts]) for k in first}
        return type(first)(**walked) if type(first) is not dict else walked
    if isinstance(first, (tuple, list)):
        if first and all(isinstance(v, torch.Tensor) for v in first):
            return type(first)([v for p in parts for v in p])
        return type(first)(concat_encoded([p[i] for p in parts]) for i in range(len(first)))
    return first


def split_like(joined: Any, parts: Sequence[Any]) -> list[Any]:
    """The inverse of `concat_encoded`: `joined` cut into pieces shaped like `parts` (each piece's tensors
    as long along their first axis as that part's, per-image lists as long, other fields the part's own).
    Raises ValueError where `joined` is not laid out as `parts` joined."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        sizes = [int(p.shape[0]) for p in parts]
        if not isinstance(joined, torch.Tensor) or joined.shape[0] != sum(sizes) or joined.shape[1:] != first.shape[1:]:
            raise ValueError("the joined encoder output is not laid out as its parts")
        return [piece.clone() for piece in torch.split(joined, sizes)]  # own storage: kept and dropped one by one
    if isinstance(first, dict):  # includes transformers' ModelOutput
        if not isinstance(joined, dict) or list(joined) != list(first):
            raise ValueError("the joined encoder output has other fields than its parts")
        walked = {k: split_like(joined[k], [p[k] for p in parts]) for k in first}
        pieces = [{k: walked[k][i] for k in first} for i in range(len(parts))]
        return [type(first)(**piece) if type(first) is not dict else piece for piece in pieces]
    if isinstance(first, (tuple, list)):
        if not isinstance(joined, (tuple, list)):
            raise ValueError("the joined encoder output is not laid out as its parts")
        if first and all(isinstance(v, torch.Tensor) for v in first):  # per-image lists, joined
            counts = [len(p) for p in parts]
            if len(joined) != sum(counts):
                raise ValueError("the joined encoder output holds another number of images than its parts")
            starts = [sum(counts[:i]) for i in range(len(parts))]
            return [type(first)(v.clone() for v in joined[s : s + c]) for s, c in zip(starts, counts)]
        if len(joined) != len(first):
            raise ValueError("the joined encoder output is not laid out as its parts")
        columns = [split_like(joined[i], [p[i] for p in parts]) for i in range(len(first))]
        return [type(first)(column[j] for column in columns) for j in range(len(parts))]
    return list(parts)


def tensor_leaves(value: Any) -> list[torch.Tensor]:
    """Every tensor inside `value` (containers and HF model outputs walked), in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in value for t in tensor_leaves(value[k])]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensor_leaves(v)]
    return []


@dataclass(frozen=True)
class GridSpec:
    """The token grid the LM sees for a square image: what synthetic stimuli are drawn on."""

    tokens_per_side: int
    pixels_per_token: int
    preset: str | None = None  # the authors' geometry preset of this family (tasks.geometry.PRESETS)
    family: str | None = None
    note: str | None = None  # set when the grid is not the size asked for (and why)

    @property
    def image_size(self) -> int:
        return self.tokens_per_side * self.pixels_per_token
