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
import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from spatialmech.errors import UserInputError
from spatialmech.models.inputs import (  # noqa: F401 (the data types are re-exported: `models.base` is their usual import)
    ENCODED_IMAGES_KWARG,
    PIXELS_KWARG,
    BatchInputs,
    GridSpec,
    HookPoint,
    ImageTokens,
    concat_encoded,
    to_device,
)

SITE_NAMES = ("vision.out", "projector.out", "lm.resid_pre.{l}", "lm.resid_post.{l}", "lm.attn.{l}", "lm.mlp.{l}")
_LAYER_SITE = re.compile(r"^lm\.(resid_pre|resid_post|attn|mlp)\.(\d+)$")



# The system prompt SPEC section 3 uses for synthetic tasks.
SYNTHETIC_SYSTEM_PROMPT = "You are a helpful assistant. You respond in one token."


def _inputs_to_model_device(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    from spatialmech.models.placement import input_device

    device = input_device(model)
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    if all(t.device == device for t in tensors) and device.type == "cpu":
        return None  # the common CPU case: nothing to move (nested encoder outputs are made on the model's device)
    return to_device(args, device), to_device(kwargs, device)


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
        most of a small model's cost. This is transformers' own mechanism, as `generate` uses it
        (`_prepare_multimodal_encoder_kwargs_for_generation`): call the base model's public
        `get_image_features` with the inputs its signature names and `return_dict=True`, and pass the
        result as `mm_encoder_outputs={"image": ...}`; the model's forward then skips the encoder. No
        method is patched and no forward is started. Logits from the returned inputs equal the raw
        inputs' (a suite test, per family). Sites inside the encoder (`vision.out`) cannot be hooked on
        them; `projector.out` is served at the identical LM layer-0 input (see `engine.hooks`).
        """
        if inputs.images_encoded:
            return inputs
        if PIXELS_KWARG not in inputs.model_kwargs:
            raise UserInputError("these inputs have no images to encode", "build the inputs with images")
        encoder = getattr(self.model.base_model, "get_image_features", None)
        if encoder is None:
            raise NotImplementedError(f"{type(self).__name__}: the model has no get_image_features to reuse")
        wanted = inspect.signature(encoder).parameters
        encoder_kwargs = {k: v for k, v in inputs.model_kwargs.items() if k in wanted and k != "kwargs"}
        with torch.no_grad():
            # called directly, so no forward pre-hook moves the inputs: put them on the model's input device
            encoded = encoder(**to_device(encoder_kwargs, self.device), return_dict=True)
        kwargs = {k: v for k, v in inputs.model_kwargs.items() if k != PIXELS_KWARG}
        kwargs[ENCODED_IMAGES_KWARG] = {"image": encoded}
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
        return self.with_image_encodings(inputs, [encoded.model_kwargs[ENCODED_IMAGES_KWARG]] * copies)

    def with_image_encodings(self, inputs: BatchInputs, parts: Sequence[Any]) -> BatchInputs:
        """`inputs` with their pixels replaced by encoder outputs computed elsewhere: `parts` are
        `encode_images` outputs (`model_kwargs[ENCODED_IMAGES_KWARG]`) whose images, joined in order, are
        the batch's images in row order (e.g. one part per picture, each encoded alone). Equal logits to
        the raw inputs' (a suite test, per family)."""
        if not parts:
            raise ValueError("no encoder outputs to join")
        kwargs = {k: v for k, v in inputs.model_kwargs.items() if k != PIXELS_KWARG}
        kwargs[ENCODED_IMAGES_KWARG] = concat_encoded(parts)
        return BatchInputs(kwargs, inputs.images, inputs.prompts, dict(inputs.row_order))

    # ------------------------------------------------------------------ outputs
    def forward_output(self, inputs: BatchInputs, use_cache: bool = False) -> Any:
        """The model's own output for a prompt pass (logits at the last position only; with `use_cache`,
        the KV cache it built): the one place the toolkit calls the wrapped model's forward."""
        with torch.no_grad():
            return self.model(**inputs.model_kwargs, use_cache=use_cache, logits_to_keep=1)

    def forward(self, inputs: BatchInputs) -> torch.Tensor:
        """Logits at the last position of every row, (batch, vocab)."""
        return self.forward_output(inputs).logits[:, -1, :]

    @property
    def attention_implementation(self) -> str:
        """The LM's attention kernel ("sdpa", "eager", ...): the mask format the engine must build when it
        runs decoder layers itself. transformers keeps it in the text config's `_attn_implementation`
        (no public getter in 5.x); reading it here keeps that private name in one place."""
        return str(self.model.config.get_text_config()._attn_implementation)

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
        """Token ids of the single-token spelling variants of one answer (at least one must exist). Kept
        per tokenizer and spelling set: every batch of every condition and alpha asks for the same few."""
        tokenizer, known = vars(self).get("_answer_ids", (None, {}))
        if tokenizer is not self.tokenizer:  # first use, or the tokenizer was replaced
            tokenizer, known = vars(self)["_answer_ids"] = (self.tokenizer, {})
        key = (tuple(variants), require_all)
        if key not in known:
            known[key] = self._answer_token_ids(variants, require_all)
        return list(known[key])

    def _answer_token_ids(self, variants: Sequence[str], require_all: bool) -> list[int]:
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
