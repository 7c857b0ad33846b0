"""InternVL specifics: dynamic tiles + thumbnail in the grid map, CLS dropped, pixel-shuffled vision.out."""

from __future__ import annotations

import pytest
import torch
from family_helpers import capture_rows, changed_image_rows, noise_image, paint

from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.internvl import Adapter


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.tiny()


@pytest.mark.parametrize(
    ("width", "height", "names"),
    [
        (48, 48, ["image"]),  # a square tile-sized image stays one tile, no thumbnail
        (96, 48, ["tile_r0_c0", "tile_r0_c1", "global"]),
        (48, 96, ["tile_r0_c0", "tile_r1_c0", "global"]),
        (96, 96, ["tile_r0_c0", "tile_r0_c1", "tile_r1_c0", "tile_r1_c1", "global"]),
    ],
)
def test_tiles_follow_the_aspect_ratio(adapter: Adapter, width: int, height: int, names: list[str]) -> None:
    batch = adapter.build_inputs([[noise_image(width, height)]], ["Describe the image."])
    tokens = batch.images[0][0]
    assert tokens.tile_names == names
    assert batch.model_kwargs["pixel_values"].shape[0] == len(names)
    assert tokens.grid_shapes == [(3, 3)] * len(names) and tokens.main_tile == len(names) - 1
    # The tiles' boxes partition the image; the main view covers all of it.
    main = tokens.tiles == tokens.main_tile
    torch.testing.assert_close(tokens.boxes[main][:, 2:].amax(0), torch.ones(2))
    tile_area = ((tokens.boxes[:, 2] - tokens.boxes[:, 0]) * (tokens.boxes[:, 3] - tokens.boxes[:, 1]))
    assert float(tile_area[~main].sum()) == pytest.approx(0.0 if len(names) == 1 else 1.0)


def test_painting_one_tile_token_moves_it_and_its_thumbnail_token_only(adapter: Adapter) -> None:
    """96x48 px: two exact 48 px tiles (16 px per token) and a thumbnail squeezed 2x along x."""
    image = noise_image(96, 48)
    tokens = adapter.build_inputs([[image]], ["Describe the image."]).images[0][0]
    changed = changed_image_rows(adapter, image, paint(image, (80, 16, 96, 32)))
    tile_token = int(((tokens.tiles == 1) & (tokens.rows == 1) & (tokens.cols == 2)).nonzero())
    thumbnail_token = int(((tokens.tiles == 2) & (tokens.rows == 1) & (tokens.cols == 2)).nonzero())
    assert changed == [tile_token, thumbnail_token]
    torch.testing.assert_close(tokens.boxes[tile_token], torch.tensor([5 / 6, 1 / 3, 1.0, 2 / 3]))


def test_vision_out_is_the_pixel_shuffled_tower_output_without_cls(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(96, 48)]], ["Describe the image."])
    rows = capture_rows(adapter, batch, "vision.out")
    inner = adapter.model.model
    with torch.no_grad():
        features = inner.vision_tower(pixel_values=batch.model_kwargs["pixel_values"]).last_hidden_state[:, 1:]
        n_tiles, n_patches, width = features.shape
        side = int(n_patches**0.5)
        shuffled = inner.pixel_shuffle(features.reshape(n_tiles, side, side, width), scale_factor=0.5)
    assert rows.shape == (3 * 9, 4 * width)
    torch.testing.assert_close(rows, shuffled.reshape(-1, 4 * width), rtol=0, atol=0)


def test_prompt_follows_internvl_layout(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(48, 48)]], ["Is the key red?"], SYNTHETIC_SYSTEM_PROMPT)
    text = adapter.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    assert text == (
        f"<|im_start|>system\n{SYNTHETIC_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n<img>"
        + "<IMG_CONTEXT>" * 9
        + "</img>\nIs the key red?<|im_end|>\n<|im_start|>assistant\n"
    )
