"""The layer-0 vision ablation (paper §5.3.1): remove vision-derived position, keep object identity.

At the LM input (`projector.out`, which is the layer-0 input at image positions) every object's
tokens are replaced by the tokens of the *same* object rendered alone at the image centre, and every
background token by the token of a blank white image at the same grid cell. Geometry comes from the
model's own input (`ImageTokens`), never from constants: the ablation covers every image token
exactly once on any grid (checked on every row), and the alone object's token block must have the
clean object's shape (checked, with a clear error).

Used by `ablate-vision` (accuracy under the ablation) and `backup` (patching under it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spatialmech.engine import Engine, Intervention, Patch, regions
from spatialmech.errors import UserInputError
from spatialmech.experiments.common import picture_key, system_prompt
from spatialmech.models.base import BatchInputs, ImageTokens
from spatialmech.sharing import image_digest
from spatialmech.tasks.base import CF_ALONE, CF_BLANK, Item, Task

SITE = "projector.out"
OBJECTS, BACKGROUND = "objects", "background"
PARTS = (OBJECTS, BACKGROUND)
# Where the replacement tokens come from: the paper's ("alone" objects, "blank" background), or the
# clean image itself ("clean": an identity check, must leave the model's output bit-identical).
SOURCE_MODES = ("alone", "clean")
_MEMO_LIMIT = 1024  # source images kept in memory (alone/blank images repeat; "clean" mode does not)


# ---------------------------------------------------------------------------------------- geometry
def single_view(inputs: BatchInputs, row: int) -> ImageTokens:
    """The image tokens of batch row `row`, which must hold one image seen as one token grid."""
    per_row = inputs.images[row]
    if len(per_row) != 1:
        raise UserInputError(f"row {row} holds {len(per_row)} images, the ablation needs exactly one", "use one image per prompt")
    tokens = per_row[0]
    if len(tokens.grid_shapes) != 1:
        raise UserInputError(
            f"the model splits this image into {len(tokens.grid_shapes)} views ({', '.join(tokens.tile_names)}), "
            "so an object's tokens cannot be mapped one-to-one onto a centred copy",
            "run ablate-vision/backup on a single-view family (Qwen2-VL, Qwen2.5-VL, Gemma3, LLaVA, PaliGemma, Pixtral)",
        )
    return tokens


def block_shape(tokens: ImageTokens, index: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) spanned by a block of tokens; -1s when it is not a full rectangle."""
    if index.numel() == 0:
        return (0, 0)
    rows, cols = tokens.rows[index], tokens.cols[index]
    height = int(rows.max() - rows.min()) + 1
    width = int(cols.max() - cols.min()) + 1
    return (height, width) if height * width == index.numel() else (-1, -1)


# ---------------------------------------------------------------------------------------- sources
@dataclass
class SourceImage:
    """`projector.out` of one source image (alone object / blank / clean), aligned with its tokens."""

    tokens: ImageTokens
    values: torch.Tensor  # (len(tokens), hidden)

    def cell_table(self) -> torch.Tensor:
        """(rows, cols) -> index into `values` (-1 where the grid has no token)."""
        n_rows, n_cols = self.tokens.grid_shapes[0]
        table = torch.full((int(n_rows), int(n_cols)), -1, dtype=torch.long)
        table[self.tokens.rows, self.tokens.cols] = torch.arange(len(self.tokens))
        return table


class SourceTokens:
    """Computes each source image's `projector.out` once, in a batch of its own (so the values do not
    depend on which items asked first: an interrupted run resumed gets the very same numbers)."""

    def __init__(self, engine: Engine, task: Task):
        self.engine = engine
        self.task = task
        self._memo: dict[str, SourceImage] = {}
        # picture key -> pixel digest: every row of every condition asks for its sources again; the task
        # draws a picture from its item's fields alone, so the key spares drawing and hashing it each time
        self._digests: dict[str, str] = {}

    def get(self, item: Item) -> SourceImage:
        """`projector.out` of the picture of `item` (an alone object, the blank image, or an item itself)."""
        picture = picture_key(item)
        key = self._digests.get(picture)
        image = None
        if key is None:
            if len(self._digests) >= _MEMO_LIMIT:
                self._digests.clear()
            image = self.task.image(item)
            key = self._digests[picture] = image_digest(image)
        if key not in self._memo:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            image = image if image is not None else self.task.image(item)
            inputs = self.engine.adapter.build_inputs([[image]], [item.prompt], system=system_prompt(self.task))
            tokens = single_view(inputs, 0)
            values = self.engine.cache(inputs, [SITE], [tokens.positions])[SITE][0]
            self._memo[key] = SourceImage(tokens, values)
        return self._memo[key]


# ---------------------------------------------------------------------------------------- the ablation
@dataclass
class RowAblation:
    """What the ablation writes into one batch row: LM positions and their new `projector.out` values."""

    positions: torch.Tensor  # objects (in object order), then background
    values: torch.Tensor  # (len(positions), hidden)
    object_positions: list[torch.Tensor]  # per object of the item, raster order
    background_positions: torch.Tensor
    image_positions: torch.Tensor  # every image token of the row


def check_covers_every_image_token(row: RowAblation) -> None:
    """The full ablation must write each image token exactly once (objects + background = image)."""
    written = row.positions.tolist()
    if len(set(written)) != len(written):
        raise RuntimeError(f"vision ablation writes {len(written) - len(set(written))} image tokens twice (overlapping object boxes)")
    missing = set(row.image_positions.tolist()) - set(written)
    extra = set(written) - set(row.image_positions.tolist())
    if missing or extra:
        raise RuntimeError(f"vision ablation misses {len(missing)} image tokens and writes {len(extra)} non-image positions")


class VisionAblation:
    """The paper's layer-0 vision ablation for batches of grid-task items.

    `parts` picks what is replaced (objects, background, or both); `sources` where replacements come
    from: "alone" (the paper: the object alone at the centre, a blank white image) or "clean" (the item's
    own image at the same tokens: an identity that must leave the output bit-identical).
    """

    def __init__(self, engine: Engine, task: Task, parts: Sequence[str] = PARTS, sources: str = "alone",
                 source_tokens: SourceTokens | None = None):
        unknown = [p for p in parts if p not in PARTS]
        if unknown or sources not in SOURCE_MODES:
            raise UserInputError(f"unknown ablation parts {unknown} or sources {sources!r}", f"use parts from {PARTS} and sources from {SOURCE_MODES}")
        self.engine = engine
        self.task = task
        self.parts = tuple(parts)
        self.sources = sources
        self.source_tokens = source_tokens or SourceTokens(engine, task)

    # -------------------------------------------------------------- where replacements come from
    def _object_sources(self, item: Item) -> list[tuple[SourceImage, tuple[float, float, float, float]]]:
        """Per object of `item`: the source image's tokens and the box of that object in it."""
        if self.sources == "clean":
            clean = self.source_tokens.get(item)
            return [(clean, item.box_fraction(i)) for i in range(len(item.objects))]
        by_object = {cf.source_object: cf.item for cf in self.task.counterfactuals(item, CF_ALONE)}
        if sorted(k for k in by_object if k is not None) != list(range(len(item.objects))):
            raise UserInputError(
                f"task {self.task.name} gives 'alone' counterfactuals for objects {sorted(by_object)} of item {item.id} "
                f"with {len(item.objects)} objects", "use a grid task (squares, shapes, objects)",
            )
        out = []
        for index in range(len(item.objects)):
            alone = by_object[index]
            out.append((self.source_tokens.get(alone), alone.box_fraction(0)))
        return out

    def _background_source(self, item: Item) -> SourceImage:
        if self.sources == "clean":
            return self.source_tokens.get(item)
        blank = self.task.counterfactuals(item, CF_BLANK)[0].item
        return self.source_tokens.get(blank)

    # -------------------------------------------------------------- one row
    def row(self, inputs: BatchInputs, row: int, item: Item) -> RowAblation:
        tokens = single_view(inputs, row)
        object_index = [regions.region_indices(tokens, item.box_fraction(i), order="raster") for i in range(len(item.objects))]
        in_object = torch.zeros(len(tokens), dtype=torch.bool)
        for index in object_index:
            in_object[index] = True
        background_index = (~in_object).nonzero().reshape(-1)
        positions: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        if OBJECTS in self.parts:
            for obj, (index, (source, box)) in enumerate(zip(object_index, self._object_sources(item))):
                source_index = regions.region_indices(source.tokens, box, order="raster")
                clean_shape, source_shape = block_shape(tokens, index), block_shape(source.tokens, source_index)
                if index.numel() != source_index.numel() or clean_shape != source_shape:
                    raise UserInputError(
                        f"item {item.id}: object {obj} covers {index.numel()} tokens {clean_shape} but its centred copy "
                        f"covers {source_index.numel()} {source_shape}, so tokens cannot be swapped one for one",
                        "draw the task on the model's own token grid (tasks.get_task(..., geometry=adapter.grid_spec()))",
                    )
                positions.append(tokens.positions[index])
                values.append(source.values[source_index])
        if BACKGROUND in self.parts:
            source = self._background_source(item)
            if tuple(source.tokens.grid_shapes[0]) != tuple(tokens.grid_shapes[0]):
                raise UserInputError(
                    f"item {item.id}: the blank image has a {source.tokens.grid_shapes[0]} token grid, the item "
                    f"{tokens.grid_shapes[0]}", "render the blank image at the item's size (task counterfactuals do)",
                )
            source_index = source.cell_table()[tokens.rows[background_index], tokens.cols[background_index]]
            if bool((source_index < 0).any()):
                raise UserInputError(f"item {item.id}: the blank image lacks tokens at some grid cells", "use a single-view model")
            positions.append(tokens.positions[background_index])
            values.append(source.values[source_index])
        hidden = self.engine.adapter.hidden_size
        plan = RowAblation(
            positions=torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long),
            values=torch.cat(values) if values else torch.zeros(0, hidden),
            object_positions=[tokens.positions[index] for index in object_index],
            background_positions=tokens.positions[background_index],
            image_positions=tokens.positions,
        )
        if set(self.parts) == set(PARTS):
            check_covers_every_image_token(plan)
        return plan

    # -------------------------------------------------------------- batches
    def plan(self, inputs: BatchInputs, items: Sequence[Item]) -> list[RowAblation]:
        if len(items) != inputs.batch_size:
            raise UserInputError(f"{len(items)} items for a batch of {inputs.batch_size}", "pass one item per batch row")
        return [self.row(inputs, row, item) for row, item in enumerate(items)]

    def interventions(self, inputs: BatchInputs, items: Sequence[Item]) -> list[Intervention]:
        """One `Patch` at `projector.out` doing the whole ablation of every row (none for no parts)."""
        if not self.parts:
            return []
        rows = self.plan(inputs, items)
        return [Patch(SITE, [r.positions for r in rows], [r.values for r in rows])]

    def logits(self, inputs: BatchInputs, items: Sequence[Item]) -> torch.Tensor:
        """Last-position logits under the ablation (a `common.LogitsFn`)."""
        return self.engine.logits(inputs, self.interventions(inputs, items))
