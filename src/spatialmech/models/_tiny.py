"""Tiny randomly initialised models of the real architectures (every family's `tiny()`): the sizes they
share, so each family states only its architecture's own fields. Reached as `_hf_common.tiny_*`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# ------------------------------------------------------------------------------------------ tiny models
# The sizes every family's `tiny()` shares; each family adds only its architecture's own fields.


def tiny_text_config(
    tokenizer: Any,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 2048,
    **family_fields: Any,
) -> dict[str, Any]:
    """A tiny decoder LM config (as keyword arguments), sized to the tiny tokenizer, MLP width 2 x hidden."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": max_positions,
        **family_fields,
        **special_token_ids(tokenizer),
    }


def tiny_vision_sizes(width: int = 32, depth: int = 2) -> dict[str, int]:
    """The size fields of a tiny ViT tower (two heads, MLP width 2 x width)."""
    return {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": depth, "num_attention_heads": 2}


def tiny_siglip_config(width: int, depth: int, image_size: int, patch_size: int) -> dict[str, Any]:
    """A tiny SigLIP tower without its pooling head (Gemma3 and PaliGemma consume every patch)."""
    return {
        "model_type": "siglip_vision_model",
        **tiny_vision_sizes(width, depth),
        "image_size": image_size,
        "patch_size": patch_size,
        "vision_use_head": False,
    }


def seeded_model(model_cls: Any, config: Any, seed: int) -> nn.Module:
    """`model_cls(config)` with weights drawn from `seed`: the same seed gives the same tiny model."""
    torch.manual_seed(seed)
    return model_cls(config)


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """bos/eos/pad ids of a trained tiny tokenizer, to pass into a tiny config (the real defaults are
    out of the tiny vocabulary and trigger validation warnings)."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
