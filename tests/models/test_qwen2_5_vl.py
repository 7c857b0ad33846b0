"""Qwen2.5-VL: the merger runs in attention-window order; `row_order` restores LM (raster) order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spatialmech.models.qwen2_5_vl import Adapter


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.tiny()


def _noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def _capture_merger(adapter: Adapter, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seen = {}
    merger = adapter.hook_point("projector.out").module
    layer0 = adapter.hook_point("lm.resid_pre.0").module
    handles = [
        merger.register_forward_hook(lambda m, args, out: seen.update(merger_in=args[0], merger_out=out)),
        layer0.register_forward_pre_hook(lambda m, args: seen.update(layer0=args[0])),
    ]
    try:
        adapter.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen["merger_in"], seen["merger_out"], seen["layer0"]


@pytest.mark.parametrize("size", [(168, 168), (168, 84), (224, 112)])
def test_row_order_maps_window_order_to_raster(adapter: Adapter, size: tuple[int, int]) -> None:
    batch = adapter.build_inputs([[_noise(*size)]], ["Describe the image."])
    order = batch.row_order["projector.out"]
    merger_in, merger_out, layer0 = _capture_merger(adapter, batch)
    positions = batch.images[0][0].positions
    torch.testing.assert_close(merger_out[order], layer0[0, positions], rtol=0, atol=0)
    # vision.out rows, reordered, are the merge groups of the LM-order projector rows.
    vision_rows = merger_in[batch.row_order["vision.out"]]
    regrouped = adapter.hook_point("projector.out").module
    recomputed = regrouped.mlp(regrouped.ln_q(vision_rows).reshape(len(positions), -1))
    torch.testing.assert_close(recomputed, layer0[0, positions], rtol=1e-6, atol=1e-6)


def test_window_order_is_really_a_permutation_on_the_tiny_grid(adapter: Adapter) -> None:
    """The tiny 6x6 grid spans several 4x4 windows, so the trap is exercised, not skipped."""
    batch = adapter.build_inputs([[_noise(168, 168)]], ["Describe the image."])
    order = batch.row_order["projector.out"]
    assert sorted(order.tolist()) == list(range(36))
    assert order.tolist() != list(range(36))


def test_two_images_in_a_batch_get_one_global_order(adapter: Adapter) -> None:
    images = [[_noise(168, 168)], [_noise(112, 224)]]
    batch = adapter.build_inputs(images, ["Describe the image.", "Is it red?"])
    _, merger_out, layer0 = _capture_merger(adapter, batch)
    ordered = merger_out[batch.row_order["projector.out"]]
    gathered = torch.cat([layer0[b, batch.images[b][0].positions] for b in range(2)])
    torch.testing.assert_close(ordered, gathered, rtol=0, atol=0)
