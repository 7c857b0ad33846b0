"""Qwen2-VL: ViT with 14 px patches, 2x2 patch merger (28 px per LM token), M-RoPE LM.

Family facts this adapter encodes:
- The HF `Qwen2VLProcessor` needs torchvision (its video processor), so we compose the tokenizer and
  the PIL-backend image processor ourselves and expand each `<|image_pad|>` to the token count given
  by `image_grid_thw` (t * h * w / merge**2), as the processor would.
- The model needs `mm_token_type_ids` (1 at image tokens) to build M-RoPE positions.
- The image processor orders patches merge-group by merge-group (raster over the merged grid, and
  row-major inside each merge**2 group), so the merger's input rows (`vision.out`) come in groups of
  merge**2 per LM token and its output rows (`projector.out`) are in raster order = LM order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from spatialmech.models import _hf_common as hf
from spatialmech.models._grid import fit_grid
from spatialmech.models._layout import split_per_row
from spatialmech.models.base import BatchInputs, GridSpec, HookPoint
from spatialmech.models.tiny_tokenizer import train_tokenizer

# The real Qwen2-VL-Instruct chat template (image slot = vision_start, image_pad, vision_end).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
IMAGE_PAD = "<|image_pad|>"


def qwen_tiny_tokenizer() -> Any:
    return train_tokenizer(
        QWEN_SPECIAL_TOKENS,
        chat_template=QWEN_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


class Adapter(hf.HFAdapter):
    family = "qwen2-vl"
    model_types = ("qwen2_vl",)
    description = "Qwen2-VL (ViT 14 px patches, 2x2 merger, M-RoPE); paper's main model"
    default_dtype = torch.float32  # the authors run Qwen2-VL in fp32 (Table 5 is precision-sensitive)
    paper_preset = "qwen"  # 12x12 tokens of 28 px (336 px images)

    # ------------------------------------------------------------------ family classes (Qwen2.5 overrides)
    hf_model = "transformers:Qwen2VLForConditionalGeneration"
    hf_image_processor = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl:Qwen2VLImageProcessorPil"
    processes_images_alone = True
    hf_config = "transformers:Qwen2VLConfig"  # for tiny()

    # ------------------------------------------------------------------ construction
    @classmethod
    def _tiny_vision_config(cls, hidden_size: int, vision_depth: int, vision_width: int) -> dict[str, Any]:
        return {
            "depth": vision_depth,
            "embed_dim": vision_width,
            "hidden_size": hidden_size,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        tokens_per_side: int = 6,
        hidden_size: int = 64,
        num_layers: int = 2,
        vision_depth: int = 1,
        vision_width: int = 32,
        num_heads: int = 4,
        tokenizer: Any = None,
    ) -> Adapter:
        """Random tiny model of the real architecture; square inputs give a tokens_per_side^2 grid.

        The keyword sizes let the bundled model reuse this recipe at a larger size.
        """
        tokenizer = tokenizer if tokenizer is not None else qwen_tiny_tokenizer()
        head_dim = hidden_size // num_heads
        # M-RoPE splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
        half = head_dim // 2
        mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
        config = hf.import_class(cls.hf_config)(
            text_config=hf.tiny_text_config(
                tokenizer,
                hidden_size=hidden_size,
                num_layers=num_layers,
                num_heads=num_heads,
                num_kv_heads=max(1, num_heads // 2),
                rope_parameters={"rope_type": "default", "mrope_section": mrope_section, "rope_theta": 10000.0},
            ),
            vision_config=cls._tiny_vision_config(hidden_size, vision_depth, vision_width),
            image_token_id=hf.token_id(tokenizer, IMAGE_PAD),
            video_token_id=hf.token_id(tokenizer, "<|video_pad|>"),
            vision_start_token_id=hf.token_id(tokenizer, "<|vision_start|>"),
            vision_end_token_id=hf.token_id(tokenizer, "<|vision_end|>"),
        )
        model = hf.seeded_model(cls.hf_model_class(), config, seed)
        side = tokens_per_side * 28
        image_processor = cls.image_processor_class()(min_pixels=28 * 28 * 4, max_pixels=side * side)
        return cls(model, tokenizer, image_processor, f"tiny-{cls.family}")

    # ------------------------------------------------------------------ model facts
    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def grid_spec(self) -> GridSpec:
        """28 px per token (patch * merge); the paper's 12x12 grid (or --grid), within the square sizes
        the processor's min_pixels / max_pixels keep unresized."""
        factor = int(self.image_processor.patch_size) * int(self.image_processor.merge_size)
        size = self.image_processor.size
        max_side = int(math.isqrt(int(size["longest_edge"])) // factor)
        min_side = math.ceil(math.sqrt(int(size["shortest_edge"])) / factor)
        return fit_grid(self, min_side, max(min_side, max_side), factor)

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self, images: Sequence[Sequence[Any]], prompts: Sequence[str], system: str | None = None
    ) -> BatchInputs:
        rows = hf.check_batch(images, prompts)
        texts = [hf.render_chat(self.tokenizer, len(row), prompt, system) for row, prompt in zip(rows, prompts)]
        flat = [image for row in rows for image in row]
        model_kwargs: dict[str, Any] = {}
        grids: list[tuple[int, int]] = []  # (rows, cols) of LM tokens per image
        if flat:
            processed = hf.process_images(self, flat, return_tensors="pt")
            grid_thw = processed["image_grid_thw"]
            model_kwargs["pixel_values"] = processed["pixel_values"].to(self.model.dtype)
            model_kwargs["image_grid_thw"] = grid_thw
            merge = self.merge_size
            grids = [(int(h) // merge, int(w) // merge) for _, h, w in grid_thw.tolist()]
            counts = iter(int(t) * rows_ * cols for (t, _, _), (rows_, cols) in zip(grid_thw.tolist(), grids))
            texts = [self._expand_image_slots(text, len(row), counts) for text, row in zip(texts, rows)]
        encoded = hf.tokenize_left_padded(self.tokenizer, texts)
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        model_kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, **model_kwargs}
        model_kwargs["mm_token_type_ids"] = (input_ids == self.image_token_id).to(torch.int32)
        if not flat:
            # Text only: the model would fall back to unpadded positions; give padding-aware ones.
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            model_kwargs["position_ids"] = positions.unsqueeze(0).expand(3, -1, -1)
        per_row_grids = split_per_row(grids, rows)
        counts_per_row = [[r * c for r, c in row_grids] for row_grids in per_row_grids]
        positions = hf.split_image_positions(input_ids, self.image_token_id, counts_per_row)
        image_tokens = [
            [hf.grid_image_tokens(pos, r, c) for pos, (r, c) in zip(row_positions, row_grids)]
            for row_positions, row_grids in zip(positions, per_row_grids)
        ]
        return BatchInputs(model_kwargs, image_tokens, list(prompts), row_order=self._row_order(model_kwargs))

    def _row_order(self, model_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Qwen2-VL's merger rows are already in LM order; Qwen2.5-VL overrides."""
        return {}

    @staticmethod
    def _expand_image_slots(text: str, num_images: int, counts: Iterator[int]) -> str:
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != num_images:
            raise hf.image_slot_error(len(pieces) - 1, num_images, IMAGE_PAD)
        out = pieces[0]
        for piece in pieces[1:]:
            out += IMAGE_PAD * next(counts) + piece
        return out

    # ------------------------------------------------------------------ hook sites
    @property
    def _visual(self) -> nn.Module:
        return self.model.model.visual

    def image_hook_point(self, site: str) -> HookPoint:
        # The merger takes and returns flat (rows, hidden) tensors: hooked directly, no taps needed.
        merger = self._visual.merger
        if site == "vision.out":
            return HookPoint(
                site, merger, when="input", space="image_tokens", rows_per_lm_token=self.merge_size**2
            )
        return HookPoint(site, merger, when="output", space="image_tokens")
