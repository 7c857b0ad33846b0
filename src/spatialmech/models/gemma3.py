"""Gemma3 (vision): SigLIP tower, average-pooled to `mm_tokens_per_image` tokens (16x16 at 896 px,
56 px per token), RMS-normed and projected into a Gemma3 LM.

Family facts this adapter encodes:
- The image slot: the chat template writes `<start_of_image>`; the processor turns each into
  "\\n\\n<start_of_image>" + `<image_soft_token>` x mm_tokens_per_image + "<end_of_image>\\n\\n". We do
  the same expansion (the HF processor class is not needed), and pass `token_type_ids` (1 at image
  tokens), which Gemma3 uses to let image tokens attend to each other bidirectionally (native
  behaviour, kept).
- Gemma3's chat template has no system role: a system message is folded into the first user turn
  (system text + blank line), which the template itself does.
- The projector consumes SigLIP's raster patch grid and pools kernel x kernel blocks; `vision.out`
  rows are regrouped so that each LM token's kernel**2 patches are consecutive (row-major).
- Grid geometry comes from the config (`mm_tokens_per_image`, vision `image_size`, `patch_size`) and
  the image processor's size, never from constants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from spatialmech.errors import UserInputError
from spatialmech.models import _hf_common as hf
from spatialmech.models._grid import fit_grid
from spatialmech.models._taps import pixel_shuffle_groups
from spatialmech.models.base import BatchInputs, GridSpec, HookPoint
from spatialmech.models.tiny_tokenizer import train_tokenizer

# The real gemma-3-*-it chat template.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)

BOI, EOI, IMAGE_SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
GEMMA3_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", BOI, EOI, IMAGE_SOFT)


def gemma3_tiny_tokenizer() -> Any:
    return train_tokenizer(
        GEMMA3_SPECIAL_TOKENS,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_SOFT},
    )


class Adapter(hf.HFAdapter):
    family = "gemma3"
    model_types = ("gemma3",)
    description = "Gemma3 (SigLIP pooled to mm_tokens_per_image, 16x16 at 896 px); paper's second model"
    default_dtype = torch.float32  # the authors run Gemma3 in fp32 (shared/models.py DEFAULT_DTYPE)
    paper_preset = "gemma"  # 16x16 tokens of 56 px (896 px images)

    hf_model = "transformers:Gemma3ForConditionalGeneration"
    hf_image_processor = "transformers.models.gemma3.image_processing_pil_gemma3:Gemma3ImageProcessorPil"
    processes_images_alone = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        tokens_per_side: int = 4,
        pool_kernel: int = 2,
        patch_size: int = 4,
        hidden_size: int = 64,
        num_layers: int = 2,
        vision_depth: int = 1,
        vision_width: int = 32,
        num_heads: int = 4,
    ) -> Adapter:
        """Random tiny Gemma3: a (tokens_per_side * pool_kernel)^2 patch grid pooled to tokens_per_side^2."""
        from transformers import Gemma3Config

        tokenizer = gemma3_tiny_tokenizer()
        image_size = tokens_per_side * pool_kernel * patch_size
        head_dim = hidden_size // num_heads
        layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
        config = Gemma3Config(
            text_config=hf.tiny_text_config(
                tokenizer,
                hidden_size=hidden_size,
                num_layers=num_layers,
                num_heads=num_heads,
                num_kv_heads=max(1, num_heads // 2),
                head_dim=head_dim,
                query_pre_attn_scalar=head_dim,
                sliding_window=512,
                layer_types=layer_types,
            ),
            vision_config=hf.tiny_siglip_config(vision_width, vision_depth, image_size, patch_size),
            mm_tokens_per_image=tokens_per_side**2,
            boi_token_index=hf.token_id(tokenizer, BOI),
            eoi_token_index=hf.token_id(tokenizer, EOI),
            image_token_index=hf.token_id(tokenizer, IMAGE_SOFT),
            **hf.special_token_ids(tokenizer),
        )
        model = hf.seeded_model(cls.hf_model_class(), config, seed)
        # HF initialises the projection to zeros (real checkpoints overwrite it): a random tiny model
        # would feed all-zero image tokens to the LM and every image would look the same.
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, config.initializer_range)
        image_processor = cls.image_processor_class()(size={"height": image_size, "width": image_size})
        return cls(model, tokenizer, image_processor, f"tiny-{cls.family}")

    # ------------------------------------------------------------------ model facts
    @property
    def tokens_per_side(self) -> int:
        side = math.isqrt(int(self.model.config.mm_tokens_per_image))
        if side * side != int(self.model.config.mm_tokens_per_image):
            raise UserInputError(
                f"mm_tokens_per_image={self.model.config.mm_tokens_per_image} is not a square grid",
                "use a Gemma3 checkpoint with a square token grid",
            )
        return side

    @property
    def patches_per_side(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def grid_spec(self) -> GridSpec:
        """tokens_per_side from mm_tokens_per_image; pixels per token from the processor's input size.
        The grid is fixed (every image is resized to it), so --grid can only get this size."""
        native = hf.square_processor_grid(self.image_processor, self.tokens_per_side)
        return fit_grid(self, native.tokens_per_side, native.tokens_per_side, native.pixels_per_token)

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self, images: Sequence[Sequence[Any]], prompts: Sequence[str], system: str | None = None
    ) -> BatchInputs:
        rows = hf.check_batch(images, prompts)
        texts = [hf.render_chat(self.tokenizer, len(row), prompt, system) for row, prompt in zip(rows, prompts)]
        n_tokens = self.tokens_per_side**2
        full_image = f"\n\n{BOI}{IMAGE_SOFT * n_tokens}{EOI}\n\n"
        expanded = []
        for text, row in zip(texts, rows):
            if IMAGE_SOFT in text:
                raise hf.image_slot_error(len(row) + 1, len(row), IMAGE_SOFT)
            if text.count(BOI) != len(row):
                raise hf.image_slot_error(text.count(BOI), len(row), BOI)
            expanded.append(text.replace(BOI, full_image))
        encoded = hf.tokenize_left_padded(self.tokenizer, expanded)
        input_ids = encoded["input_ids"]
        model_kwargs: dict[str, Any] = dict(encoded)
        model_kwargs["token_type_ids"] = (input_ids == self.image_token_id).long()
        flat = [image for row in rows for image in row]
        if flat:
            processed = hf.process_images(self, flat, do_pan_and_scan=False, return_tensors="pt")
            model_kwargs["pixel_values"] = processed["pixel_values"].to(self.model.dtype)
        image_tokens = hf.square_grid_images(input_ids, self.image_token_id, rows, self.tokens_per_side)
        return BatchInputs(model_kwargs, image_tokens, list(prompts))

    # ------------------------------------------------------------------ hook sites
    def image_hook_point(self, site: str) -> HookPoint:
        kernel = self.patches_per_side // self.tokens_per_side
        patches = self.patches_per_side
        return hf.tapped_projector_hook_point(
            site,
            self.model.model.multi_modal_projector,
            input_order=lambda shape: pixel_shuffle_groups(patches, kernel),
            rows_per_lm_token=kernel**2,
        )
