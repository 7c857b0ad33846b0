"""LLaVA-1.5 specifics: layer -2 features without CLS, centre-crop boxes, the real prompt layout."""

from __future__ import annotations

import pytest
import torch
from family_helpers import capture_rows, changed_image_rows, noise_image, paint

from spatialmech.errors import UserInputError
from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.llava import Adapter
from spatialmech.models.registry import family_for_config


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.tiny()


def test_vision_out_is_layer_minus_two_without_cls(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(32, 32)]], ["Describe the image."])
    rows = capture_rows(adapter, batch, "vision.out")
    with torch.no_grad():
        tower = adapter.model.model.vision_tower(batch.model_kwargs["pixel_values"], output_hidden_states=True)
    assert adapter.model.config.vision_feature_layer == -2
    layer_minus_two = tower.hidden_states[-2][:, 1:]  # CLS dropped
    assert rows.shape == (16, adapter.model.config.vision_config.hidden_size)
    torch.testing.assert_close(rows, layer_minus_two.reshape(-1, rows.shape[-1]), rtol=0, atol=0)
    assert not torch.allclose(rows, tower.hidden_states[-1][:, 1:].reshape(-1, rows.shape[-1]))


def test_wide_image_maps_to_its_centre_crop(adapter: Adapter) -> None:
    """A 2:1 image is resized to 64x32 and centre-cropped to 32x32: tokens cover x in [0.25, 0.75]."""
    image = noise_image(64, 32)
    batch = adapter.build_inputs([[image]], ["Describe the image."])
    tokens = batch.images[0][0]
    assert tokens.grid_shapes == [(4, 4)]
    torch.testing.assert_close(tokens.boxes[0], torch.tensor([0.25, 0.0, 0.375, 0.25]))
    torch.testing.assert_close(tokens.boxes[-1], torch.tensor([0.625, 0.75, 0.75, 1.0]))
    # Painting the original pixels under one token's box changes exactly that token (no attention).
    # Token (1, 2) covers x 0.5..0.625 of 64 px and y 0.25..0.5 of 32 px.
    changed = changed_image_rows(adapter, image, paint(image, (32, 8, 40, 16)))
    assert changed == [int(((tokens.rows == 1) & (tokens.cols == 2)).nonzero())]


def test_prompt_follows_llava_layout_with_bos(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(32, 32)]], ["Is the key red?"], SYNTHETIC_SYSTEM_PROMPT)
    text = adapter.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    assert text == f"<s>{SYNTHETIC_SYSTEM_PROMPT} USER: {'<image>' * 16}\nIs the key red? ASSISTANT:"


def test_cls_keeping_checkpoints_are_refused(adapter: Adapter) -> None:
    other = Adapter(adapter.model, adapter.tokenizer, adapter.image_processor, "cls-model")
    other.model.config.vision_feature_select_strategy = "full"
    try:
        with pytest.raises(UserInputError, match="CLS"):
            other.build_inputs([[noise_image(32, 32)]], ["Describe the image."])
    finally:
        other.model.config.vision_feature_select_strategy = "default"


def test_registry_routes_clip_llava_here_and_pixtral_llava_elsewhere() -> None:
    assert family_for_config({"model_type": "llava"}) == "llava"
    assert family_for_config({"model_type": "llava", "vision_config": {"model_type": "clip_vision_model"}}) == "llava"
    assert family_for_config({"model_type": "llava", "vision_config": {"model_type": "pixtral"}}) == "pixtral"
