"""PaliGemma (1 and 2): SigLIP tower, one linear projector, Gemma/Gemma2 LM; image tokens are a prefix.

Family facts this adapter encodes:
- No chat template: the HF processor builds "<image>" x num_image_tokens + "<bos>" + prompt + "\\n",
  and the model predicts the answer right after the "\\n". We build exactly that. There is no system
  role either; a system text is folded into the prompt ("system\\n\\nprompt"), as Gemma's chat template
  folds it into the first user turn.
- The prefix (image + prompt) attends bidirectionally: the processor returns `token_type_ids` = 0 over
  the prefix and the model lets every prefix token see the whole prefix (native behaviour, kept).
- PaliGemma's default position ids are 1-based `arange`, blind to left padding, so we pass
  padding-aware 1-based positions (batched rows then match single rows).
- Grid: SigLIP's patch grid, image_size // patch_size per side, raster order, no pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spatialmech.errors import UserInputError
from spatialmech.models import _hf_common as hf
from spatialmech.models.base import BatchInputs, GridSpec, HookPoint
from spatialmech.models.tiny_tokenizer import train_tokenizer

IMAGE_TOKEN = "<image>"
PALIGEMMA_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", IMAGE_TOKEN)


def paligemma_tiny_tokenizer() -> Any:
    return train_tokenizer(
        PALIGEMMA_SPECIAL_TOKENS,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


class Adapter(hf.HFAdapter):
    family = "paligemma"
    model_types = ("paligemma",)
    description = "PaliGemma 1/2 (SigLIP patch grid, image-token prefix, prefix-LM attention)"

    hf_model = "transformers:PaliGemmaForConditionalGeneration"
    hf_image_processor = "transformers.models.siglip.image_processing_pil_siglip:SiglipImageProcessorPil"
    processes_images_alone = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        tokens_per_side: int = 6,
        patch_size: int = 4,
        hidden_size: int = 64,
        num_layers: int = 2,
        vision_depth: int = 1,
        vision_width: int = 32,
        num_heads: int = 4,
    ) -> Adapter:
        """Random tiny PaliGemma (Gemma 1 backbone) with a tokens_per_side^2 SigLIP patch grid."""
        from transformers import PaliGemmaConfig

        tokenizer = paligemma_tiny_tokenizer()
        image_size = tokens_per_side * patch_size
        config = PaliGemmaConfig(
            text_config={
                "model_type": "gemma",
                **hf.tiny_text_config(
                    tokenizer,
                    hidden_size=hidden_size,
                    num_layers=num_layers,
                    num_heads=num_heads,
                    num_kv_heads=1,
                    head_dim=hidden_size // num_heads,
                ),
            },
            vision_config=hf.tiny_siglip_config(vision_width, vision_depth, image_size, patch_size),
            image_token_index=hf.token_id(tokenizer, IMAGE_TOKEN),
            vocab_size=len(tokenizer),
            projection_dim=hidden_size,
            hidden_size=hidden_size,
            **hf.special_token_ids(tokenizer),
        )
        model = hf.seeded_model(cls.hf_model_class(), config, seed)
        image_processor = cls.image_processor_class()(
            size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        return cls(model, tokenizer, image_processor, f"tiny-{cls.family}")

    # ------------------------------------------------------------------ model facts
    @property
    def tokens_per_side(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def grid_spec(self) -> GridSpec:
        """One token per SigLIP patch; pixels per token from the processor's input size (14 at 224 px)."""
        return hf.square_processor_grid(self.image_processor, self.tokens_per_side)

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self, images: Sequence[Sequence[Any]], prompts: Sequence[str], system: str | None = None
    ) -> BatchInputs:
        rows = hf.check_batch(images, prompts)
        n_tokens = self.tokens_per_side**2
        bos = self.tokenizer.bos_token or ""
        texts = []
        for row, prompt in zip(rows, prompts):
            if IMAGE_TOKEN in prompt or (system and IMAGE_TOKEN in system):
                raise UserInputError(
                    f"prompt text contains {IMAGE_TOKEN}", "pass images separately; the adapter places the image tokens"
                )
            text = prompt if system is None else f"{system}\n\n{prompt}"
            texts.append(f"{IMAGE_TOKEN * (n_tokens * len(row))}{bos}{text}\n")
        encoded = hf.tokenize_left_padded(self.tokenizer, texts)
        mask = encoded["attention_mask"]
        model_kwargs: dict[str, Any] = dict(encoded)
        model_kwargs["token_type_ids"] = torch.zeros_like(mask)  # all prefix: bidirectional, as the processor
        model_kwargs["position_ids"] = mask.long().cumsum(-1).clamp(min=1)  # 1-based, padding-aware
        flat = [image for row in rows for image in row]
        if flat:
            processed = hf.process_images(self, flat, return_tensors="pt")
            model_kwargs["pixel_values"] = processed["pixel_values"].to(self.model.dtype)
        image_tokens = hf.square_grid_images(encoded["input_ids"], self.image_token_id, rows, self.tokens_per_side)
        return BatchInputs(model_kwargs, image_tokens, list(prompts))

    # ------------------------------------------------------------------ hook sites
    def image_hook_point(self, site: str) -> HookPoint:
        return hf.tapped_projector_hook_point(site, self.model.model.multi_modal_projector)
