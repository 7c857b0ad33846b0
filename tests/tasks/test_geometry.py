"""Token-grid geometry: presets, the general rule, strips."""

from __future__ import annotations

import pytest

from spatialmech.errors import UserInputError
from spatialmech.models.base import GridSpec
from spatialmech.tasks.geometry import GEMMA, QWEN, GridGeometry, preset


def test_presets_are_the_papers():
    assert (QWEN.tokens_per_side, QWEN.pixels_per_token, QWEN.object_tokens, QWEN.spacing_tokens, QWEN.strip_tokens) == (12, 28, 2, 2, 4)
    assert (GEMMA.tokens_per_side, GEMMA.pixels_per_token, GEMMA.object_tokens, GEMMA.spacing_tokens, GEMMA.strip_tokens) == (16, 56, 3, 3, 3)
    assert QWEN.image_size == 336 and GEMMA.image_size == 896
    assert preset("Gemma") is GEMMA


@pytest.mark.parametrize(("tokens", "k"), [(5, 1), (12, 2), (16, 3), (27, 5), (64, 12)])
def test_rule_for_any_grid(tokens, k):
    geometry = GridGeometry.from_grid_spec(GridSpec(tokens_per_side=tokens, pixels_per_token=14))
    assert (geometry.object_tokens, geometry.spacing_tokens, geometry.strip_tokens) == (k, k, 2 * k)
    for axis in ("horizontal", "vertical"):
        boxes = [geometry.slot_cells(axis, slot) for slot in range(3)]
        for r0, c0, r1, c1 in boxes:
            assert 0 <= r0 < r1 <= tokens and 0 <= c0 < c1 <= tokens


@pytest.mark.parametrize("tokens", [1, 4])
def test_too_small_grid_is_a_user_error(tokens):
    with pytest.raises(UserInputError, match="too small"):
        GridGeometry.from_grid_spec(GridSpec(tokens_per_side=tokens, pixels_per_token=14))


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserInputError, match="qwen, gemma"):
        preset("llava")


def test_strips_tile_the_qwen_grid():
    strips = [QWEN.strip_cells(QWEN.slot_cells("horizontal", s), "horizontal") for s in range(3)]
    assert strips == [(0, 0, 12, 4), (0, 4, 12, 8), (0, 8, 12, 12)]
    vertical = QWEN.strip_cells(QWEN.slot_cells("vertical", 1), "vertical")
    assert vertical == (4, 0, 8, 12)
