"""Pixtral specifics: per-image grids from image_sizes, [IMG_BREAK]/[IMG_END] skipped by the grid map."""

from __future__ import annotations

import pytest
import torch
from family_helpers import capture_rows, changed_image_rows, noise_image, paint

from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.pixtral import IMAGE_BREAK_TOKEN, IMAGE_END_TOKEN, Adapter


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.tiny()


def test_break_tokens_close_each_row_and_are_not_image_tokens(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(32, 16)]], ["Describe the image."])
    tokens = batch.images[0][0]
    ids = batch.model_kwargs["input_ids"][0]
    assert tokens.grid_shapes == [(2, 4)]
    start = int(tokens.positions[0])
    break_id = adapter.tokenizer.convert_tokens_to_ids(IMAGE_BREAK_TOKEN)
    end_id = adapter.tokenizer.convert_tokens_to_ids(IMAGE_END_TOKEN)
    # Row r's cells sit at start + r * (cols + 1) + c: the break token after every row is skipped.
    expected = start + tokens.rows * 5 + tokens.cols
    assert torch.equal(tokens.positions, expected)
    assert ids[start + 4] == break_id and ids[start + 9] == end_id
    assert (ids == break_id).sum() == 1 and (ids == end_id).sum() == 1
    assert bool((ids[tokens.positions] == adapter.image_token_id).all())


def test_each_image_gets_the_grid_of_its_own_size(adapter: Adapter) -> None:
    images = [noise_image(32, 16, 1), noise_image(20, 40, 2), noise_image(64, 64, 3)]
    batch = adapter.build_inputs([images], ["Compare the images."])
    # 20x40 is scaled to fit 32 px (16x32), 64x64 to 32x32; sides are whole 8 px patches.
    assert batch.model_kwargs["image_sizes"].tolist() == [[16, 32], [32, 16], [32, 32]]
    assert [t.grid_shapes for t in batch.images[0]] == [[(2, 4)], [(4, 2)], [(4, 4)]]
    rows = capture_rows(adapter, batch, "projector.out")
    assert rows.shape == (8 + 8 + 16, adapter.hidden_size)


def test_painting_a_wide_image_moves_only_the_mapped_token(adapter: Adapter) -> None:
    image = noise_image(32, 16)
    tokens = adapter.build_inputs([[image]], ["Describe the image."]).images[0][0]
    changed = changed_image_rows(adapter, image, paint(image, (16, 8, 24, 16)))  # cell (1, 2)
    assert changed == [int(((tokens.rows == 1) & (tokens.cols == 2)).nonzero())]
    torch.testing.assert_close(tokens.boxes[changed[0]], torch.tensor([0.5, 0.5, 0.75, 1.0]))


def test_vision_out_is_the_towers_last_layer_for_every_patch(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(32, 16)]], ["Describe the image."])
    rows = capture_rows(adapter, batch, "vision.out")
    with torch.no_grad():
        tower = adapter.model.model.vision_tower(
            batch.model_kwargs["pixel_values"], image_sizes=batch.model_kwargs["image_sizes"], output_hidden_states=True
        )
    torch.testing.assert_close(rows, tower.hidden_states[-1].reshape(-1, rows.shape[-1]), rtol=0, atol=0)
    assert rows.shape[0] == 8


def test_prompt_follows_pixtral_layout(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(8, 8)]], ["Is the key red?"], SYNTHETIC_SYSTEM_PROMPT)
    text = adapter.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    assert text == f"<s>[INST]{SYNTHETIC_SYSTEM_PROMPT}\n\n[IMG][IMG_END]Is the key red?[/INST]"
    plain = adapter.tokenizer.decode(adapter.build_inputs([[]], ["Is the key red?"]).model_kwargs["input_ids"][0])
    assert plain == "<s>[INST]Is the key red?[/INST]"
