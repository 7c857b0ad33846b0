"""Idefics3 / SmolVLM specifics: tiles + global view in the grid map, pixel-shuffle groups, both variants."""

from __future__ import annotations

import pytest
import test_adapter_suite as suite
import torch
from family_helpers import capture_rows, changed_image_rows, noise_image, paint

from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.idefics3 import Adapter


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.tiny()


@pytest.fixture(scope="module")
def smolvlm() -> Adapter:
    return Adapter.tiny(model_type="smolvlm")


def test_wide_image_maps_to_two_tiles_then_the_global_view(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(96, 48)]], ["Describe the image."])
    tokens = batch.images[0][0]
    assert tokens.tile_names == ["tile_r0_c0", "tile_r0_c1", "global"]
    assert tokens.grid_shapes == [(3, 3)] * 3 and tokens.main_tile == 2
    assert tokens.tiles.tolist() == [0] * 9 + [1] * 9 + [2] * 9
    # Tile (0, 1) covers the right half; its token (1, 2) the right third of that half, middle row.
    second_tile = (tokens.tiles == 1) & (tokens.rows == 1) & (tokens.cols == 2)
    torch.testing.assert_close(tokens.boxes[second_tile][0], torch.tensor([5 / 6, 1 / 3, 1.0, 2 / 3]))
    torch.testing.assert_close(tokens.boxes[tokens.tiles == 2][4], torch.tensor([1 / 3, 1 / 3, 2 / 3, 2 / 3]))
    # LM order: tile 0's tokens, then tile 1's (after its <fake><row_1_col_2> tokens), then the global view.
    positions = tokens.positions
    assert bool((positions[1:9] - positions[:8] == 1).all())
    assert int(positions[9] - positions[8]) == 3 and int(positions[18] - positions[17]) > 3


def test_painting_one_tile_token_moves_it_and_its_global_token_only(adapter: Adapter) -> None:
    """96x48 px: tiles are exact 48 px crops (16 px per token); the global view squeezes x by 2."""
    image = noise_image(96, 48)
    tokens = adapter.build_inputs([[image]], ["Describe the image."]).images[0][0]
    changed = changed_image_rows(adapter, image, paint(image, (80, 16, 96, 32)))
    tile_token = int(((tokens.tiles == 1) & (tokens.rows == 1) & (tokens.cols == 2)).nonzero())
    global_token = int(((tokens.tiles == 2) & (tokens.rows == 1) & (tokens.cols == 2)).nonzero())
    assert changed == [tile_token, global_token]


def test_vision_out_rows_are_the_pixel_shuffle_groups(adapter: Adapter) -> None:
    """Each LM token's s*s vision.out rows, concatenated, are exactly what the connector projects."""
    batch = adapter.build_inputs([[noise_image(96, 96)]], ["Describe the image."])
    vision = capture_rows(adapter, batch, "vision.out")
    projected = capture_rows(adapter, batch, "projector.out")
    group = adapter.hook_point("vision.out").rows_per_lm_token
    assert group == adapter.scale_factor**2 and vision.shape[0] == projected.shape[0] * group == 5 * 9 * group
    with torch.no_grad():
        regrouped = adapter.model.model.connector.modality_projection(vision.reshape(projected.shape[0], -1))
    torch.testing.assert_close(regrouped, projected, rtol=0, atol=0)


def test_unsplit_image_is_one_global_view(adapter: Adapter) -> None:
    processor = type(adapter.image_processor)(
        size={"longest_edge": 96}, max_image_size={"longest_edge": 48}, do_image_splitting=False
    )
    unsplit = Adapter(adapter.model, adapter.tokenizer, processor, "unsplit")
    batch = unsplit.build_inputs([[noise_image(96, 48)]], ["Describe the image."])
    tokens = batch.images[0][0]
    assert tokens.grid_shapes == [(3, 3)] and tokens.tile_names == ["image"]
    text = unsplit.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    assert "User:<fake_token_around_image><global-img>" + "<image>" * 9 + "<fake_token_around_image>Describe" in text
    assert unsplit.grid_spec().image_size == 48


def test_prompt_follows_idefics3_layout(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[noise_image(96, 48)]], ["Is the key red?"], SYNTHETIC_SYSTEM_PROMPT)
    text = adapter.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    tiles = "<fake_token_around_image><row_1_col_1>" + "<image>" * 9 + "<fake_token_around_image><row_1_col_2>" + "<image>" * 9
    global_view = "<fake_token_around_image><global-img>" + "<image>" * 9 + "<fake_token_around_image>"
    assert text == (
        f"<|begin_of_text|>System: {SYNTHETIC_SYSTEM_PROMPT}<end_of_utterance>\n"
        f"User:{tiles}\n\n{global_view}Is the key red?<end_of_utterance>\nAssistant:"
    )


def test_smolvlm_variant_meets_the_adapter_contract(smolvlm: Adapter, tmp_path) -> None:
    assert type(smolvlm.model).__name__ == "SmolVLMForConditionalGeneration"
    text = smolvlm.tokenizer.decode(smolvlm.build_inputs([[]], ["Is the key red?"]).model_kwargs["input_ids"][0])
    assert text == "<|im_start|>User: Is the key red?<end_of_utterance>\nAssistant:"
    suite.test_image_token_map_is_consistent(smolvlm)
    suite.test_projector_out_is_lm_layer0_input_at_image_positions(smolvlm)
    suite.test_grid_mapping_paint_one_cell(smolvlm)
    suite.test_batching_matches_running_each_prompt_alone(smolvlm)
    suite.test_save_load_round_trip_gives_identical_logits(smolvlm, tmp_path)
