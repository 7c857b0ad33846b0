"""The model side of the public API: loading, inputs from plain pictures and text, the image-token
map, and the engine taking answer words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spatialmech import io
from spatialmech.engine import Engine as _CoreEngine
from spatialmech.errors import UserInputError
from spatialmech.models.base import BatchInputs, GridSpec, ImageTokens, VLMAdapter
from spatialmech.tasks.vocabulary import answer_variants

ImageLike = Any  # a PIL image or a path to one
# Words tracked for every row, or per row a list of words / token-id sets (the core engine's form).
Answers = Sequence[str] | Sequence[Sequence[str]] | Sequence[Sequence[Sequence[int]]]


# ------------------------------------------------------------------------------------------ model
class Model:
    """A loaded VLM behind its family adapter (`.adapter`), with inputs built from plain pictures and text."""

    def __init__(self, adapter: VLMAdapter, name: str):
        self.adapter = adapter
        self.name = name

    def __repr__(self) -> str:
        return f"Model({self.name!r}, family={self.family!r}, layers={self.num_layers}, device={self.device})"

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def hidden_size(self) -> int:
        return self.adapter.hidden_size

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def grid(self) -> GridSpec:
        """The token grid of the model's square input: draw on it to put objects on whole tokens."""
        return self.adapter.grid_spec()

    def sites(self) -> list[str]:
        """Every hookable site name (`projector.out`, `lm.resid_pre.3`, ...)."""
        return self.adapter.sites()

    def inputs(self, images: ImageLike | Sequence[ImageLike], prompts: str | Sequence[str], system: str | None = None) -> Inputs:
        """Model inputs: one image (PIL or path) or a list, one prompt or a list (one row per prompt;
        a single image is shared by every prompt). `system=None` uses the model's default system prompt."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        pictures = [_open(images)] * len(texts) if not isinstance(images, (list, tuple)) else [_open(i) for i in images]
        if len(pictures) != len(texts):
            raise UserInputError(f"{len(pictures)} images for {len(texts)} prompts", "pass one image, or one image per prompt")
        batch = self.adapter.build_inputs([[p] for p in pictures], texts, system=system)
        return Inputs(batch.model_kwargs, batch.images, batch.prompts, batch.row_order, [p.size for p in pictures])

    def answer_ids(self, word: str) -> list[int]:
        """Token ids of a word's single-token spelling variants (" Red", "Red", " red", "red")."""
        return self.adapter.answer_token_ids(answer_variants(word))


def _open(image: ImageLike):
    if isinstance(image, (str, Path)):
        return io.open_image(image, "image")
    if not hasattr(image, "convert"):
        raise UserInputError(f"{type(image).__name__} is not an image", "pass a PIL image or a path to a PNG/JPEG")
    return image.convert("RGB")


def load_model(
    model: str = "bundled",
    *,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[str | int, str] | None = None,
    offload_folder: str | None = None,
    grid: int | None = None,
    trust_remote_code: bool = False,
) -> Model:
    """Load a checkpoint ("bundled", a folder, or a hub id) behind its family adapter.

    `device`: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N". `dtype` is "float32" /
    "bfloat16" / "float16" or a torch dtype (default: the family's, as the authors ran it).
    `device_map` ("auto", "balanced", "sequential" or an explicit dict), `max_memory` and
    `offload_folder` spread a large model over GPUs, CPU and disk with accelerate (the `distributed`
    extra), exactly as the CLI's --device-map / --max-memory / --offload-folder. `grid`: tokens per
    side for synthetic stimuli instead of the family's preset."""
    from spatialmech.models import load_model as load_adapter
    from spatialmech.models.placement import make_placement

    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise UserInputError(f"dtype {dtype!r} is not supported", "use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    placement = make_placement(device, device_map, max_memory, offload_folder)
    adapter = load_adapter(model, dtype=dtype, device=placement, trust_remote_code=trust_remote_code, grid=grid)
    return Model(adapter, name=str(model))


def _adapter(model: Model | VLMAdapter) -> VLMAdapter:
    return model.adapter if isinstance(model, Model) else model


# ------------------------------------------------------------------------------------------ image tokens
@dataclass
class ImageTokenMap:
    """Where one image's tokens sit in the LM sequence: positions of a box, a grid cell, a strip.

    Every method returns a 1-D LongTensor of LM positions (for `Patch`, `Ablate`, `engine.cache`).
    Boxes are in pixels of the original image (x1/y1 exclusive), or fractions with `fraction=True`;
    a token belongs to a box when its centre lies inside. Tiled models answer on their global view."""

    tokens: ImageTokens
    image_size: tuple[int, int]

    @property
    def positions(self) -> torch.Tensor:
        """Every LM position of the image's tokens (all tiles)."""
        return self.tokens.positions

    @property
    def grid(self) -> torch.Tensor:
        """(rows, cols) table of LM positions on the main grid (-1 where a cell has no token)."""
        return self.tokens.cell_positions()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.grid_shapes[self.tokens.main_tile])  # type: ignore[return-value]

    def box(self, x0: float, y0: float, x1: float, y1: float, *, fraction: bool = False) -> torch.Tensor:
        """Positions of the tokens whose centre is inside the box."""
        if not fraction:
            width, height = self.image_size
            x0, y0, x1, y1 = x0 / width, y0 / height, x1 / width, y1 / height
        return self.tokens.positions_in_box((x0, y0, x1, y1))

    def cell(self, row: int, col: int) -> torch.Tensor:
        """The position of the token at grid cell (row, col) of the main grid, as a 1-element tensor."""
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise UserInputError(f"cell ({row}, {col}) is outside the {rows}x{cols} token grid", "use 0-based row and column indices")
        value = self.grid[row, col]
        return value.reshape(1) if int(value) >= 0 else value.new_empty(0)

    def strip(self, axis: str, start: int, stop: int | None = None) -> torch.Tensor:
        """Whole rows (axis "horizontal": a band across the image) or columns ("vertical") of the grid,
        `start` to `stop` (exclusive; default one row or column)."""
        stop = start + 1 if stop is None else stop
        table = self.grid
        if axis == "horizontal":
            band = table[start:stop, :]
        elif axis == "vertical":
            band = table[:, start:stop]
        else:
            raise UserInputError(f"axis {axis!r} is not horizontal or vertical", "use 'horizontal' (rows) or 'vertical' (columns)")
        band = band.T.reshape(-1) if axis == "vertical" else band.reshape(-1)
        return band[band >= 0].sort().values


@dataclass
class Inputs(BatchInputs):
    """Model inputs (a `BatchInputs`, accepted wherever the engine takes one) plus the image-token map."""

    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Inputs:
        moved = super().to(device)
        return Inputs(moved.model_kwargs, moved.images, moved.prompts, moved.row_order, self.image_sizes)

    @property
    def image_tokens(self) -> list[ImageTokenMap]:
        """Per batch row, the token map of its image: `inputs.image_tokens[row].box(...)`."""
        return [ImageTokenMap(row[0], size) for row, size in zip(self.images, self.image_sizes)]

    @property
    def last(self) -> list[torch.Tensor]:
        """The next-token position of every row (where the answer is read)."""
        from spatialmech.engine import last_position

        return last_position(self)


# ------------------------------------------------------------------------------------------ engine
class Engine(_CoreEngine):
    """The intervention engine (see `spatialmech.engine`) taking answer *words*: their spelling
    variants are found and summed for you. Token-id sets are still accepted."""

    def __init__(self, model: Model | VLMAdapter):
        super().__init__(_adapter(model))

    def token_sets(self, answers: Answers, batch_size: int) -> list[list[list[int]]]:
        """Per row, per tracked answer, the token ids: words tracked for every row (["Red", "Blue"]),
        per-row words ([["Red"], ["Blue"]]), or token-id sets as the core engine takes them."""
        if isinstance(answers, str):
            answers = [answers]
        answers = list(answers)
        if all(isinstance(a, str) for a in answers):
            shared = [self.adapter.answer_token_ids(answer_variants(a)) for a in answers]  # type: ignore[arg-type]
            return [shared for _ in range(batch_size)]
        if len(answers) != batch_size:
            raise UserInputError(f"{len(answers)} answer lists for a batch of {batch_size}", "pass one list per row, or words shared by every row")
        out = []
        for row in answers:
            row = [row] if isinstance(row, str) else list(row)  # type: ignore[list-item]
            out.append([list(a) if not isinstance(a, str) else self.adapter.answer_token_ids(answer_variants(a)) for a in row])
        return out

    def answer_probabilities(self, inputs: BatchInputs, answers: Answers, interventions: Sequence[Any] = ()) -> torch.Tensor:
        """(batch, n_answers): P of each answer word, summed over its spelling variants."""
        return super().answer_probabilities(inputs, self.token_sets(answers, inputs.batch_size), interventions)

    def predict(self, inputs: BatchInputs, interventions: Sequence[Any] = ()) -> list[str]:
        """The model's next token per row, as text (with its leading space, if any)."""
        top = self.logits(inputs, interventions).argmax(-1).tolist()
        return [self.adapter.tokenizer.decode([t]) for t in top]

    def patch_sweep(self, target: BatchInputs, source: BatchInputs, target_positions: Any, source_positions: Any = None,
                    *, answers: Answers | None = None, **kwargs: Any):
        """`spatialmech.engine.Engine.patch_sweep`, with `answers` as words."""
        sets = None if answers is None else self.token_sets(answers, target.batch_size)
        return super().patch_sweep(target, source, target_positions, source_positions, answers=sets, **kwargs)


