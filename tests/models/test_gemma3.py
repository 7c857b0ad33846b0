"""Gemma3 specifics: the real template (system folded into the user turn), boi/eoi image slot,
pooled grid from the config, vision.out grouping, bidirectional attention over image tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.gemma3 import BOI, EOI, IMAGE_SOFT, Adapter


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.tiny()


def _noise(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_prompt_matches_real_gemma3_layout(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[_noise(32)]], ["Is the key red?"], SYNTHETIC_SYSTEM_PROMPT)
    text = adapter.tokenizer.decode(batch.model_kwargs["input_ids"][0])
    image = f"\n\n{BOI}{IMAGE_SOFT * 16}{EOI}\n\n"
    assert text == (
        f"<bos><start_of_turn>user\n{SYNTHETIC_SYSTEM_PROMPT}\n\n{image}Is the key red?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert torch.equal(batch.model_kwargs["token_type_ids"][0].nonzero().flatten(), batch.images[0][0].positions)


def test_grid_comes_from_config(adapter: Adapter) -> None:
    grid = adapter.grid_spec()
    assert grid.tokens_per_side**2 == adapter.model.config.mm_tokens_per_image
    assert grid.image_size == adapter.model.config.vision_config.image_size
    big = Adapter.tiny(tokens_per_side=5, pool_kernel=3)
    assert big.grid_spec().tokens_per_side == 5 and len(big.build_inputs([[_noise(60)]], ["x"]).images[0][0]) == 25


def test_any_image_size_is_resized_to_the_grid(adapter: Adapter) -> None:
    wide = Image.new("RGB", (100, 37), (1, 2, 3))
    tokens = adapter.build_inputs([[wide]], ["x"]).images[0][0]
    assert tokens.grid_shapes == [(4, 4)]
    assert torch.allclose(tokens.boxes[-1], torch.tensor([0.75, 0.75, 1.0, 1.0]))


def test_vision_out_groups_are_the_pooled_patches(adapter: Adapter) -> None:
    batch = adapter.build_inputs([[_noise(32)]], ["x"])
    seen = {}
    vision, projector = adapter.hook_point("vision.out"), adapter.hook_point("projector.out")
    handles = [
        vision.module.register_forward_hook(lambda m, a, out: seen.__setitem__("vision", out)),
        projector.module.register_forward_hook(lambda m, a, out: seen.__setitem__("projector", out)),
    ]
    try:
        adapter.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    groups = seen["vision"].reshape(16, vision.rows_per_lm_token, -1).mean(dim=1)
    proj = adapter.model.model.multi_modal_projector
    recomputed = proj.mm_soft_emb_norm(groups) @ proj.mm_input_projection_weight
    torch.testing.assert_close(recomputed, seen["projector"], rtol=1e-5, atol=1e-6)


def test_image_tokens_attend_bidirectionally(adapter: Adapter) -> None:
    """Native Gemma3 behaviour: the first image token's layer-0 output depends on the last image token."""
    batch = adapter.build_inputs([[_noise(32)]], ["x"])
    first, last = batch.images[0][0].positions[[0, -1]].tolist()
    outputs = []
    for scale in (1.0, 3.0):
        layer0 = adapter.hook_point("lm.resid_pre.0").module

        def edit(module, args, scale=scale):
            hidden = args[0].clone()
            hidden[:, last] *= scale
            return (hidden, *args[1:])

        handle = layer0.register_forward_pre_hook(edit)
        post = adapter.hook_point("lm.resid_post.0").module
        grab = post.register_forward_hook(lambda m, a, out: outputs.append(out[0, first].clone()))
        try:
            adapter.forward(batch)
        finally:
            handle.remove()
            grab.remove()
    assert not torch.allclose(outputs[0], outputs[1])


def test_block_sites_sum_to_the_residual_update(adapter: Adapter) -> None:
    """Gemma's sandwich norms: attn/mlp sites are what each block adds to the residual stream."""
    batch = adapter.build_inputs([[_noise(32)]], ["x"])
    seen = {}
    points = {s: adapter.hook_point(s) for s in ("lm.resid_pre.1", "lm.attn.1", "lm.mlp.1", "lm.resid_post.1")}
    handles = []
    for site, point in points.items():
        if point.when == "input":
            handles.append(point.module.register_forward_pre_hook(lambda m, a, s=site: seen.__setitem__(s, a[0])))
        else:
            handles.append(point.module.register_forward_hook(lambda m, a, out, s=site: seen.__setitem__(s, out)))
    try:
        adapter.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    total = seen["lm.resid_pre.1"] + seen["lm.attn.1"] + seen["lm.mlp.1"]
    torch.testing.assert_close(total, seen["lm.resid_post.1"], rtol=1e-5, atol=1e-5)
