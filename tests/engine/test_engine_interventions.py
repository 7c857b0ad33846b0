"""Every single-forward engine operation equals the same edit done with raw PyTorch hooks."""

from __future__ import annotations

import pytest
import torch
from conftest import layer_module, make_pairs, raw_capture, raw_logits

from spatialmech.engine import (
    Ablate,
    Engine,
    Patch,
    Steer,
    add_direction,
    amplify_projection,
    image_positions,
    last_position,
)
from spatialmech.errors import UserInputError

ATOL = 1e-5


def flat_rows(inputs, row: int, positions: torch.Tensor) -> torch.Tensor:
    """Rows of an image-token site for LM positions, computed independently of the engine."""
    offset = sum(len(t) for per_row in inputs.images[:row] for t in per_row)
    row_positions = torch.cat([t.positions for t in inputs.images[row]])
    local = torch.tensor([int((row_positions == p).nonzero()) for p in positions.tolist()])
    return offset + local


def object_positions(inputs, row: int) -> torch.Tensor:
    """A few image positions of one row (first half of the grid), so patches touch only part of the image."""
    pos = inputs.images[row][0].positions
    return pos[: max(1, pos.numel() // 2)]


def test_cache_matches_raw_hooks_and_projector_is_layer0_input(adapter):
    pairs = make_pairs(adapter, 3)
    inputs = pairs.target
    engine = Engine(adapter)
    positions = image_positions(inputs)
    mixed = [torch.cat([p[:3], torch.tensor([inputs.seq_len - 1])]) for p in positions]
    acts = engine.cache(inputs, {"lm.resid_pre.1": mixed, "lm.resid_post.1": mixed, "projector.out": positions, "lm.resid_pre.0": positions})
    for kind in ("resid_pre", "resid_post"):
        module, when = layer_module(adapter, kind, 1)
        full = raw_capture(adapter, inputs, module, when)
        for row, pos in enumerate(mixed):
            assert torch.equal(acts[f"lm.{kind}.1"][row], full[row, pos])
            assert torch.equal(acts.positions(f"lm.{kind}.1")[row], pos)
    point = adapter.hook_point("projector.out")
    projected = raw_capture(adapter, inputs, point.module, point.when)
    for row, pos in enumerate(positions):
        assert torch.equal(acts["projector.out"][row], projected[flat_rows(inputs, row, pos)])
        # the projector's output is what the LM reads at image positions
        torch.testing.assert_close(acts["projector.out"][row], acts["lm.resid_pre.0"][row], atol=ATOL, rtol=0)


def test_vision_out_gives_rows_per_lm_token(adapter):
    pairs = make_pairs(adapter, 2)
    inputs = pairs.target
    point = adapter.hook_point("vision.out")
    r = point.rows_per_lm_token
    picked = [inputs.images[row][0].positions[[0, 2]] for row in range(2)]
    acts = Engine(adapter).cache(inputs, "vision.out", picked)
    raw = raw_capture(adapter, inputs, point.module, point.when)
    raw = raw.reshape(-1, raw.shape[-1])
    for row, pos in enumerate(picked):
        lm_rows = flat_rows(inputs, row, pos)
        expected = raw[(lm_rows[:, None] * r + torch.arange(r)).reshape(-1)]
        assert acts["vision.out"][row].shape == (2 * r, raw.shape[-1])
        assert torch.equal(acts["vision.out"][row], expected)


@pytest.mark.parametrize("kind", ["resid_pre", "resid_post"])
def test_patch_region_swap_equals_raw_hook(adapter, kind):
    """Region A of the source -> region B of the target and vice versa, in one run (the paper's swaps)."""
    pairs = make_pairs(adapter, 3)
    engine = Engine(adapter)
    site = f"lm.{kind}.0"  # layer 0: its output still feeds later layers in every tiny model
    grid = [pairs.target.images[r][0] for r in range(3)]
    region_a = [g.positions[g.cols < g.grid_shapes[0][1] // 2][:4] for g in grid]
    region_b = [g.positions[g.cols >= g.grid_shapes[0][1] // 2][:4] for g in grid]
    src_grid = [pairs.source.images[r][0] for r in range(3)]
    src_a = [g.positions[g.cols < g.grid_shapes[0][1] // 2][:4] for g in src_grid]
    src_b = [g.positions[g.cols >= g.grid_shapes[0][1] // 2][:4] for g in src_grid]
    target_pos = [torch.cat([a, b]) for a, b in zip(region_a, region_b)]
    source_pos = [torch.cat([b, a]) for a, b in zip(src_a, src_b)]
    values = engine.cache(pairs.source, site, source_pos)[site]
    got = engine.logits(pairs.target, [Patch(site, target_pos, values)])

    module, when = layer_module(adapter, kind, 0)
    source_full = raw_capture(adapter, pairs.source, module, when)

    def edit(h):
        h = h.clone()
        for row in range(3):
            h[row, target_pos[row]] = source_full[row, source_pos[row]]
        return h

    expected = raw_logits(adapter, pairs.target, module, when, edit)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert (got - engine.logits(pairs.target)).abs().max() > 1e-4  # the patch did something


@pytest.mark.parametrize("mode", ["zero", "mean", "values"])
def test_ablate_projector_equals_raw_hook(adapter, mode):
    """Ablation at the LM input through the image-token site, with positions translated to rows."""
    pairs = make_pairs(adapter, 2)
    engine = Engine(adapter)
    positions = [object_positions(pairs.target, r) for r in range(2)]
    hidden = adapter.hidden_size
    mean = torch.linspace(-1, 1, hidden)
    # values from another input: the same number of tokens from the source image
    other = engine.cache(pairs.source, "projector.out", positions)["projector.out"]
    values = {"zero": None, "mean": mean, "values": other}[mode]
    got = engine.logits(pairs.target, [Ablate("projector.out", positions, mode=mode, values=values)])

    point = adapter.hook_point("projector.out")

    def edit(rows):
        rows = rows.clone()
        for row in range(2):
            index = flat_rows(pairs.target, row, positions[row])
            rows[index] = {"zero": torch.zeros(hidden), "mean": mean, "values": other[row] if mode == "values" else None}[mode]
        return rows

    expected = raw_logits(adapter, pairs.target, point.module, point.when, edit)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_amplify_projection_matches_formula_and_scales_components(qwen):
    pairs = make_pairs(qwen, 2)
    engine = Engine(qwen)
    hidden = qwen.hidden_size
    directions = torch.linalg.qr(torch.randn(hidden, 2, generator=torch.Generator().manual_seed(3)))[0] * 3.0
    alpha = 2.5
    positions = image_positions(pairs.target)
    got = engine.logits(pairs.target, [Steer("lm.resid_pre.0", positions, amplify_projection(directions, alpha))])

    module, when = layer_module(qwen, "resid_pre", 0)

    def edit(h):
        h = h.clone()
        for row, pos in enumerate(positions):
            x = h[row, pos]
            coeff = x @ directions / (directions**2).sum(0)
            h[row, pos] = x + alpha * coeff @ directions.T
        return h

    expected = raw_logits(qwen, pairs.target, module, when, edit)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)

    x = torch.randn(5, hidden)
    y = amplify_projection(directions, alpha)(x)
    unit = directions / directions.norm(dim=0)
    torch.testing.assert_close(y @ unit, (1 + alpha) * (x @ unit), atol=1e-4, rtol=1e-4)
    residual = lambda v: v - (v @ unit) @ unit.T  # noqa: E731
    torch.testing.assert_close(residual(y), residual(x), atol=1e-4, rtol=1e-4)


def test_add_direction_and_composition_order(qwen):
    pairs = make_pairs(qwen, 2)
    engine = Engine(qwen)
    v = torch.randn(qwen.hidden_size, generator=torch.Generator().manual_seed(1))
    last = last_position(pairs.target)
    zero_then_add = engine.logits(
        pairs.target, [Ablate("lm.resid_pre.1", last, "zero"), Steer("lm.resid_pre.1", last, add_direction(v, 2.0))]
    )
    module, when = layer_module(qwen, "resid_pre", 1)

    def edit(h):
        h = h.clone()
        h[:, -1] = 2.0 * v
        return h

    torch.testing.assert_close(zero_then_add, raw_logits(qwen, pairs.target, module, when, edit), atol=ATOL, rtol=0)
    add_then_zero = engine.logits(
        pairs.target, [Steer("lm.resid_pre.1", last, add_direction(v, 2.0)), Ablate("lm.resid_pre.1", last, "zero")]
    )
    assert not torch.allclose(zero_then_add, add_then_zero)


def test_interventions_act_on_the_prompt_pass_only(qwen):
    pairs = make_pairs(qwen, 2)
    engine = Engine(qwen)
    calls = []

    def push(h):
        calls.append(h.shape[0])
        return h + 5.0

    interventions = [Steer("lm.resid_pre.1", last_position(pairs.target), push)]
    first_step = engine.logits(pairs.target, interventions).argmax(-1)
    calls.clear()
    generated = engine.generate(pairs.target, interventions, max_new_tokens=3)
    assert calls == [1, 1]  # one call per row, on the prompt pass; decode steps untouched
    assert torch.equal(generated[:, 0], first_step)


def test_bad_inputs_raise_one_line_errors(qwen):
    pairs = make_pairs(qwen, 2)
    engine = Engine(qwen)
    before = qwen.forward(pairs.target)
    text_position = [torch.tensor([0]), torch.tensor([0])]
    with pytest.raises(UserInputError, match="not image tokens"):
        engine.cache(pairs.target, "projector.out", text_position)
    with pytest.raises(UserInputError, match="outside the sequence"):
        engine.cache(pairs.target, "lm.resid_pre.0", [torch.tensor([10_000])] * 2)
    with pytest.raises(UserInputError, match="values have shape"):
        engine.logits(pairs.target, [Patch("lm.resid_pre.0", last_position(pairs.target), [torch.zeros(2, qwen.hidden_size)] * 2)])
    with pytest.raises(UserInputError, match="unknown hook site"):
        engine.cache(pairs.target, "lm.resid_middle.0", last_position(pairs.target))
    with pytest.raises(UserInputError, match="does not exist"):
        engine.cache(pairs.target, f"lm.resid_pre.{qwen.num_layers}", last_position(pairs.target))
    with pytest.raises(UserInputError, match="rows for a batch"):
        engine.cache(pairs.target, "lm.resid_pre.0", [torch.tensor([1])])
    # hooks are removed even after an error: a clean run is unchanged
    torch.testing.assert_close(qwen.forward(pairs.target), before, atol=0, rtol=0)
