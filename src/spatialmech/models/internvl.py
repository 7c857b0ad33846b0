"""InternVL, the native transformers port (`InternVLForConditionalGeneration`, e.g. OpenGVLab/InternVL3-1B-hf):
an InternViT tower with a CLS token, pixel-shuffle downsampling, an MLP projector and a Qwen2 LM.

Family facts the rest of the toolkit relies on:
- Dynamic tiling (as `InternVLProcessor` calls the image processor, `crop_to_patches=True`): the image is
  resized onto the cols x rows grid of square tiles whose aspect ratio is closest to the image's
  (`get_optimal_tiled_canvas`, between min/max_patches tiles), cut row-major, and, when there is more
  than one tile, followed by the whole image resized to one tile (the thumbnail, our global view).
- Each tile of g x g patches loses its CLS token (`vision_feature_select_strategy="default"`) and is
  pixel-shuffled by `downsample_ratio` (0.5: 2x2 patches -> one token), so a token covers a block of
  patches and a tile gives (g/2) x (g/2) tokens.
- In the prompt an image is `<img>` + one `<IMG_CONTEXT>` per token of every tile + `</img>`.
- `vision.out` is the projector's input: the pixel-shuffled features (one row per LM token, each the
  concatenation of its 2x2 patch block), exactly what the projector consumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from spatialmech.errors import UserInputError
from spatialmech.models import _hf_common as hf
from spatialmech.models._layout import (
    FULL_IMAGE,
    View,
    expand_placeholders,
    split_per_row,
    tile_grid_views,
    views_batch,
)
from spatialmech.models.base import BatchInputs, GridSpec, HookPoint
from spatialmech.models.tiny_tokenizer import BASE_WORDS, train_tokenizer

CONTEXT_TOKEN = "<IMG_CONTEXT>"
START_TOKEN = "<img>"
END_TOKEN = "</img>"

# Same layout as the InternVL -hf checkpoints' template (ChatML; an image is "<IMG_CONTEXT>\n").
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Adapter(hf.HFAdapter):
    family: ClassVar[str] = "internvl"
    model_types: ClassVar[tuple[str, ...]] = ("internvl",)
    description: ClassVar[str] = "InternVL (-hf port): InternViT tiles + thumbnail, pixel shuffle, Qwen2"

    hf_model = "transformers:InternVLForConditionalGeneration"
    hf_image_processor = "transformers.models.got_ocr2.image_processing_pil_got_ocr2:GotOcr2ImageProcessorPil"
    processes_images_alone = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, seed: int = 0) -> Adapter:
        """Tiles of 48 px (6x6 patches of 8 px, shuffled to 3x3 tokens), at most 4 tiles per image."""
        from transformers import InternVLConfig, InternVLVisionConfig

        tokenizer = train_tokenizer(
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>", START_TOKEN, END_TOKEN, CONTEXT_TOKEN, "<video>"],
            words=BASE_WORDS,
            chat_template=CHAT_TEMPLATE,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens={
                "start_image_token": START_TOKEN,
                "end_image_token": END_TOKEN,
                "context_image_token": CONTEXT_TOKEN,
                "video_token": "<video>",
            },
        )
        tile, patch = 48, 8
        vision = InternVLVisionConfig(**hf.tiny_vision_sizes(), image_size=[tile, tile], patch_size=[patch, patch])
        text = {"model_type": "qwen2", **hf.tiny_text_config(tokenizer, max_positions=1024)}
        config = InternVLConfig(
            vision_config=vision.to_dict(),
            text_config=text,
            image_token_id=hf.token_id(tokenizer, CONTEXT_TOKEN),
            image_seq_length=(tile // patch // 2) ** 2,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
        model = hf.seeded_model(cls.hf_model_class(), config, seed)
        image_processor = cls.image_processor_class()(
            size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=4
        )
        return cls(model, tokenizer, image_processor, f"tiny-internvl-seed{seed}")

    # ------------------------------------------------------------------ model facts
    @property
    def patch_size(self) -> int:
        patch = self.model.config.vision_config.patch_size
        return int(patch[0] if isinstance(patch, (list, tuple)) else patch)

    def _tokens_per_side(self, tile_px: int) -> int:
        return int(tile_px // self.patch_size * self.model.config.downsample_ratio)

    def grid_spec(self) -> GridSpec:
        """A square image of one tile: the tiler keeps a square image at its own size as one tile (no
        thumbnail), so this is the one grid that needs no resampling."""
        tile_px = int(self.image_processor.size.height)
        tokens = self._tokens_per_side(tile_px)
        return GridSpec(tokens_per_side=tokens, pixels_per_token=tile_px // tokens)

    # ------------------------------------------------------------------ hook sites
    def image_hook_point(self, site: str) -> HookPoint:
        return hf.tapped_projector_hook_point(site, self.model.model.multi_modal_projector)

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self, images: Sequence[Sequence[Any]], prompts: Sequence[str], system: str | None = None
    ) -> BatchInputs:
        if self.model.config.vision_feature_select_strategy != "default":
            raise UserInputError(
                f"model {self.model_id} keeps the CLS token in its image features, which has no grid cell",
                "use an InternVL -hf checkpoint with vision_feature_select_strategy='default'",
            )
        rows = hf.check_batch(images, prompts)
        flat = [image for row in rows for image in row]
        model_kwargs: dict[str, Any] = {}
        flat_views: list[list[View]] = []
        if flat:
            # InternVLProcessor always asks for dynamic tiling; so do we.
            processed = hf.process_images(self, flat, crop_to_patches=True, return_tensors="pt")
            pixel_values = processed["pixel_values"]
            model_kwargs["pixel_values"] = pixel_values.to(self.model.dtype)
            tokens_per_side = self._tokens_per_side(int(pixel_values.shape[-1]))
            for image, num_tiles in zip(flat, processed["num_patches"].tolist()):
                flat_views.append(self._image_views(image.height, image.width, int(num_tiles), tokens_per_side))
        context = getattr(self.tokenizer, "context_image_token", None) or CONTEXT_TOKEN
        start = getattr(self.tokenizer, "start_image_token", None) or START_TOKEN
        end = getattr(self.tokenizer, "end_image_token", None) or END_TOKEN
        views = split_per_row(flat_views, rows)
        texts = []
        for row, prompt, row_views in zip(rows, prompts, views):
            text = hf.render_chat(self.tokenizer, len(row), prompt, system)
            expansions = [start + context * sum(v.num_tokens for v in image_views) + end for image_views in row_views]
            texts.append(expand_placeholders(text, context, expansions))
        return views_batch(self, texts, views, model_kwargs, prompts)

    def _image_views(self, height: int, width: int, num_tiles: int, tokens_per_side: int) -> list[View]:
        """The tiles the processor cut (re-derived with its own canvas rule, checked against its count)."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        processor = self.image_processor
        n_cols, n_rows = 1, 1
        if processor.max_patches > 1:
            tile = (int(processor.size.height), int(processor.size.width))
            n_cols, n_rows = get_optimal_tiled_canvas(
                (height, width), tile, int(processor.min_patches), int(processor.max_patches)
            )
        with_thumbnail = n_cols * n_rows > 1
        if n_cols * n_rows + int(with_thumbnail) != num_tiles:
            raise RuntimeError(
                f"image processor made {num_tiles} tiles, expected a {n_rows}x{n_cols} grid"
                + (" plus thumbnail" if with_thumbnail else "")
            )
        if not with_thumbnail:
            return [View("image", FULL_IMAGE, tokens_per_side, tokens_per_side)]
        return tile_grid_views(n_rows, n_cols, tokens_per_side, with_thumbnail=True)
