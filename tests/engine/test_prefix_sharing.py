"""Prefix sharing (issue 21): on every family, logits with sharing on equal the plain forward's (sharing
off) to float32 rounding, for plain scoring, steering and ablation of picture tokens; families whose
masks forbid it (PaliGemma's prefix-LM sees the whole prompt bidirectionally) fall back and say why."""

from __future__ import annotations

import pytest
import torch
from conftest import COLOURS, square_pictures, three_squares

from spatialmech.engine import Ablate, Engine, Steer, add_direction, amplify_projection, image_positions
from spatialmech.engine.hooks import count_token_layer_passes
from spatialmech.models.registry import available_families

ATOL = 1e-5
# families whose attention lets the prompt's start see its end: sharing must fall back
FALLBACK = {"paligemma": "attends to later positions"}
PROMPTS = [
    "The color of the square to the left of the green square is",
    "The color of the square to the right of the green square is",
    "Which square is above?",
]



def picture_batch(adapter, pictures: int = 2):
    """Every prompt about every picture (prompts of different lengths: left padding in the batch)."""
    images = square_pictures(adapter, pictures)
    rows = [(image, prompt) for image in images for prompt in PROMPTS]
    return adapter.build_inputs([[image] for image, _ in rows], [prompt for _, prompt in rows])


def both(adapter, inputs, interventions=()):
    on, off = Engine(adapter, share_prefix=True), Engine(adapter, share_prefix=False)
    shared, plain = on.logits(inputs, interventions), off.logits(inputs, interventions)
    return shared, plain, on.prefix_stats


def assert_shared_or_fallback(adapter, stats) -> None:
    if adapter.family in FALLBACK:
        assert stats.shared == 0 and any(FALLBACK[adapter.family] in reason for reason in stats.fallbacks)
    else:
        assert stats.shared == stats.forwards == 1, stats.fallbacks
        assert stats.tokens_floor <= stats.tokens_run < stats.tokens_plain


def test_plain_scoring_equals_unshared(family_adapter) -> None:
    inputs = picture_batch(family_adapter)
    shared, plain, stats = both(family_adapter, inputs)
    torch.testing.assert_close(shared, plain, atol=ATOL, rtol=0)
    assert_shared_or_fallback(family_adapter, stats)


def test_unpadded_rows_equal_unshared(family_adapter) -> None:
    """Rows of one length (no padding; the model may call its layers without a mask): the prefix pass then
    runs on the kernel's own causal path, and the logits still equal the plain forward's."""
    images = square_pictures(family_adapter, 2)
    inputs = family_adapter.build_inputs([[image] for image in images for _ in range(2)], [PROMPTS[2]] * 4)
    assert bool(inputs.model_kwargs["attention_mask"].all())
    steer = [Steer("lm.resid_pre.0", image_positions(inputs), add_direction(torch.ones(family_adapter.hidden_size), 0.5))]
    shared, plain, stats = both(family_adapter, inputs, steer)
    torch.testing.assert_close(shared, plain, atol=ATOL, rtol=0)
    assert_shared_or_fallback(family_adapter, stats)


def test_prefix_pass_of_a_padded_batch_runs_the_kernels_causal_path() -> None:
    """The prefix pass holds real tokens only, so on sdpa layers it drops the explicit mask (the kernel's
    causal path is faster); the plain forward of the same padded batch needs its mask at every layer."""
    adapter = available_families()["qwen2-vl"].tiny()
    inputs = picture_batch(adapter)
    assert not bool(inputs.model_kwargs["attention_mask"].all())  # padded
    masks: list[bool] = []
    handles = [layer.register_forward_pre_hook(lambda _m, _a, kw: masks.append(kw.get("attention_mask") is None), with_kwargs=True)
               for layer in adapter.decoder_layers()]
    try:
        Engine(adapter, share_prefix=False).logits(inputs)
        assert masks == [False] * adapter.num_layers
        masks.clear()
        Engine(adapter, share_prefix=True).logits(inputs)
    finally:
        for handle in handles:
            handle.remove()
    # the capture pass (layers replaced), then the first prefix level without a mask, then the later levels
    # and the suffix pass with one
    n = adapter.num_layers
    assert masks[n : 2 * n] == [True] * n
    assert len(masks) >= 4 * n and masks[2 * n :] == [False] * (len(masks) - 2 * n)


@pytest.mark.parametrize("kind", ["amplify", "add"])
def test_steering_picture_tokens_equals_unshared(family_adapter, kind: str) -> None:
    inputs = picture_batch(family_adapter)
    gen = torch.Generator().manual_seed(1)
    if kind == "amplify":
        fn = amplify_projection(torch.randn(family_adapter.hidden_size, 2, generator=gen), 4.0)
    else:
        fn = add_direction(torch.randn(family_adapter.hidden_size, generator=gen), 2.0)
    steer = [Steer("lm.resid_pre.0", image_positions(inputs), fn)]
    shared, plain, stats = both(family_adapter, inputs, steer)
    torch.testing.assert_close(shared, plain, atol=ATOL, rtol=0)
    assert_shared_or_fallback(family_adapter, stats)
    unsteered, _, _ = both(family_adapter, inputs)
    assert float((shared - unsteered).abs().max()) > 1e-4  # the steer really acted inside the prefix


@pytest.mark.parametrize("encoded", [False, True])
def test_ablating_picture_tokens_equals_unshared(family_adapter, encoded: bool) -> None:
    inputs = picture_batch(family_adapter)
    engine = Engine(family_adapter, share_prefix=False)
    positions = image_positions(inputs)
    half = [p[: len(p) // 2] for p in positions]
    # values of the other picture (rows 3.. show picture 1, rows 0..2 picture 0)
    cached = engine.cache(inputs, "projector.out", half)["projector.out"]
    order = list(range(3, 6)) + list(range(3))
    ablations = [Ablate("projector.out", half, "values", [cached[r] for r in order]), Ablate("lm.resid_pre.0", [p[-2:] for p in positions], "zero")]
    if encoded:
        inputs = family_adapter.encode_images(inputs) if family_adapter.family != "paligemma" else inputs
    shared, plain, stats = both(family_adapter, inputs, ablations)
    torch.testing.assert_close(shared, plain, atol=ATOL, rtol=0)
    assert_shared_or_fallback(family_adapter, stats)


def test_encoder_only_recording_stops_before_the_lm(family_adapter) -> None:
    inputs = picture_batch(family_adapter, pictures=1)
    positions = image_positions(inputs)
    on, off = Engine(family_adapter, share_prefix=True), Engine(family_adapter, share_prefix=False)
    with count_token_layer_passes(family_adapter) as counts:
        fast = on.cache(inputs, "projector.out", positions)["projector.out"]
    assert counts["token_layers"] == 0
    slow = off.cache(inputs, "projector.out", positions)["projector.out"]
    for row in range(inputs.batch_size):
        torch.testing.assert_close(fast[row], slow[row], atol=0, rtol=0)


def test_recordings_and_late_interventions_run_plain(family_adapter) -> None:
    inputs = picture_batch(family_adapter, pictures=1)
    engine = Engine(family_adapter, share_prefix=True)
    late = [Steer("lm.resid_pre.1", image_positions(inputs), add_direction(torch.ones(family_adapter.hidden_size), 1.0))]
    torch.testing.assert_close(engine.logits(inputs, late), Engine(family_adapter, share_prefix=False).logits(inputs, late), atol=0, rtol=0)
    assert engine.prefix_stats.forwards == 0  # not attempted: the steer acts after layer 0


def test_encoded_pictures_repeat_for_both_option_orders(family_adapter) -> None:
    """`with_prompts` on a batch holding the encoded batch's pictures twice (score_items' two option
    orders) repeats the encoder output: logits equal the raw batch's."""
    size = family_adapter.grid_spec().image_size
    images = [[three_squares(size, COLOURS[i : i + 3])] for i in range(2)]
    natural = family_adapter.build_inputs(images, PROMPTS[:2])
    both_orders = family_adapter.build_inputs(images * 2, [*PROMPTS[:2], *PROMPTS[1:3]])
    reused = family_adapter.with_prompts(family_adapter.encode_images(natural), both_orders)
    engine = Engine(family_adapter, share_prefix=False)
    torch.testing.assert_close(engine.logits(reused), engine.logits(both_orders), atol=ATOL, rtol=0)
    with pytest.raises(ValueError):
        family_adapter.with_prompts(family_adapter.encode_images(natural), family_adapter.build_inputs(images[:1] * 3, PROMPTS))


def test_the_last_layer_mlp_runs_on_the_last_position_only() -> None:
    """The suffix pass's last-layer MLP sees the last position only; other positions are never read (zero),
    and an MLP that does not return one tensor per position makes the shared run fall back."""
    from torch import nn

    from spatialmech.engine.prefix import last_position_mlp
    from spatialmech.engine.prefix_groups import Unshareable

    layer = nn.Module()
    layer.mlp = nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    seen: list[tuple[int, ...]] = []
    with last_position_mlp(layer):
        watch = layer.mlp.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))  # runs after the cut
        out = layer.mlp(x)
    watch.remove()
    assert seen == [(2, 1, 4)] and out.shape == (2, 5, 3)
    torch.testing.assert_close(out[:, -1], layer.mlp(x)[:, -1], rtol=0, atol=1e-6)
    assert bool((out[:, :-1] == 0).all())

    class PairMLP(nn.Module):
        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return h, h

    layer.mlp = PairMLP()
    with pytest.raises(Unshareable, match="one tensor per position"), last_position_mlp(layer):
        layer.mlp(x)
