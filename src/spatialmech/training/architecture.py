"""The bundled model's architecture: a tiny but complete Qwen2-VL, its tokenizer and image processor.

Everything here is a normal Hugging Face object (`Qwen2VLConfig`, `Qwen2VLForConditionalGeneration`,
a fast tokenizer with the real Qwen2-VL chat template, the PIL `Qwen2VLImageProcessorPil`), so the
saved folder loads through the ordinary Qwen2-VL adapter like any downloaded checkpoint.

Geometry: patch 14 px, 2x2 spatial merge -> 28 px per LM token; the image processor is pinned to
336x336 px (min_pixels = max_pixels), so the LM sees the paper's 12x12 token grid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from spatialmech.models.qwen2_vl import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, Adapter
from spatialmech.models.tiny_tokenizer import BASE_WORDS, train_tokenizer
from spatialmech.tasks.vocabulary import ALL_WORDS

PATCH_SIZE = 14
MERGE_SIZE = 2
TOKENS_PER_SIDE = 12
PIXELS_PER_TOKEN = PATCH_SIZE * MERGE_SIZE  # 28, the paper's Qwen geometry
IMAGE_SIDE = TOKENS_PER_SIDE * PIXELS_PER_TOKEN  # 336
PATCHES_PER_IMAGE = (IMAGE_SIDE // PATCH_SIZE) ** 2  # 576 rows of `vision.out`
TOKENS_PER_IMAGE = TOKENS_PER_SIDE**2  # 144 LM image tokens

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"


@dataclass(frozen=True)
class ArchitectureConfig:
    """Sizes of the tiny Qwen2-VL: the knobs of `Qwen2VLConfig` we set."""

    vision_depth: int = 4
    vision_embed_dim: int = 96
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 8
    text_heads: int = 6
    text_kv_heads: int = 2
    text_intermediate: int = 512
    # Rotary base: M-RoPE gives the width (column) section the lowest frequencies. The real 7B uses
    # base 1e6 over 128 dims; with head_dim 32 that would leave the 12 columns indistinguishable to the
    # LM. A lower base keeps rows/columns apart, but too low (we tried 20 and 50) leaves no slowly
    # rotating channels for content lookups across the image and the LM stopped learning to read it.
    text_rope_theta: float = 200.0
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to head_dim / 2 (head_dim 32)
    vocab_size: int = 1024

    def to_dict(self) -> dict:
        return asdict(self)


def vocabulary_words() -> list[str]:
    """Every word the tokenizer must keep whole: the tasks' prompt/answer words plus the base words."""
    return list(dict.fromkeys([*ALL_WORDS, *BASE_WORDS]))


def build_tokenizer(sentences: Iterable[str] = (), vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Offline byte-level BPE; every task word (with and without a leading space) is a single token."""
    return train_tokenizer(
        QWEN_SPECIAL_TOKENS,
        words=vocabulary_words(),
        sentences=list(sentences),
        vocab_size=vocab_size,
        chat_template=QWEN_CHAT_TEMPLATE,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, arch: ArchitectureConfig) -> Qwen2VLConfig:
    """A `Qwen2VLConfig` whose special-token ids are this tokenizer's."""

    def token(name: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(name))

    head_dim = arch.text_hidden // arch.text_heads
    if sum(arch.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {arch.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": arch.text_hidden,
        "intermediate_size": arch.text_intermediate,
        "num_hidden_layers": arch.text_layers,
        "num_attention_heads": arch.text_heads,
        "num_key_value_heads": arch.text_kv_heads,
        "max_position_embeddings": 1024,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": arch.text_rope_theta,
            "mrope_section": list(arch.mrope_section),
        },
        "bos_token_id": token(ENDOFTEXT),
        "eos_token_id": token(IM_END),
        "pad_token_id": token(ENDOFTEXT),
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": arch.vision_depth,
        "embed_dim": arch.vision_embed_dim,
        "hidden_size": arch.text_hidden,  # the merger (projector) maps to the LM width
        "num_heads": arch.vision_heads,
        "mlp_ratio": 4,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token(IMAGE_PAD),
        video_token_id=token(VIDEO_PAD),
        vision_start_token_id=token(VISION_START),
        vision_end_token_id=token(VISION_END),
        tie_word_embeddings=False,
    )


def build_image_processor():
    """Qwen2-VL's PIL image processor, pinned to 336x336 inputs (12x12 LM tokens of 28 px)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = IMAGE_SIDE * IMAGE_SIDE
    return Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=2
    )


def build_adapter(arch: ArchitectureConfig, seed: int, sentences: Iterable[str] = ()) -> Adapter:
    """A freshly initialised bundled-model adapter (weights deterministic from the seed)."""
    tokenizer = build_tokenizer(sentences, vocab_size=arch.vocab_size)
    config = build_config(tokenizer, arch)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).float()
    return Adapter(model, tokenizer, build_image_processor(), "bundled")
