"""Idefics3 and SmolVLM (`Idefics3ForConditionalGeneration`, `SmolVLMForConditionalGeneration`): a SigLIP-like
tower on square tiles, a pixel-shuffle connector, a Llama LM. One adapter serves both: same modules,
same image processing, same prompt expansion; only the classes and the chat template differ.

Family facts the rest of the toolkit relies on:
- The processor scales the image to `size.longest_edge`, stretches it to whole tiles of
  `max_image_size.longest_edge` px, and cuts it into rows x cols tiles (row-major), then appends the whole
  image resized to one tile (the global view). A small image is a single global tile (rows = cols = 0).
- The connector's pixel shuffle folds each s x s block of patches (s = `scale_factor`) into one LM
  token, so a tile of g x g patches gives (g/s) x (g/s) tokens and a token covers a block of patches.
- In the prompt each tile is `<fake_token_around_image><row_i_col_j>` + its `<image>` tokens, a newline
  closes each row of tiles, and the global view is `\n<fake_token_around_image><global-img>` + its
  tokens + `<fake_token_around_image>`. Only `<image>` positions carry image features.
- `vision.out` is the connector's input (the tower's output, every patch) with rows grouped s*s per LM
  token, in the same order as the pixel shuffle groups them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from spatialmech.errors import UserInputError
from spatialmech.models import _hf_common as hf
from spatialmech.models._layout import FULL_IMAGE, View, expand_placeholders, tile_grid_views, views_batch
from spatialmech.models._taps import pixel_shuffle_groups
from spatialmech.models.base import BatchInputs, GridSpec, HookPoint
from spatialmech.models.tiny_tokenizer import BASE_WORDS, train_tokenizer

IMAGE_TOKEN = "<image>"
FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
MAX_TILE_GRID = 6  # the real tokenizers carry <row_i_col_j> tokens for i, j in 1..6


def _chat_template(start: str) -> str:
    """The Idefics3/SmolVLM layout: "<start>System: ...<end_of_utterance>\\nUser:<image>text<end_of_utterance>\\nAssistant:"
    (a colon without a space when the turn starts with an image)."""
    return (
        start
        + "{% for message in messages %}{{ message['role'] | capitalize }}"
        "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
        "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
        "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


# Per model_type: (model class, config class, vision config class, PIL image processor class, BOS text).
_VARIANTS: dict[str, tuple[str, str, str, str, str]] = {
    "idefics3": (
        "Idefics3ForConditionalGeneration",
        "Idefics3Config",
        "Idefics3VisionConfig",
        "transformers.models.idefics3.image_processing_pil_idefics3:Idefics3ImageProcessorPil",
        "<|begin_of_text|>",
    ),
    "smolvlm": (
        "SmolVLMForConditionalGeneration",
        "SmolVLMConfig",
        "SmolVLMVisionConfig",
        "transformers.models.smolvlm.image_processing_pil_smolvlm:SmolVLMImageProcessorPil",
        "<|im_start|>",
    ),
}


def _variant_classes(model_type: str) -> tuple[Any, Any, Any, Any, str]:
    import transformers

    model_name, config_name, vision_name, processor_path, bos = _VARIANTS[model_type]
    return (
        getattr(transformers, model_name),
        getattr(transformers, config_name),
        getattr(transformers, vision_name),
        hf.import_class(processor_path),
        bos,
    )


class Adapter(hf.HFAdapter):
    family: ClassVar[str] = "idefics3"
    model_types: ClassVar[tuple[str, ...]] = ("idefics3", "smolvlm")
    description: ClassVar[str] = "Idefics3 / SmolVLM: tiles + global view, pixel-shuffle connector, Llama"

    # ------------------------------------------------------------------ construction
    @classmethod
    def checkpoint_classes(cls, path_or_id: str, *, trust_remote_code: bool) -> tuple[Any, Any]:
        """Idefics3 or SmolVLM classes, by the checkpoint's `model_type`."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
        if config.model_type not in _VARIANTS:
            raise UserInputError(
                f"model {path_or_id!r} is a {config.model_type!r} checkpoint, not Idefics3/SmolVLM",
                "load it with spatialmech.models.load_model, which picks the right adapter",
            )
        model_cls, _, _, processor_cls, _ = _variant_classes(config.model_type)
        return model_cls, processor_cls

    @classmethod
    def tiny(cls, seed: int = 0, *, model_type: str = "idefics3") -> Adapter:
        """Tiles of 48 px (6x6 patches of 8 px, shuffled 2x2 -> 3x3 tokens); square inputs of 96 px give
        2x2 tiles + the global view = 45 image tokens. `model_type="smolvlm"` builds the SmolVLM classes."""
        model_cls, config_cls, vision_cls, processor_cls, bos = _variant_classes(model_type)
        grid_tokens = [f"<row_{r}_col_{c}>" for r in range(1, MAX_TILE_GRID + 1) for c in range(1, MAX_TILE_GRID + 1)]
        specials = [bos, "<|end_of_text|>", FAKE_TOKEN, IMAGE_TOKEN, GLOBAL_TOKEN, END_OF_UTTERANCE, *grid_tokens]
        tokenizer = train_tokenizer(
            list(dict.fromkeys(specials)),
            words=(*BASE_WORDS, "User", "Assistant", "System"),
            chat_template=_chat_template(bos),
            bos_token=bos,
            eos_token=END_OF_UTTERANCE,
            pad_token="<|end_of_text|>",
        )
        tile, patch, scale = 48, 8, 2
        vision = vision_cls(**hf.tiny_vision_sizes(), image_size=tile, patch_size=patch)
        text = {"model_type": "llama", **hf.tiny_text_config(tokenizer, max_positions=1024)}
        config = config_cls(
            vision_config=vision.to_dict(),
            text_config=text,
            scale_factor=scale,
            image_token_id=hf.token_id(tokenizer, IMAGE_TOKEN),
        )
        model = hf.seeded_model(model_cls, config, seed)
        image_processor = processor_cls(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile})
        return cls(model, tokenizer, image_processor, f"tiny-{model_type}-seed{seed}")

    # ------------------------------------------------------------------ model facts
    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def scale_factor(self) -> int:
        return int(self.model.config.scale_factor)

    def grid_spec(self) -> GridSpec:
        """The global view's grid (the main tile) at the processor's working size: every image is scaled
        to `size.longest_edge`, and a global token then spans longest_edge / tokens_per_side pixels
        (and exactly n x n tokens of the tiles, so stimuli drawn on it align with both)."""
        tile_px = int(self.image_processor.max_image_size["longest_edge"])
        tokens_per_side = tile_px // self.patch_size // self.scale_factor
        longest = int(self.image_processor.size.longest_edge) if self.image_processor.do_image_splitting else tile_px
        return GridSpec(tokens_per_side=tokens_per_side, pixels_per_token=longest // tokens_per_side)

    # ------------------------------------------------------------------ hook sites
    def lm_layers(self) -> nn.ModuleList:
        return self.model.model.text_model.layers

    def image_hook_point(self, site: str) -> HookPoint:
        scale = self.scale_factor
        return hf.tapped_projector_hook_point(
            site,
            self.model.model.connector,
            input_order=lambda shape: pixel_shuffle_groups(math.isqrt(int(shape[-2])), scale),
            rows_per_lm_token=scale * scale,
        )

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self, images: Sequence[Sequence[Any]], prompts: Sequence[str], system: str | None = None
    ) -> BatchInputs:
        rows = hf.check_batch(images, prompts)
        model_kwargs: dict[str, Any] = {}
        tile_layouts: list[list[tuple[int, int]]] = [[] for _ in rows]
        tokens_per_side = 0
        if any(rows):
            processed = hf.process_images(self, rows, return_row_col_info=True, return_tensors="pt")
            pixel_values = processed["pixel_values"]
            model_kwargs["pixel_values"] = pixel_values.to(self.model.dtype)
            model_kwargs["pixel_attention_mask"] = processed["pixel_attention_mask"]
            tile_px = int(pixel_values.shape[-1])
            tokens_per_side = tile_px // self.patch_size // self.scale_factor
            tile_layouts = [list(zip(r, c)) for r, c in zip(processed["rows"], processed["cols"])]
        texts, views = [], []
        for row, prompt, layouts in zip(rows, prompts, tile_layouts):
            text = hf.render_chat(self.tokenizer, len(row), prompt, system)
            row_views = [_image_views(n_rows, n_cols, tokens_per_side) for n_rows, n_cols in layouts]
            texts.append(expand_placeholders(text, IMAGE_TOKEN, [_image_prompt(v, n_cols) for v, (_, n_cols) in zip(row_views, layouts)]))
            views.append(row_views)
        return views_batch(self, texts, views, model_kwargs, prompts)


def _image_views(n_rows: int, n_cols: int, tokens_per_side: int) -> list[View]:
    """The views of one image in LM order: its tiles row-major then the global view, or only the global view."""
    if n_rows == 0 and n_cols == 0:
        return [View("image", FULL_IMAGE, tokens_per_side, tokens_per_side)]
    if n_rows > MAX_TILE_GRID or n_cols > MAX_TILE_GRID:
        raise UserInputError(
            f"the image processor cut an image into {n_rows}x{n_cols} tiles; the tokenizer names at most "
            f"{MAX_TILE_GRID}x{MAX_TILE_GRID}",
            "use the checkpoint's own preprocessor_config.json (size / max_image_size)",
        )
    return tile_grid_views(n_rows, n_cols, tokens_per_side, with_thumbnail=True)


def _image_prompt(views: list[View], n_cols: int) -> str:
    """The prompt text of one image, as the Idefics3/SmolVLM processors write it."""
    *tiles, global_view = views
    global_text = FAKE_TOKEN + GLOBAL_TOKEN + IMAGE_TOKEN * global_view.num_tokens + FAKE_TOKEN
    if not tiles:
        return global_text
    text = ""
    for index, view in enumerate(tiles):
        row, col = divmod(index, n_cols)
        text += f"{FAKE_TOKEN}<row_{row + 1}_col_{col + 1}>" + IMAGE_TOKEN * view.num_tokens
        if col == n_cols - 1:
            text += "\n"
    return text + "\n" + global_text
