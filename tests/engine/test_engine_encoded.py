"""Inputs whose images are encoded once (`Engine.encode_images`) behave like the raw inputs in the engine:
same logits, same `projector.out` steering, patching and recording; `vision.out` is refused clearly."""

from __future__ import annotations

import pytest
import torch
from conftest import make_pairs

from spatialmech.engine import Engine, Patch, Steer, amplify_projection, image_positions
from spatialmech.errors import UserInputError

ATOL = 1e-5


def test_projector_interventions_on_encoded_inputs_equal_the_raw_run(adapter):
    pairs = make_pairs(adapter, 3)
    engine = Engine(adapter)
    raw = pairs.target
    encoded = engine.encode_images(raw)
    positions = image_positions(raw)
    direction = torch.randn(adapter.hidden_size, 2, generator=torch.Generator().manual_seed(0))
    steer = [Steer("projector.out", positions, amplify_projection(direction, 4.0))]
    steered_raw = engine.logits(raw, steer)
    torch.testing.assert_close(engine.logits(encoded, steer), steered_raw, atol=ATOL, rtol=0)
    assert float((steered_raw - engine.logits(raw)).abs().max()) > 1e-4  # the steer really acts
    source = engine.cache(pairs.source, {"projector.out": positions})
    patch = [Patch("projector.out", positions, source["projector.out"])]
    torch.testing.assert_close(engine.logits(encoded, patch), engine.logits(raw, patch), atol=ATOL, rtol=0)
    recorded_raw = engine.cache(raw, {"projector.out": positions})["projector.out"]
    recorded_encoded = engine.cache(encoded, {"projector.out": positions})["projector.out"]
    for row in range(raw.batch_size):
        torch.testing.assert_close(recorded_encoded[row], recorded_raw[row], atol=ATOL, rtol=0)


def test_vision_out_on_encoded_inputs_is_a_clear_error(adapter):
    encoded = Engine(adapter).encode_images(make_pairs(adapter, 1).target)
    with pytest.raises(UserInputError, match="inside the image encoder"):
        Engine(adapter).cache(encoded, {"vision.out": image_positions(encoded)})


def test_encoding_inputs_without_images_is_a_clear_error(adapter):
    text_only = adapter.build_inputs([[]], ["Describe nothing."])
    with pytest.raises(UserInputError, match="no images"):
        adapter.encode_images(text_only)
