"""The one interface every VLM family sits behind.

An adapter is the only place that knows a family. It wraps the Hugging Face model (rename, don't
reimplement) and answers three questions for the rest of the toolkit:

1. How do I turn images + a prompt into model inputs? (`build_inputs`, through the family's chat
   template, left-padded so the last position is the next-token position for every row.)
2. Which LM positions hold which part of each image? (`BatchInputs.images`: for every image token its
   LM position, tile, grid cell (row, col) and the box of the image it covers, derived from the
   model's own inputs such as `image_grid_thw`, never from constants.)
3. Where are the hook sites? (`hook_point(site)`: SPEC's `vision.out`, `projector.out`,
   `lm.resid_pre.{l}`, `lm.resid_post.{l}`, `lm.attn.{l}`, `lm.mlp.{l}` -> module + how to read/write.)

The engine hooks modules only through `hook_point`; experiments only through the engine.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from spatialmech.errors import UserInputError

SITE_NAMES = ("vision.out", "projector.out", "lm.resid_pre.{l}", "lm.resid_post.{l}", "lm.attn.{l}", "lm.mlp.{l}")
_LAYER_SITE = re.compile(r"^lm\.(resid_pre|resid_post|attn|mlp)\.(\d+)$")
PIXELS_KWARG = "pixel_values"
ENCODED_IMAGES_KWARG = "mm_encoder_outputs"  # transformers' input for precomputed image-encoder outputs


class _ImagesEncoded(Exception):
    """Stops a forward once the image encoder has run (`VLMAdapter.encode_images`)."""

# The system prompt SPEC section 3 uses for synthetic tasks.
SYNTHETIC_SYSTEM_PROMPT = "You are a helpful assistant. You respond in one token."


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
        kwargs = {k: _to_device(v, device) for k, v in self.model_kwargs.items()}
        return BatchInputs(kwargs, self.images, self.prompts, {k: v.to(device) for k, v in self.row_order.items()})


def _to_device(value: Any, device: torch.device | str) -> Any:
    """Tensors moved, containers (tuples, lists, dicts, HF model outputs) walked, anything else kept."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):  # includes transformers' ModelOutput
        moved = {k: _to_device(v, device) for k, v in value.items()}
        return type(value)(**moved) if type(value) is not dict else moved
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _inputs_to_model_device(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    from spatialmech.models.placement import input_device

    device = input_device(model)
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    if all(t.device == device for t in tensors) and device.type == "cpu":
        return None  # the common CPU case: nothing to move (nested encoder outputs are made on the model's device)
    return _to_device(args, device), _to_device(kwargs, device)


def _repeat_encoded(value: Any, copies: int) -> Any:
    """An image encoder's output for a batch repeated `copies` times: tensors concatenated along their
    first axis (images, tiles or all image rows), per-image lists of tensors repeated, other fields walked."""
    if copies == 1:
        return value
    if isinstance(value, torch.Tensor):
        return torch.cat([value] * copies)
    if isinstance(value, dict):  # includes transformers' ModelOutput
        walked = {k: _repeat_encoded(v, copies) for k, v in value.items()}
        return type(value)(**walked) if type(value) is not dict else walked
    if isinstance(value, (tuple, list)):
        if value and all(isinstance(v, torch.Tensor) for v in value):
            return type(value)(list(value) * copies)
        return type(value)(_repeat_encoded(v, copies) for v in value)
    return value


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


class VLMAdapter(ABC):
    """Behind this interface every family looks the same. Subclasses are small: one file per family."""

    family: ClassVar[str]  # our name, e.g. "qwen2-vl"
    model_types: ClassVar[tuple[str, ...]]  # HF `config.model_type` values this adapter handles
    description: ClassVar[str] = ""
    # Weights dtype when the user gives no --dtype: the authors' choice for the paper's families
    # (their shared/models.py DEFAULT_DTYPE), None = the checkpoint's own dtype.
    default_dtype: ClassVar[torch.dtype | None] = None
    # The authors' synthetic-grid preset for this family (a name in tasks.geometry.PRESETS), or None.
    paper_preset: ClassVar[str | None] = None
    # Tokens per side asked for with --grid (None = the preset's, else the processor's largest).
    requested_grid: int | None = None

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, model_id: str):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_id = model_id
        self.model.eval()
        # Inputs are built on the CPU; every forward (ours, generate's, the engine's) gets them on the
        # model's input device, so no caller has to move a batch.
        self.model.register_forward_pre_hook(_inputs_to_model_device, with_kwargs=True)

    @classmethod
    def handles(cls, config: dict[str, Any]) -> bool:
        """Whether this adapter serves a checkpoint, given its config.json as a dict.

        By `model_type`; families that share one (LLaVA and Pixtral are both `llava`) override this to
        look at sub-configs too.
        """
        return config.get("model_type") in cls.model_types

    # ------------------------------------------------------------------ construction
    @classmethod
    @abstractmethod
    def from_pretrained(
        cls, path_or_id: str, *, dtype: torch.dtype | None = None, device: Any = "auto", trust_remote_code: bool = False
    ) -> VLMAdapter:
        """Load a checkpoint (local folder or hub id) with safetensors weights."""

    @classmethod
    @abstractmethod
    def tiny(cls, seed: int = 0) -> VLMAdapter:
        """A tiny randomly initialised model of the real architecture, built from a config, for tests."""

    # ------------------------------------------------------------------ model facts
    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    def device(self) -> torch.device:
        """Where inputs go: the model's device, or the first GPU of an accelerate device map."""
        from spatialmech.models.placement import input_device

        return input_device(self.model)

    @abstractmethod
    def grid_spec(self) -> GridSpec:
        """The token grid synthetic stimuli are drawn on: `requested_grid`, else the family's preset,
        else the native square input, fitted to what the processor allows (`_grid.fit_grid`)."""


    # ------------------------------------------------------------------ inputs
    @abstractmethod
    def build_inputs(
        self, images: Sequence[Sequence[Any]], prompts: Sequence[str], system: str | None = None
    ) -> BatchInputs:
        """One batch row per prompt; `images[b]` are the PIL images of row b, in prompt order."""

    # ------------------------------------------------------------------ hook sites
    @abstractmethod
    def hook_point(self, site: str) -> HookPoint:
        """Map a SPEC site name to its module and how to read/write it."""

    def sites(self) -> list[str]:
        fixed = ["vision.out", "projector.out"]
        per_layer = [f"lm.{kind}.{layer}" for layer in range(self.num_layers) for kind in ("resid_pre", "resid_post", "attn", "mlp")]
        return fixed + per_layer

    def parse_layer_site(self, site: str) -> tuple[str, int]:
        """('resid_pre', 3) for 'lm.resid_pre.3', with a clear error for bad names or layers."""
        match = _LAYER_SITE.match(site)
        if not match:
            raise UserInputError(f"unknown hook site {site!r}", f"use one of {', '.join(SITE_NAMES)}")
        layer = int(match.group(2))
        if layer >= self.num_layers:
            raise UserInputError(
                f"layer {layer} in site {site!r} does not exist", f"this model has layers 0..{self.num_layers - 1}"
            )
        return match.group(1), layer

    # ------------------------------------------------------------------ reusing the image encoder
    def encode_images(self, inputs: BatchInputs) -> BatchInputs:
        """The same inputs with the image encoder's output (vision tower + projector) computed once.

        Many forwards of one picture (an alpha sweep, both option orders) then skip the encoder, often
        most of a small model's cost. Uses transformers' own `mm_encoder_outputs` input: the model's
        `get_image_features` runs exactly as in a normal forward, its result is kept, and the forward is
        stopped there. Logits from the returned inputs equal the raw inputs' (a suite test, per family).
        Sites inside the encoder (`vision.out`) cannot be hooked on them; `projector.out` is served at
        the identical LM layer-0 input (see `engine.hooks`).
        """
        if inputs.images_encoded:
            return inputs
        if PIXELS_KWARG not in inputs.model_kwargs:
            raise UserInputError("these inputs have no images to encode", "build the inputs with images")
        inner = getattr(self.model, "model", None)
        original = getattr(inner, "get_image_features", None)
        if original is None:
            raise NotImplementedError(f"{type(self).__name__}: the model has no get_image_features to reuse")
        kept: dict[str, Any] = {}

        def keep_and_stop(*args: Any, **kwargs: Any) -> Any:
            kept["image"] = original(*args, **kwargs)
            raise _ImagesEncoded

        inner.get_image_features = keep_and_stop  # an instance attribute shadows the method for this call
        try:
            with torch.no_grad():
                self.model(**inputs.model_kwargs, use_cache=False, logits_to_keep=1)
        except _ImagesEncoded:
            pass
        finally:
            del inner.get_image_features
        if "image" not in kept:
            raise RuntimeError(f"{type(self).__name__}: the forward pass never encoded the images")
        kwargs = {k: v for k, v in inputs.model_kwargs.items() if k != PIXELS_KWARG}
        kwargs[ENCODED_IMAGES_KWARG] = {"image": kept["image"]}
        return BatchInputs(kwargs, inputs.images, inputs.prompts, dict(inputs.row_order))

    def with_prompts(self, encoded: BatchInputs, inputs: BatchInputs) -> BatchInputs:
        """`inputs` (same pictures, other prompts, e.g. the other option order) reusing `encoded`'s images.
        `inputs` may also hold `encoded`'s pictures k times over, rows in the same order (both option
        orders in one batch): the encoder output is repeated (equal logits: a suite test, per family)."""
        if not encoded.images_encoded:
            raise ValueError("`encoded` must come from encode_images")
        copies = inputs.batch_size // max(encoded.batch_size, 1)
        counts = [len(r) for r in encoded.images]
        if copies < 1 or inputs.batch_size != copies * encoded.batch_size or [len(r) for r in inputs.images] != counts * copies:
            raise ValueError("the two batches do not hold the same images (or whole repeats of them)")
        kwargs = {k: v for k, v in inputs.model_kwargs.items() if k != PIXELS_KWARG}
        kwargs[ENCODED_IMAGES_KWARG] = _repeat_encoded(encoded.model_kwargs[ENCODED_IMAGES_KWARG], copies)
        return BatchInputs(kwargs, inputs.images, inputs.prompts, dict(inputs.row_order))

    # ------------------------------------------------------------------ outputs
    def forward(self, inputs: BatchInputs) -> torch.Tensor:
        """Logits at the last position of every row, (batch, vocab)."""
        with torch.no_grad():
            out = self.model(**inputs.model_kwargs, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :]

    def answer_token_id(self, word: str) -> int:
        """The single token id of an answer word; an error if the word is several tokens."""
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise UserInputError(
                f"answer word {word!r} is {len(ids)} tokens for model {self.model_id}",
                "choose answer words (and spelling variants) that are single tokens for this tokenizer",
            )
        return int(ids[0])

    def answer_token_ids(self, variants: Sequence[str], require_all: bool = False) -> list[int]:
        """Token ids of the single-token spelling variants of one answer (at least one must exist)."""
        ids: list[int] = []
        errors = []
        for word in variants:
            try:
                token = self.answer_token_id(word)
            except UserInputError as exc:
                if require_all:
                    raise
                errors.append(str(exc))
                continue
            if token not in ids:
                ids.append(token)
        if not ids:
            raise UserInputError(
                f"no spelling of answer {list(variants)!r} is a single token for model {self.model_id}",
                "choose answer words that are single tokens for this tokenizer",
            )
        return ids

    # ------------------------------------------------------------------ LM pieces the engine resumes from
    def decoder_layers(self) -> nn.ModuleList:
        """The LM's decoder layers in order (what `lm.resid_pre.{l}` hooks). Used by the engine to run
        layers l..L-1 from a cached residual instead of a whole forward. Default: HF's `get_decoder().layers`;
        override if the family keeps them elsewhere."""
        decoder = self.model.get_decoder()
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) != self.num_layers:
            raise NotImplementedError(f"{type(self).__name__} must override decoder_layers()")
        return layers

    def final_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from the last decoder layer's output (`lm.resid_post.{L-1}`), (..., hidden) ->
        (..., vocab): final norm then LM head, exactly as the model's forward does. The engine checks this
        against the real forward once per sweep. Default: HF's `get_decoder().norm` and
        `get_output_embeddings()`; override for families with extra steps (e.g. logit soft-capping)."""
        norm = getattr(self.model.get_decoder(), "norm", None)
        head = self.model.get_output_embeddings()
        if norm is None or head is None:
            raise NotImplementedError(f"{type(self).__name__} must override final_logits()")
        return head(norm(hidden))

    def fingerprint(self) -> dict[str, Any]:
        """Identify this model for results: id, family and a sha256 over its weights, config, tokenizer,
        image processor and chat template files (the same weights behind another prompt format or image
        size give other results, so they count as another model).

        Results carry it so reports refuse to mix models. Hashing a 7B checkpoint takes a while, so it is
        computed once per adapter; in-memory models (tests) hash their config and parameter sums.
        """
        cached = getattr(self, "_fingerprint", None)
        if cached is not None:
            return cached
        from pathlib import Path

        from spatialmech.provenance import file_sha256

        digest = hashlib.sha256()
        folder = Path(str(self.model_id))
        if folder.is_dir():
            files = {p for pattern in ("*.safetensors", "*.json", "*.jinja", "*.model", "*.txt") for p in folder.glob(pattern)}
            for path in sorted(p for p in files if p.is_file()):
                digest.update(path.name.encode())
                digest.update(file_sha256(path).encode())
        else:
            digest.update(self.model.config.to_json_string().encode())
            for name, tensor in self.model.state_dict().items():
                digest.update(f"{name}:{tuple(tensor.shape)}:{float(tensor.double().sum()):.10e}".encode())
        self._fingerprint = {"model_id": str(self.model_id), "family": self.family, "sha256": digest.hexdigest()}
        return self._fingerprint

    def save_pretrained(self, folder: str) -> None:
        """Save weights (safetensors), config, tokenizer and image processor, reloadable by from_pretrained."""
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(folder)
