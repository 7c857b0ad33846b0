"""Patching sweeps: the engine's shared-computation paths equal the naive loop to 1e-5."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import layer_module, make_pairs, raw_capture, raw_logits

from spatialmech.engine import Ablate, Engine, Patch, image_positions, last_position
from spatialmech.engine.scoring import answer_probabilities
from spatialmech.errors import UserInputError

ATOL = 1e-5


def naive_raw_sweep(adapter, pairs, kind, target_positions, source_positions):
    """The paper's loop with raw hooks: one batch-1 forward per (pair, layer). (layers, pairs, vocab)"""
    out = []
    for layer in range(adapter.num_layers):
        module, when = layer_module(adapter, kind, layer)
        per_pair = []
        for row in range(pairs.target.batch_size):
            target = adapter.build_inputs([[pairs.target_images[row]]], [pairs.prompts[row]])
            source = adapter.build_inputs([[pairs.source_images[row]]], [pairs.prompts[row]])
            # positions of this pair, shifted from the padded batch to the unpadded single row
            t_shift = pairs.target.seq_len - target.seq_len
            s_shift = pairs.source.seq_len - source.seq_len
            source_full = raw_capture(adapter, source, module, when)
            t_pos, s_pos = target_positions[row] - t_shift, source_positions[row] - s_shift

            def edit(h, t_pos=t_pos, s_pos=s_pos, values=source_full):
                h = h.clone()
                h[0, t_pos] = values[0, s_pos]
                return h

            per_pair.append(raw_logits(adapter, target, module, when, edit)[0])
        out.append(torch.stack(per_pair))
    return torch.stack(out)


def swap_positions(inputs):
    """Per row: left-half positions then right-half positions of the image grid, and the reverse."""
    first, second = [], []
    for per_row in inputs.images:
        grid = per_row[0]
        half = grid.grid_shapes[0][1] // 2
        left, right = grid.positions[grid.cols < half], grid.positions[grid.cols >= half]
        first.append(torch.cat([left, right]))
        second.append(torch.cat([right, left]))
    return first, second


@pytest.mark.parametrize("kind", ["resid_pre", "resid_post"])
@pytest.mark.parametrize(("selector", "method"), [("last", "auto"), ("swap", "auto"), ("swap", "resume")])
def test_sweep_equals_raw_naive_loop(adapter, kind, selector, method):
    pairs = make_pairs(adapter, 3, seed=1)
    engine = Engine(adapter)
    if selector == "last":
        target_pos, source_pos = last_position(pairs.target), last_position(pairs.source)
    else:
        target_pos, _ = swap_positions(pairs.target)
        _, source_pos = swap_positions(pairs.source)
    result = engine.patch_sweep(
        pairs.target, pairs.source, target_pos, source_pos, site=f"lm.{kind}.{{l}}", keep_logits=True, method=method
    )
    # both selectors leave the text before the image alone, so the prefix is reused unless told not to
    assert result.method == ("resume" if method == "resume" else "suffix")
    expected = naive_raw_sweep(adapter, pairs, kind, target_pos, source_pos)
    torch.testing.assert_close(result.logits, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(result.clean_logits, adapter.forward(pairs.target), atol=ATOL, rtol=0)
    torch.testing.assert_close(result.source_logits, adapter.forward(pairs.source), atol=ATOL, rtol=0)


def test_sweep_with_ablations_and_tracked_answers_equals_engine_naive(qwen):
    """The 'backup' setting: both runs ablated at the LM input, then object-token patching per layer."""
    pairs = make_pairs(qwen, 4, seed=2)
    engine = Engine(qwen)
    image_t, image_s = image_positions(pairs.target), image_positions(pairs.source)
    blank_t = [p[-3:] for p in image_t]
    blank_s = [p[-3:] for p in image_s]
    target_ablation = [Ablate("projector.out", blank_t, "zero"), Ablate("lm.resid_pre.0", [p[:1] for p in image_t], "mean", torch.ones(qwen.hidden_size))]
    source_ablation = [Ablate("projector.out", blank_s, "zero")]
    target_pos, _ = swap_positions(pairs.target)
    _, source_pos = swap_positions(pairs.source)
    tracked = [[[1, 2], [3], [4, 5, 6]] for _ in range(4)]
    kwargs = dict(
        site="lm.resid_pre.{l}", answers=tracked, keep_logits=True,
        target_interventions=target_ablation, source_interventions=source_ablation,
    )
    fast = engine.patch_sweep(pairs.target, pairs.source, target_pos, source_pos, **kwargs)
    naive = engine.patch_sweep(pairs.target, pairs.source, target_pos, source_pos, method="naive", **kwargs)
    assert (fast.method, naive.method) == ("suffix", "naive")
    torch.testing.assert_close(fast.logits, naive.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.probabilities, naive.probabilities, atol=ATOL, rtol=0)
    assert fast.probabilities.shape == (qwen.num_layers, 4, 3)
    torch.testing.assert_close(fast.probabilities[1], answer_probabilities(fast.logits[1], tracked))
    # a target intervention inside the swept layers cannot be cached: the sweep falls back to naive
    late = [Ablate("lm.resid_post.2", last_position(pairs.target), "zero")]
    fallback = engine.patch_sweep(pairs.target, pairs.source, target_pos, source_pos, target_interventions=late, keep_logits=True)
    assert fallback.method == "naive"


@pytest.mark.parametrize("family", ["qwen2-vl", "gemma3"])
def test_patch_inside_the_image_reuses_the_prefix_only_under_causal_attention(family, request):
    """Patching the right half of the image: Qwen is causal, so everything before it is reused; Gemma's
    image tokens attend to each other both ways, so the left half changes too and the sweep must resume
    whole sequences. Both must equal the naive loop."""
    adapter = request.getfixturevalue({"qwen2-vl": "qwen", "gemma3": "gemma"}[family])
    pairs = make_pairs(adapter, 2, seed=7)
    right_half = [p[p.numel() // 2 :] for p in image_positions(pairs.target)]
    engine = Engine(adapter)
    fast = engine.patch_sweep(pairs.target, pairs.source, right_half, keep_logits=True)
    naive = engine.patch_sweep(pairs.target, pairs.source, right_half, keep_logits=True, method="naive")
    assert fast.method == ("suffix" if family == "qwen2-vl" else "resume")
    torch.testing.assert_close(fast.logits, naive.logits, atol=ATOL, rtol=0)


def test_layer_subset_and_last_layer_output(gemma):
    pairs = make_pairs(gemma, 3, seed=3)
    engine = Engine(gemma)
    last_layer = gemma.num_layers - 1
    for selector in (last_position(pairs.target), image_positions(pairs.target)):
        fast = engine.patch_sweep(pairs.target, pairs.source, selector, site="lm.resid_post.{l}", layers=[last_layer, 0], keep_logits=True)
        naive = engine.patch_sweep(pairs.target, pairs.source, selector, site="lm.resid_post.{l}", layers=[last_layer, 0], keep_logits=True, method="naive")
        assert fast.layers == [last_layer, 0]
        torch.testing.assert_close(fast.logits, naive.logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["suffix", "resume"])
def test_row_chunks_and_small_calls_give_the_same_numbers(adapter, method):
    """A token cap below one batch's suffix splits the recompute into chunks of rows (here 2 + 1 rows,
    then 1 row per call); every family's kwargs, masks and cached keys/values must split alike."""
    pairs = make_pairs(adapter, 3, seed=4)
    engine = Engine(adapter)
    target_pos, _ = swap_positions(pairs.target)
    _, source_pos = swap_positions(pairs.source)
    sweep = dict(site="lm.resid_pre.{l}", keep_logits=True, method=method)
    wide = engine.patch_sweep(pairs.target, pairs.source, target_pos, source_pos, **sweep)
    suffix = pairs.target.seq_len - (min(int(p.min()) for p in target_pos) if method == "suffix" else 0)
    for cap in (2 * suffix, 1):
        narrow = engine.patch_sweep(pairs.target, pairs.source, target_pos, source_pos, max_tokens_per_call=cap, **sweep)
        assert narrow.method == wide.method == method
        torch.testing.assert_close(narrow.logits, wide.logits, atol=ATOL, rtol=0)


def test_sliding_window_cache_falls_back_to_exact_resume(gemma):
    """Gemma with a window shorter than the prompt: the KV cache drops early keys, so a one-token step
    cannot be built from it; the sweep must notice and still equal the naive loop."""
    config = copy.deepcopy(gemma.model.config)
    config.text_config.sliding_window = 8
    torch.manual_seed(0)
    windowed = type(gemma)(type(gemma.model)(config), gemma.tokenizer, gemma.image_processor, "tiny-windowed")
    pairs = make_pairs(windowed, 2, seed=5)
    engine = Engine(windowed)
    last = last_position(pairs.target)
    fast = engine.patch_sweep(pairs.target, pairs.source, last, keep_logits=True)
    naive = engine.patch_sweep(pairs.target, pairs.source, last, keep_logits=True, method="naive")
    assert fast.method == "resume"
    torch.testing.assert_close(fast.logits, naive.logits, atol=ATOL, rtol=0)


def test_sweep_input_errors(qwen):
    pairs = make_pairs(qwen, 2)
    engine = Engine(qwen)
    last = last_position(pairs.target)
    with pytest.raises(UserInputError, match="same number of positions"):
        engine.patch_sweep(pairs.target, pairs.source, last, [torch.tensor([1, 2])] * 2)
    with pytest.raises(UserInputError, match="no layer placeholder"):
        engine.patch_sweep(pairs.target, pairs.source, last, site="lm.resid_pre.0")
    with pytest.raises(UserInputError, match="does not exist"):
        engine.patch_sweep(pairs.target, pairs.source, last, layers=[qwen.num_layers])
    with pytest.raises(UserInputError, match="leaves position 0 alone"):
        engine.patch_sweep(pairs.target, pairs.source, [torch.tensor([0, 5])] * 2, method="suffix")
    single = qwen.build_inputs([[pairs.source_images[0]]], [pairs.prompts[0]])
    with pytest.raises(UserInputError, match="one source per target"):
        engine.patch_sweep(pairs.target, single, last)


def test_patch_object_is_what_the_sweep_applies(qwen):
    """A sweep layer equals an explicit `Patch` of the cached source values at that layer."""
    pairs = make_pairs(qwen, 2, seed=6)
    engine = Engine(qwen)
    positions = image_positions(pairs.target)
    sweep = engine.patch_sweep(pairs.target, pairs.source, positions, layers=[1], keep_logits=True)
    values = engine.cache(pairs.source, "lm.resid_pre.1", positions)["lm.resid_pre.1"]
    direct = engine.logits(pairs.target, [Patch("lm.resid_pre.1", positions, values)])
    torch.testing.assert_close(sweep.logits[0], direct, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_unpadded_batch_builds_the_causal_rows_itself(qwen, attention):
    """Without padding the model passes no mask (plain causal); recomputing a suffix of several tokens
    needs the causal rows spelled out, in the form the attention implementation expects."""
    pairs = make_pairs(qwen, 2, seed=8)
    same_prompt = [pairs.prompts[0]] * 2
    target = qwen.build_inputs([[im] for im in pairs.target_images], same_prompt)
    source = qwen.build_inputs([[im] for im in pairs.source_images], same_prompt)
    assert bool(target.model_kwargs["attention_mask"].all())
    qwen.model.set_attn_implementation(attention)
    try:
        engine = Engine(qwen)
        positions = image_positions(target)
        fast = engine.patch_sweep(target, source, positions, keep_logits=True)
        naive = engine.patch_sweep(target, source, positions, keep_logits=True, method="naive")
    finally:
        qwen.model.set_attn_implementation("sdpa")
    assert fast.method == "suffix"
    torch.testing.assert_close(fast.logits, naive.logits, atol=ATOL, rtol=0)


def test_block_output_sweep_uses_the_naive_loop(qwen):
    """Sites inside a layer (attention/MLP outputs) are swept with one patched forward per layer."""
    pairs = make_pairs(qwen, 2, seed=9)
    engine = Engine(qwen)
    positions = image_positions(pairs.target)
    result = engine.patch_sweep(pairs.target, pairs.source, positions, site="lm.mlp.{l}", layers=[0, 2], keep_logits=True)
    assert result.method == "naive"
    values = engine.cache(pairs.source, "lm.mlp.2", positions)["lm.mlp.2"]
    direct = engine.logits(pairs.target, [Patch("lm.mlp.2", positions, values)])
    torch.testing.assert_close(result.logits[1], direct, atol=ATOL, rtol=0)
