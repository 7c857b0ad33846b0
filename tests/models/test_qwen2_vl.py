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


def test_two_images_in_one_row_follow_prompt_order(adapter: Adapter) -> None:
    images = [[Image.new("RGB", (112, 112), (255, 0, 0)), Image.new("RGB", (168, 56), (0, 0, 255))]]
    batch = adapter.build_inputs(images, ["Which is red?"])
    first, second = batch.images[0]
    assert first.grid_shapes == [(4, 4)] and second.grid_shapes == [(2, 6)]
    assert int(first.positions.max()) < int(second.positions.min())
    grids = batch.model_kwargs["image_grid_thw"].tolist()
    assert grids == [[1, 8, 8], [1, 4, 12]]
    assert torch.isfinite(adapter.forward(batch)).all()


def test_loads_real_checkpoint_layout(adapter: Adapter, tmp_path) -> None:
    """A folder laid out like Qwen/Qwen2-VL-*-Instruct: the torchvision processor class named in
    preprocessor_config.json, the chat template only in chat_template.json (a processor file)."""
    import json

    from spatialmech.models.registry import load_model

    adapter.save_pretrained(str(tmp_path))
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "min_pixels": 3136,
                "max_pixels": 12845056,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2VLProcessor",
            }
        )
    )
    template = (tmp_path / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    loaded = load_model(str(tmp_path))
    assert loaded.tokenizer.chat_template == template
    grid = loaded.grid_spec()
    assert (grid.tokens_per_side, grid.pixels_per_token) == (12, 28)  # SPEC Table 4 for Qwen
    batch = loaded.build_inputs([[Image.new("RGB", (grid.image_size, grid.image_size))]], ["x"], SYNTHETIC_SYSTEM_PROMPT)
    assert batch.images[0][0].grid_shapes == [(12, 12)]
