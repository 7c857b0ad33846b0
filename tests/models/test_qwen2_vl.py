"""Qwen2-VL specifics: image slot expansion from image_grid_thw, mm_token_type_ids, merge groups."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from spatialmech.errors import UserInputError
from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.qwen2_vl import Adapter


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.tiny()


def test_image_slot_expands_to_grid_thw_count_for_non_square_image(adapter: Adapter) -> None:
    image = Image.new("RGB", (168, 84), (10, 200, 30))  # 2:1 -> wider grid than tall
    batch = adapter.build_inputs([[image]], ["Describe the image."], SYNTHETIC_SYSTEM_PROMPT)
    t, h, w = batch.model_kwargs["image_grid_thw"][0].tolist()
    merge = adapter.merge_size
    tokens = batch.images[0][0]
    assert len(tokens) == t * h * w // merge**2
    assert tokens.grid_shapes == [(h // merge, w // merge)]
    assert w > h
    ids = batch.model_kwargs["input_ids"][0]
    assert torch.equal(ids[tokens.positions], torch.full_like(tokens.positions, adapter.image_token_id))
    assert torch.equal(batch.model_kwargs["mm_token_type_ids"][0].nonzero().flatten(), tokens.positions)


def test_prompt_renders_real_qwen_template_with_image_before_text(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[Image.new("RGB", (56, 56))]], ["Is the key red?"], SYNTHETIC_SYSTEM_PROMPT)
    text = adapter.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    assert text.startswith(f"<|im_start|>system\n{SYNTHETIC_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert text.endswith("<|vision_end|>Is the key red?<|im_end|>\n<|im_start|>assistant\n")


def test_default_system_prompt_matches_real_template(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[]], ["Is the key red?"])
    text = adapter.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_vision_out_rows_are_merge_groups_of_projector_rows(adapter: Adapter) -> None:
    """The merger consumes merge**2 consecutive vision.out rows per LM token."""
    batch = adapter.build_inputs([[Image.new("RGB", (112, 112), (90, 20, 200))]], ["Describe the image."])
    seen = {}
    vision = adapter.hook_point("vision.out")
    projector = adapter.hook_point("projector.out")
    handles = [
        vision.module.register_forward_pre_hook(lambda m, args: seen.__setitem__("vision", args[0])),
        projector.module.register_forward_hook(lambda m, args, out: seen.__setitem__("projector", out)),
    ]
    try:
        adapter.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    n_tokens = len(batch.images[0][0])
    assert seen["vision"].shape[0] == n_tokens * vision.rows_per_lm_token
    merger = adapter.hook_point("projector.out").module
    regrouped = merger.mlp(merger.ln_q(seen["vision"]).reshape(n_tokens, -1))
    torch.testing.assert_close(regrouped, seen["projector"], rtol=0, atol=0)


def test_literal_image_pad_in_prompt_is_rejected(adapter: Adapter) -> None:
    with pytest.raises(UserInputError, match="image slots"):
        adapter.build_inputs([[Image.new("RGB", (56, 56))]], ["look <|image_pad|>"])


def test_text_only_batch_is_padding_invariant(adapter: Adapter) -> None:
    prompts = ["Red", "The color of the square to the left of the green square is"]
    both = adapter.forward(adapter.build_inputs([[], []], prompts))
    for row, prompt in enumerate(prompts):
        alone = adapter.forward(adapter.build_inputs([[]], [prompt]))
        torch.testing.assert_close(both[row], alone[0], rtol=0, atol=1e-5)
