"""PaliGemma specifics: image-token prefix + <bos> + prompt + newline, 1-based padding-aware positions,
SigLIP patch grid from the config."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from spatialmech.errors import UserInputError
from spatialmech.models.paligemma import IMAGE_TOKEN, Adapter


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.tiny()


def test_prompt_is_the_processor_layout(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[Image.new("RGB", (24, 24))]], ["Is the key red?"], "Answer in one word.")
    text = adapter.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    assert text == f"{IMAGE_TOKEN * 36}<bos>Answer in one word.\n\nIs the key red?\n"
    assert batch.images[0][0].positions.tolist() == list(range(36))
    assert not batch.model_kwargs["token_type_ids"].any(), "the whole input is the bidirectional prefix"


def test_positions_are_one_based_and_skip_padding(adapter: Adapter) -> None:
    image = Image.new("RGB", (24, 24))
    batch = adapter.build_inputs([[image], [image]], ["Red", "The color of the square is"])
    positions, mask = batch.model_kwargs["position_ids"], batch.model_kwargs["attention_mask"]
    for row in range(2):
        real = positions[row][mask[row].bool()]
        assert real.tolist() == list(range(1, len(real) + 1))
    assert batch.images[0][0].positions[0] > 0, "row 0 is shorter, so left padded"


def test_grid_is_the_siglip_patch_grid(adapter: Adapter) -> None:
    vision = adapter.model.config.vision_config
    grid = adapter.grid_spec()
    assert grid.tokens_per_side == vision.image_size // vision.patch_size
    assert grid.pixels_per_token == vision.patch_size
    assert adapter.model.config.text_config.num_image_tokens == grid.tokens_per_side**2


def test_image_token_in_prompt_is_rejected(adapter: Adapter) -> None:
    with pytest.raises(UserInputError, match="contains <image>"):
        adapter.build_inputs([[Image.new("RGB", (24, 24))]], [f"look {IMAGE_TOKEN}"])


def test_two_images_in_one_row(adapter: Adapter) -> None:
    images = [[Image.new("RGB", (24, 24), (255, 0, 0)), Image.new("RGB", (30, 20), (0, 0, 255))]]
    batch = adapter.build_inputs(images, ["Which is red?"])
    first, second = batch.images[0]
    assert first.positions.tolist() == list(range(36)) and second.positions.tolist() == list(range(36, 72))
    assert batch.model_kwargs["pixel_values"].shape[0] == 2
    assert torch.isfinite(adapter.forward(batch)).all()
