"""The shared pieces of the engine's fast paths (`engine.call_args`, `engine.hooks` layer tools): the
causal rows they build equal the model's own masks, exactness checks see what they must, and every
layer hook or stand-in forward is gone afterwards, even after an error."""

from __future__ import annotations

import pytest
import torch
from conftest import make_pairs

from spatialmech.engine.call_args import (
    Unprovable,
    causal_mask,
    masked,
    prefix_blind_to_suffix,
    slice_rotary,
    suffix_mask,
)
from spatialmech.engine.hooks import LayerCalls, StopAtLayer0, count_token_layer_passes, identity_layers


def test_causal_rows_are_the_lower_triangle_in_each_kernel_format():
    full = torch.ones(6, 6, dtype=torch.bool).tril()
    sdpa = causal_mask(6, "sdpa", torch.device("cpu"), first=2)
    assert sdpa.shape == (1, 1, 4, 6) and torch.equal(sdpa[0, 0], full[2:])
    eager = causal_mask(6, "eager", torch.device("cpu"), first=2)
    assert torch.equal(~masked(eager)[0, 0], full[2:])  # additive: 0 where allowed, float min where hidden
    assert causal_mask(6, "flash_attention_2", torch.device("cpu")) is None
    with pytest.raises(Unprovable, match="flash_attention_2"):
        suffix_mask(None, 6, 2, "flash_attention_2", torch.device("cpu"))
    assert suffix_mask(None, 6, 5, "eager", torch.device("cpu")) is None  # one last query sees every key


def test_prefix_blindness_sees_a_bidirectional_block():
    causal = causal_mask(6, "sdpa", torch.device("cpu"))
    assert prefix_blind_to_suffix(causal, 6, 3) and prefix_blind_to_suffix(None, 6, 3)
    block = causal.clone()
    block[..., 2:5, 2:5] = True  # an image block attending both ways (Gemma3)
    assert not prefix_blind_to_suffix(block, 6, 3)  # a cut inside the block: the prefix sees the suffix
    assert prefix_blind_to_suffix(block, 6, 5)  # a cut after it is exact


def test_rotary_tables_are_cut_along_the_sequence_or_refused():
    cos, sin = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    cut = slice_rotary((cos, sin), 6, 4)
    assert torch.equal(cut[0], cos[:, 4:]) and torch.equal(cut[1], sin[:, 4:])
    with pytest.raises(Unprovable, match="rotary"):
        slice_rotary(torch.randn(2, 8), 6, 4)


def test_layer_tools_leave_no_hook_or_stand_in_behind(qwen):
    inputs = make_pairs(qwen, 2).target
    layers = qwen.decoder_layers()
    with LayerCalls(qwen, 0, keep_from=3) as calls:
        qwen.forward(inputs)
    assert sorted(calls.inputs) == list(range(len(layers)))
    assert calls.inputs[0].shape[1] == inputs.seq_len - 3 and calls.last_output.shape[1] == inputs.seq_len - 3
    hidden: dict[str, torch.Tensor] = {}
    kwargs: list[dict] = [{} for _ in layers]
    with pytest.raises(StopAtLayer0), identity_layers(qwen, hidden, kwargs, stop=True):
        qwen.forward(inputs)
    assert hidden["0"].shape[:2] == (inputs.batch_size, inputs.seq_len)
    with count_token_layer_passes(qwen) as counts:
        qwen.forward(inputs)
    assert counts["token_layers"] == len(layers) * inputs.batch_size * inputs.seq_len
    for layer in layers:
        assert "forward" not in layer.__dict__ and not layer._forward_pre_hooks and not layer._forward_hooks
