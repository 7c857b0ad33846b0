"""LLaVA-1.5: a CLIP vision tower, a 2-layer MLP projector and a Llama LM (`LlavaForConditionalGeneration`).

Family facts the rest of the toolkit relies on:
- The projector consumes the vision tower's hidden states of layer `vision_feature_layer` (-2 for
  LLaVA-1.5), without the CLS token (`vision_feature_select_strategy="default"`), so `vision.out` is the
  projector's *input*, not the tower's last output.
- The image is resized (shortest edge) and centre-cropped, so the token grid covers the central crop of
  a non-square image; token boxes say which part.
- Each `<image>` in the prompt becomes one token per patch, in raster order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from spatialmech.errors import UserInputError
from spatialmech.models import _hf_common as hf
from spatialmech.models._layout import View, expand_placeholders, split_per_row, views_batch
from spatialmech.models.base import BatchInputs, GridSpec, HookPoint
from spatialmech.models.tiny_tokenizer import train_tokenizer

IMAGE_TOKEN = "<image>"

# Same layout as llava-hf/llava-1.5's template: "<system> USER: <image>\n<text> ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for part in message['content'] %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% else %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


class LlavaAdapterBase(hf.HFAdapter):
    """What every `LlavaForConditionalGeneration` checkpoint shares: loading, hook sites, model facts."""

    model_types: ClassVar[tuple[str, ...]] = ("llava",)
    vision_model_types: ClassVar[tuple[str, ...] | None] = None  # None: any tower not claimed by a subclass
    hf_model: ClassVar[str] = "transformers:LlavaForConditionalGeneration"
    # The checkpoint's own processor class: CLIP for LLaVA-1.5, Pixtral's for Pixtral.
    hf_image_processor: ClassVar[str] = "transformers:AutoImageProcessor"

    @classmethod
    def _vision_model_type(cls, config: dict[str, Any]) -> str:
        vision = config.get("vision_config") or {}
        return str(vision.get("model_type", "clip_vision_model")) if isinstance(vision, dict) else ""

    # ------------------------------------------------------------------ model facts
    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    # ------------------------------------------------------------------ hook sites
    def image_hook_point(self, site: str) -> HookPoint:
        # The projector works on (images, tokens, hidden) batches; its taps show them as rows. Its input
        # is exactly what it consumes: the selected vision layer with the CLS token dropped.
        return hf.tapped_projector_hook_point(site, self.model.model.multi_modal_projector)

    # ------------------------------------------------------------------ inputs
    def _finish_batch(
        self, texts: list[str], pixel_inputs: dict[str, torch.Tensor], views: list[list[list[View]]], prompts: Sequence[str]
    ) -> BatchInputs:
        """Start every prompt with BOS (LLaVA's template omits it; the model was trained with it), then
        tokenize and map image positions to views."""
        bos = self.tokenizer.bos_token
        if bos and getattr(self, "prepend_bos", True):
            texts = [text if text.startswith(bos) else bos + text for text in texts]
        return views_batch(self, texts, views, pixel_inputs, prompts)


class Adapter(LlavaAdapterBase):
    """LLaVA-1.5 (and other `llava` checkpoints with a CLIP-like tower that has a CLS token)."""

    family: ClassVar[str] = "llava"
    description: ClassVar[str] = "LLaVA-1.5: CLIP (layer -2, no CLS) + MLP projector + Llama"

    @classmethod
    def handles(cls, config: dict[str, Any]) -> bool:
        # Pixtral checkpoints are also `llava`; they belong to the pixtral adapter.
        return config.get("model_type") in cls.model_types and cls._vision_model_type(config) != "pixtral"

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, seed: int = 0) -> Adapter:
        from transformers import (
            CLIPImageProcessorPil,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
        )

        tokenizer = train_tokenizer(
            ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN],
            words=tiny_words(("USER", "ASSISTANT")),
            chat_template=CHAT_TEMPLATE,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
        )
        image_size, patch_size = 32, 8
        vision = CLIPVisionConfig(
            **hf.tiny_vision_sizes(), image_size=image_size, patch_size=patch_size, projection_dim=32
        )
        text = LlamaConfig(**hf.tiny_text_config(tokenizer, max_positions=512))
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            image_seq_length=(image_size // patch_size) ** 2,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        model = hf.seeded_model(cls.hf_model_class(), config, seed)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        return cls(model, tokenizer, image_processor, f"tiny-llava-seed{seed}")

    # ------------------------------------------------------------------ model facts
    def grid_spec(self) -> GridSpec:
        height, width = _crop_size(self.image_processor)
        side = min(height, width) // self.patch_size
        return GridSpec(tokens_per_side=side, pixels_per_token=self.patch_size)

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self, images: Sequence[Sequence[Any]], prompts: Sequence[str], system: str | None = None
    ) -> BatchInputs:
        if self.model.config.vision_feature_select_strategy != "default":
            raise UserInputError(
                f"model {self.model_id} keeps the CLS token in its image tokens (vision_feature_select_strategy="
                f"{self.model.config.vision_feature_select_strategy!r}), which has no grid cell",
                "use a LLaVA checkpoint with vision_feature_select_strategy='default' (LLaVA-1.5)",
            )
        rows = hf.check_batch(images, prompts)
        flat = [image for row in rows for image in row]
        pixel_inputs: dict[str, torch.Tensor] = {}
        flat_views: list[list[View]] = []
        if flat:
            pixel_values = hf.process_images(self, flat, return_tensors="pt")["pixel_values"]
            pixel_inputs["pixel_values"] = pixel_values.to(self.model.dtype)
            crop_h, crop_w = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
            n_rows, n_cols = crop_h // self.patch_size, crop_w // self.patch_size
            for image in flat:
                box = _processed_box_in_original(self.image_processor, image.height, image.width, crop_h, crop_w)
                flat_views.append([View("image", box, n_rows, n_cols)])
        views = split_per_row(flat_views, rows)
        texts = []
        for row, prompt, row_views in zip(rows, prompts, views):
            text = hf.render_chat(self.tokenizer, len(row), prompt, system)
            expansions = [IMAGE_TOKEN * sum(view.num_tokens for view in image_views) for image_views in row_views]
            texts.append(expand_placeholders(text, IMAGE_TOKEN, expansions))
        return self._finish_batch(texts, pixel_inputs, views, prompts)


# ---------------------------------------------------------------------------------------- helpers


def tiny_words(extra: Sequence[str]) -> tuple[str, ...]:
    from spatialmech.models.tiny_tokenizer import BASE_WORDS

    return tuple(BASE_WORDS) + tuple(extra)


def _crop_size(image_processor: Any) -> tuple[int, int]:
    """(height, width) of the processed image the vision tower sees."""
    if getattr(image_processor, "do_center_crop", False) and image_processor.crop_size:
        return int(image_processor.crop_size.height), int(image_processor.crop_size.width)
    size = image_processor.size
    if size.height and size.width:
        return int(size.height), int(size.width)
    edge = int(size.shortest_edge)
    return edge, edge


def _processed_box_in_original(
    image_processor: Any, height: int, width: int, out_h: int, out_w: int
) -> tuple[float, float, float, float]:
    """The rectangle of the original image (fractions) that the processed (out_h x out_w) image shows.

    Follows the CLIP/LLaVA processor's geometry: optional pad-to-square (centred), resize (shortest edge
    or fixed size), optional centre crop. Fractions outside [0, 1] mean padding.
    """
    from transformers.image_transforms import get_resize_output_image_size

    canvas_h, canvas_w, offset_y, offset_x = height, width, 0.0, 0.0
    if getattr(image_processor, "do_pad", False) and hasattr(image_processor, "pad_to_square"):
        side = max(height, width)
        offset_y, offset_x = (side - height) // 2, (side - width) // 2
        canvas_h = canvas_w = side
    resized_h, resized_w = canvas_h, canvas_w
    if image_processor.do_resize:
        size = image_processor.size
        if size.shortest_edge and not size.longest_edge:
            resized_h, resized_w = get_resize_output_image_size(
                np.zeros((1, canvas_h, canvas_w)), size=size.shortest_edge, default_to_square=False,
                input_data_format="channels_first",
            )
        elif size.height and size.width:
            resized_h, resized_w = size.height, size.width
        else:
            raise UserInputError(
                f"image processor size {dict(size)} is not supported by the llava adapter",
                "use a processor with size {'shortest_edge': N} or {'height': H, 'width': W}",
            )
    top = left = 0
    if getattr(image_processor, "do_center_crop", False):
        top, left = (resized_h - out_h) // 2, (resized_w - out_w) // 2
    elif (resized_h, resized_w) != (out_h, out_w):
        raise RuntimeError(f"processed image is {out_h}x{out_w}, expected {resized_h}x{resized_w}")
    scale_y, scale_x = canvas_h / resized_h, canvas_w / resized_w
    x0 = (left * scale_x - offset_x) / width
    x1 = ((left + out_w) * scale_x - offset_x) / width
    y0 = (top * scale_y - offset_y) / height
    y1 = ((top + out_h) * scale_y - offset_y) / height
    return (x0, y0, x1, y1)
