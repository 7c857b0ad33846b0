"""Pixtral as the authors ran it: `LlavaForConditionalGeneration` with a Pixtral vision tower (model_type
`llava`, `vision_config.model_type == "pixtral"`, e.g. mistral-community/pixtral-12b) and a Mistral LM.

Family facts the rest of the toolkit relies on:
- Images keep (roughly) their size: the processor scales the longest edge down to at most
  `size.longest_edge` and rounds both sides up to whole patches, so the token grid comes from each
  image's own `image_sizes` entry (rows = height / patch, cols = width / patch), never from a constant.
- In the prompt each image becomes rows of `[IMG]` tokens, each row followed by `[IMG_BREAK]`, the last
  one replaced by `[IMG_END]`. Only `[IMG]` positions carry image features; the grid map skips the
  break/end tokens (they are ordinary text embeddings).
- The Llava class applies no spatial merge (that is Mistral3), so one `[IMG]` token = one patch, and the
  projector consumes the tower's last layer with every patch (`vision_feature_select_strategy="full"`;
  there is no CLS token to drop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from spatialmech.errors import UserInputError
from spatialmech.models import _hf_common as hf
from spatialmech.models._grid import fit_grid
from spatialmech.models._layout import FULL_IMAGE, View, expand_placeholders, split_per_row
from spatialmech.models.base import BatchInputs, GridSpec
from spatialmech.models.llava import LlavaAdapterBase, tiny_words
from spatialmech.models.tiny_tokenizer import train_tokenizer

IMAGE_TOKEN = "[IMG]"
IMAGE_BREAK_TOKEN = "[IMG_BREAK]"
IMAGE_END_TOKEN = "[IMG_END]"

# Same layout as mistral-community/pixtral-12b's template: "<s>[INST]<system>\n\n[IMG]<text>[/INST]"
# (the system message, a plain string, is folded into the last user turn); the answer follows [/INST].
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '[INST]' -}}"
    "{%- if loop.last and system_message is defined -%}{{- system_message + '\n\n' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '[IMG]' -}}{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '[/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class Adapter(LlavaAdapterBase):
    family: ClassVar[str] = "pixtral"
    description: ClassVar[str] = "Pixtral: Llava class with a Pixtral tower (native resolution, [IMG_BREAK] rows)"
    default_dtype: ClassVar[torch.dtype | None] = torch.bfloat16  # the authors run Pixtral-12B in bf16
    paper_preset: ClassVar[str | None] = "pixtral"  # 15x15 tokens of 16 px (240 px images)

    @classmethod
    def handles(cls, config: dict[str, Any]) -> bool:
        return config.get("model_type") in cls.model_types and cls._vision_model_type(config) == "pixtral"

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, seed: int = 0, *, max_side: int = 32, patch_size: int = 8) -> Adapter:
        """Random tiny Pixtral; `max_side` / `patch_size` set the processor's longest_edge and the patch
        (the real model: 1024 and 16)."""
        from transformers import LlavaConfig, MistralConfig, PixtralVisionConfig
        from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

        tokenizer = train_tokenizer(
            ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", IMAGE_TOKEN, IMAGE_BREAK_TOKEN, IMAGE_END_TOKEN],
            words=tiny_words(()),
            chat_template=CHAT_TEMPLATE,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
        )
        vision = PixtralVisionConfig(**hf.tiny_vision_sizes(), head_dim=16, image_size=max_side, patch_size=patch_size)
        text = MistralConfig(**hf.tiny_text_config(tokenizer, max_positions=512, head_dim=16))
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            projector_hidden_act="gelu",
        )
        model = hf.seeded_model(cls.hf_model_class(), config, seed)
        image_processor = PixtralImageProcessorPil(
            size={"longest_edge": max_side}, patch_size={"height": patch_size, "width": patch_size}
        )
        return cls(model, tokenizer, image_processor, f"tiny-pixtral-seed{seed}")

    # ------------------------------------------------------------------ model facts
    def grid_spec(self) -> GridSpec:
        """The authors' 15x15 grid of 16 px patches (or --grid). The processor keeps any image up to
        `size.longest_edge` as it is (it only scales down), so the grid can be 1 .. longest_edge / patch."""
        longest = int(self.image_processor.size.longest_edge)
        return fit_grid(self, 1, max(1, longest // self.patch_size), self.patch_size)

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self, images: Sequence[Sequence[Any]], prompts: Sequence[str], system: str | None = None
    ) -> BatchInputs:
        if self.model.config.vision_feature_select_strategy != "full":
            raise UserInputError(
                f"model {self.model_id} drops the first patch of its image features "
                "(vision_feature_select_strategy='default' on a tower without CLS)",
                "use a Pixtral checkpoint with vision_feature_select_strategy='full'",
            )
        rows = hf.check_batch(images, prompts)
        flat = [image for row in rows for image in row]
        pixel_inputs: dict[str, torch.Tensor] = {}
        grids: list[tuple[int, int]] = []
        if flat:
            patch = {"height": self.patch_size, "width": self.patch_size}
            processed = hf.process_images(self, flat, patch_size=patch, return_tensors="pt")
            pixel_inputs["pixel_values"] = processed["pixel_values"].to(self.model.dtype)
            pixel_inputs["image_sizes"] = processed["image_sizes"]
            grids = [(int(h) // self.patch_size, int(w) // self.patch_size) for h, w in processed["image_sizes"].tolist()]
        texts, views = [], []
        for row, prompt, row_grids in zip(rows, prompts, split_per_row(grids, rows)):
            text = _render_chat(self.tokenizer, len(row), prompt, system)
            texts.append(expand_placeholders(text, IMAGE_TOKEN, [_image_rows_text(r, c) for r, c in row_grids]))
            views.append([[View("image", FULL_IMAGE, r, c)] for r, c in row_grids])
        return self._finish_batch(texts, pixel_inputs, views, prompts)


def _render_chat(tokenizer: Any, num_images: int, prompt: str, system: str | None) -> str:
    """Like `_hf_common.render_chat`, but the system message is plain text: Mistral's templates write
    `"[INST]" + system_message + "\n\n"`, which fails on a content list."""
    if system is None or not getattr(tokenizer, "chat_template", None):
        return hf.render_chat(tokenizer, num_images, prompt, system)
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": hf.user_content(num_images, prompt)},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _image_rows_text(n_rows: int, n_cols: int) -> str:
    """The prompt text of one image: rows of [IMG], each closed by [IMG_BREAK], the last by [IMG_END]."""
    lines = [IMAGE_TOKEN * n_cols + IMAGE_BREAK_TOKEN] * n_rows
    return "".join(lines)[: -len(IMAGE_BREAK_TOKEN)] + IMAGE_END_TOKEN
