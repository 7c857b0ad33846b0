"""Pieces every Hugging Face adapter needs: chat rendering, the LM hook sites, and building
`ImageTokens` from a token grid; loading (`_loading`) and tiny models (`_tiny`) are re-exported, so a
family reaches everything shared as `hf.*`.

Kept here so each family file only states what is specific to the family (which modules, which
special tokens, how the image slot expands).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from spatialmech.errors import UserInputError
from spatialmech.models._loading import first_line, load_hf_model, load_image_processor, load_tokenizer  # noqa: F401
from spatialmech.models._taps import FlatTaps, RowOrder
from spatialmech.models._tiny import (  # noqa: F401 (families reach loading and tiny models as hf.*)
    seeded_model,
    special_token_ids,
    tiny_siglip_config,
    tiny_text_config,
    tiny_vision_sizes,
)
from spatialmech.models.base import PIXELS_KWARG, GridSpec, HookPoint, ImageTokens, VLMAdapter
from spatialmech.models.inputs import PIXELS_ELSEWHERE
from spatialmech.models.placement import Placement
from spatialmech.sharing import image_digest, sharing_default


class HFAdapter(VLMAdapter):
    """A family served by one transformers `*ForConditionalGeneration` class: loading, the LM's size and
    image token, and the hook-site dispatch are the same for all of them.

    A family file states only its facts: which classes (`hf_model`, `hf_image_processor`), where its
    LM layers live (`lm_layers`) and which modules are its image sites (`image_hook_point`).
    """

    # "module:Class" paths, imported only when used (a transformers without the class = no family).
    hf_model: ClassVar[str]
    hf_image_processor: ClassVar[str]  # the PIL-backend processor, never the torchvision one
    # The image processor treats each image on its own, its output for a list of images is every image's
    # own output joined (tensors along the first axis, lists end to end), and everything in it but the
    # pixels depends on the image's size only: then a batch's repeated pictures (four questions about one
    # picture) are processed once and pictures whose encoder output is kept elsewhere not at all
    # (`process_images`; a suite test checks the declaration). Not so for processors that pad a batch to
    # its largest image or nest rows.
    processes_images_alone: ClassVar[bool] = False

    @classmethod
    def hf_model_class(cls) -> Any:
        return import_class(cls.hf_model)

    @classmethod
    def image_processor_class(cls) -> Any:
        return import_class(cls.hf_image_processor)

    @classmethod
    def checkpoint_classes(cls, path_or_id: str, *, trust_remote_code: bool) -> tuple[Any, Any]:
        """(model class, image processor class) for one checkpoint; families whose class depends on the
        checkpoint's `model_type` (Idefics3 vs SmolVLM) override this."""
        return cls.hf_model_class(), cls.image_processor_class()

    @classmethod
    def from_pretrained(
        cls, path_or_id: str, *, dtype: torch.dtype | None = None, device: str | Placement = "auto", trust_remote_code: bool = False
    ) -> VLMAdapter:
        model_cls, processor_cls = cls.checkpoint_classes(path_or_id, trust_remote_code=trust_remote_code)
        model = load_hf_model(model_cls, path_or_id, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(path_or_id, trust_remote_code=trust_remote_code)
        image_processor = load_image_processor(processor_cls, path_or_id)
        return cls(model, tokenizer, image_processor, path_or_id)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.text_config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def lm_layers(self) -> nn.ModuleList:
        """The decoder layers the `lm.*` sites hook (Idefics3 calls its LM `text_model`)."""
        return self.model.model.language_model.layers

    def image_hook_point(self, site: str) -> HookPoint:
        """`vision.out` or `projector.out`: the family's own modules."""
        raise NotImplementedError(f"{type(self).__name__} must define image_hook_point()")

    def hook_point(self, site: str) -> HookPoint:
        if site in ("vision.out", "projector.out"):
            return self.image_hook_point(site)
        return decoder_layer_hook_point(self, site, self.lm_layers())


def import_class(path: str) -> Any:
    """The class at "package.module:Class"."""
    import importlib

    module_name, class_name = path.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def tapped_projector_hook_point(
    site: str, projector: nn.Module, input_order: RowOrder | None = None, rows_per_lm_token: int = 1
) -> HookPoint:
    """`vision.out` = the projector's input, `projector.out` = its output, both read through `FlatTaps`
    as (rows, hidden); `rows_per_lm_token` > 1 where the projector folds several rows into one LM token."""
    taps = FlatTaps.on(projector, input_order=input_order)
    if site == "vision.out":
        return HookPoint(site, taps.input, when="output", space="image_tokens", rows_per_lm_token=rows_per_lm_token)
    return HookPoint(site, taps.output, when="output", space="image_tokens")


# ------------------------------------------------------------------------------------------ inputs


def user_content(num_images: int, prompt: str) -> list[dict[str, str]]:
    """The user turn in HF's content-list format: images first, then the text (SPEC: image before text)."""
    return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]


def render_chat(tokenizer: Any, num_images: int, prompt: str, system: str | None) -> str:
    """The prompt string up to and including the assistant turn opening, from the family's chat template.

    The system message is always passed as a system turn; templates without a system role (Gemma)
    fold it into the first user turn themselves, exactly as the real checkpoint does.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserInputError(
            "the model's tokenizer has no chat template",
            "use an instruction-tuned checkpoint that ships chat_template (tokenizer_config.json or chat_template.jinja)",
        )
    template = tokenizer.chat_template
    try:  # a tokenizer that cannot be a weak key, or a dict of named templates: rendered every time
        rendered = _RENDERED.setdefault(tokenizer, {})
        key = (template, num_images, prompt, system)
        hash(key)
    except TypeError:
        return _render(tokenizer, num_images, prompt, system)
    if key not in rendered:
        if len(rendered) >= _RENDERED_LIMIT:
            rendered.clear()
        rendered[key] = _render(tokenizer, num_images, prompt, system)
    return rendered[key]


# tokenizer -> (template, images, prompt, system) -> text: the Jinja template is the slow part of building
# a batch, and the same few prompts come back for every picture, condition and alpha
_RENDERED: weakref.WeakKeyDictionary[Any, dict[tuple, str]] = weakref.WeakKeyDictionary()
_RENDERED_LIMIT = 4096


def _render(tokenizer: Any, num_images: int, prompt: str, system: str | None) -> str:
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": user_content(num_images, prompt)})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # the template is the checkpoint's Jinja code: syntax errors, raise_exception(...)
        raise UserInputError(
            f"the model's chat template fails to render ({type(exc).__name__}: {first_line(exc)})",
            "use the checkpoint's original chat template (tokenizer_config.json or chat_template.jinja)",
        ) from exc


def image_slot_error(found: int, expected: int, placeholder: str) -> UserInputError:
    """The one-line error for a rendered prompt whose image slots do not match its images.

    Fewer slots than images: the checkpoint's chat template has no place for images (e.g. a text-only
    template); more: the prompt text itself contains the placeholder.
    """
    if found < expected:
        return UserInputError(
            f"the model's chat template put {found} image slots ({placeholder}) in a prompt with {expected} images",
            "use the checkpoint's original chat template, which places an image slot for each image",
        )
    return UserInputError(
        f"prompt holds {found} image slots for {expected} images",
        f"do not write {placeholder} in prompt text; pass images separately",
    )


def check_batch(images: Sequence[Sequence[Any]], prompts: Sequence[str]) -> list[list[Any]]:
    if len(images) != len(prompts):
        raise UserInputError(
            f"got {len(images)} image lists for {len(prompts)} prompts", "pass one list of images per prompt"
        )
    if not prompts:
        raise UserInputError("empty batch", "pass at least one prompt")
    return [[_as_rgb(image) for image in row] for row in images]


def process_images(adapter: VLMAdapter, images: Sequence[Any], **kwargs: Any) -> Any:
    """`adapter.image_processor(images=images, **kwargs)`, with an image the processor cannot take
    (an extreme aspect ratio, a side that rounds to zero patches) as a one-line error, not a crash.
    With sharing on (`spatialmech.sharing`), a family that `processes_images_alone` processes each
    distinct picture of the call once (preprocessing was most of building a batch's inputs)."""
    try:
        if getattr(adapter, "processes_images_alone", False) and sharing_default():
            return _each_picture_once(adapter, images, kwargs, PIXELS_ELSEWHERE.get())
        return adapter.image_processor(images=images, **kwargs)
    except ValueError as exc:
        flat = [image for item in images for image in (item if isinstance(item, (list, tuple)) else [item])]
        sizes = ", ".join(sorted({f"{image.width}x{image.height}" for image in flat if hasattr(image, "width")}))
        raise UserInputError(
            f"the image processor of model {adapter.model_id} cannot take images of {sizes} pixels ({first_line(exc)})",
            "use photos with a less extreme aspect ratio (crop or pad them)",
        ) from exc


def _each_picture_once(adapter: VLMAdapter, images: Sequence[Any], kwargs: dict[str, Any], elsewhere: bool) -> Any:
    """The processor's output for `images`, each distinct picture processed alone and the outputs joined
    in order (the same numbers as one call: the family declares it, a suite test checks it); with
    `elsewhere` (`pixels_elsewhere`), no picture is processed: each gets zero pixels of its size, all of
    them one zero broadcast to the joined shape (writing and joining zeros was most of building a batch)."""
    from transformers import BatchFeature

    if elsewhere:
        by_size: dict[tuple[int, int], Any] = {}
        for image in images:
            if image.size not in by_size:
                by_size[image.size] = _size_template(adapter, image, kwargs)
        parts = [by_size[image.size] for image in images]
    else:
        keys = [image_digest(image) for image in images]
        if len(set(keys)) == len(keys):
            return adapter.image_processor(images=images, **kwargs)
        alone: dict[str, Any] = {}
        for key, image in zip(keys, images):
            if key not in alone:
                alone[key] = adapter.image_processor(images=[image], **kwargs)
        parts = [alone[key] for key in keys]
    joined: dict[str, Any] = {}
    for name, first in parts[0].items():
        values = [part[name] for part in parts]
        if elsewhere and name == PIXELS_KWARG:
            joined[name] = _zero_pixels(values)
        elif isinstance(first, torch.Tensor):
            joined[name] = torch.cat(values)
        elif isinstance(first, list):
            joined[name] = [x for value in values for x in value]
        elif all(value == first for value in values):
            joined[name] = first
        else:
            raise RuntimeError(f"image processor output {name!r} differs per picture: {type(adapter).__name__} must not declare processes_images_alone")
    return BatchFeature(joined)


_TEMPLATES_KEPT = 4096  # image sizes whose processor output (less its pixels) is kept per adapter


def _size_template(adapter: VLMAdapter, image: Any, kwargs: dict[str, Any]) -> Any:
    """What the processor gives an image of this size, its pixels zero. The rest is kept per size, the
    pixels as their shape only (photos come in many sizes: zero tensors kept for each would add up)."""
    from PIL import Image

    templates = vars(adapter).setdefault("_pixel_templates", {})
    key = (image.size, image.mode, repr(sorted(kwargs.items())))
    if key not in templates:
        if len(templates) >= _TEMPLATES_KEPT:
            templates.clear()
        processed = adapter.image_processor(images=[Image.new(image.mode, image.size)], **kwargs)
        templates[key] = {name: (value.shape, value.dtype) if name == PIXELS_KWARG else value for name, value in processed.items()}
    return templates[key]


def _zero_pixels(shapes: Sequence[tuple[torch.Size, torch.dtype]]) -> torch.Tensor:
    """Zero pixels of the pictures' (shape, dtype) joined along the first axis, as one zero broadcast to
    that shape (no memory written: they are replaced before any forward)."""
    (shape, dtype), rest = shapes[0], {(tuple(s[1:]), d) for s, d in shapes}
    if len(rest) != 1:
        return torch.cat([torch.zeros(s, dtype=d) for s, d in shapes])
    return torch.zeros((), dtype=dtype).expand(sum(int(s[0]) for s, _ in shapes), *shape[1:])


def _as_rgb(image: Any) -> Any:
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise UserInputError(f"expected a PIL image, got {type(image).__name__}", "open images with spatialmech.io.open_image")
    return image if image.mode == "RGB" else image.convert("RGB")


def tokenize_left_padded(tokenizer: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Token ids of already-rendered chat strings (special tokens are in the text), left padded."""
    tokenizer.padding_side = "left"
    encoded = tokenizer(list(texts), padding=True, return_tensors="pt", add_special_tokens=False)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def split_image_positions(
    input_ids: torch.Tensor, image_token_id: int, counts_per_row: Sequence[Sequence[int]]
) -> list[list[torch.Tensor]]:
    """Per batch row, per image: the LM positions of that image's tokens (image slots in prompt order)."""
    out = []
    for row, counts in enumerate(counts_per_row):
        positions = (input_ids[row] == image_token_id).nonzero().flatten()
        if positions.numel() != sum(counts):
            raise RuntimeError(
                f"row {row}: {positions.numel()} image tokens in the prompt, {sum(counts)} expected from the image grids"
            )
        out.append(list(torch.split(positions, list(counts))))
    return out


def grid_image_tokens(positions: torch.Tensor, n_rows: int, n_cols: int) -> ImageTokens:
    """ImageTokens of a single-view image whose tokens are a raster-order (n_rows x n_cols) grid that
    covers the whole image (the image is resized, not cropped, to the model's input)."""
    if positions.numel() != n_rows * n_cols:
        raise RuntimeError(f"{positions.numel()} image positions for a {n_rows}x{n_cols} grid")
    index = torch.arange(n_rows * n_cols)
    rows, cols = index // n_cols, index % n_cols
    boxes = torch.stack([cols / n_cols, rows / n_rows, (cols + 1) / n_cols, (rows + 1) / n_rows], dim=1).float()
    return ImageTokens(
        positions=positions.clone().long(),
        tiles=torch.zeros(n_rows * n_cols, dtype=torch.long),
        rows=rows,
        cols=cols,
        boxes=boxes,
        grid_shapes=[(n_rows, n_cols)],
    )


def square_grid_images(
    input_ids: torch.Tensor, image_token_id: int, rows: Sequence[Sequence[Any]], side: int
) -> list[list[ImageTokens]]:
    """ImageTokens of every image of a batch where each image is the same (side x side) raster grid
    (fixed-size models: Gemma3, PaliGemma)."""
    counts = [[side * side] * len(row) for row in rows]
    positions = split_image_positions(input_ids, image_token_id, counts)
    return [[grid_image_tokens(pos, side, side) for pos in row_positions] for row_positions in positions]


def square_processor_grid(image_processor: Any, tokens_per_side: int) -> GridSpec:
    """The grid of a fixed-size processor (`size` = height x width) cut into tokens_per_side^2 tokens."""
    size = image_processor.size
    height, width = int(size["height"]), int(size["width"])
    if height != width or height % tokens_per_side:
        raise UserInputError(
            f"image processor size {height}x{width} does not split into a {tokens_per_side}-token square grid",
            "use the checkpoint's own preprocessor_config.json",
        )
    return GridSpec(tokens_per_side=tokens_per_side, pixels_per_token=height // tokens_per_side)


# ------------------------------------------------------------------------------------------ hooks


def decoder_layer_hook_point(adapter: VLMAdapter, site: str, layers: nn.ModuleList) -> HookPoint:
    """The four per-layer LM sites on a standard pre-norm decoder layer (`self_attn`, `mlp`).

    In transformers 5.x a decoder layer returns the hidden-state tensor itself and is called with the
    hidden states as its first positional argument, so resid_pre is a pre-hook's first argument and
    resid_post the output. `self_attn` returns (output, weights): the hook reads the first element.

    Sandwich-norm layers (Gemma2/3: `pre_feedforward_layernorm` + `post_feedforward_layernorm`) norm
    each block's output before adding it to the residual; there the sites are those post-norms, so
    that on every family resid_post = resid_pre + attn + mlp (what each block writes to the stream).
    """
    kind, layer = adapter.parse_layer_site(site)
    block = layers[layer]
    sandwich = hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_feedforward_layernorm")
    if kind == "resid_pre":
        return HookPoint(site, block, when="input")
    if kind == "resid_post":
        return HookPoint(site, block, when="output")
    if kind == "attn":
        return HookPoint(site, block.post_attention_layernorm if sandwich else block.self_attn, when="output")
    return HookPoint(site, block.post_feedforward_layernorm if sandwich else block.mlp, when="output")


def token_id(tokenizer: Any, token: str) -> int:
    value = tokenizer.convert_tokens_to_ids(token)
    if value is None or value == tokenizer.unk_token_id:
        raise RuntimeError(f"tokenizer has no token {token!r}")
    return int(value)
