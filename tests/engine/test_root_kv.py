"""The root kept across forwards (issue 21): the start every row shares (the turn before the picture) runs
once per model, later forwards take its keys/values; on every family their logits equal the plain
forward's, are the same numbers as with the root computed afresh, and change with the weights."""

from __future__ import annotations

import torch
from conftest import square_pictures
from test_prefix_sharing import ATOL, FALLBACK, PROMPTS

from spatialmech.engine import Engine, Steer, add_direction, image_positions
from spatialmech.engine.root_kv import ENV_LIMIT, RootKV


def steered_batch(adapter, first: int):
    """Two pictures (from colour `first` on) x two prompts of one length, every picture token steered (no
    logits memo). One length: Gemma3's positions count the padding, so its rows keep a root only when
    they are padded alike."""
    images = square_pictures(adapter, first + 2)[first:]
    inputs = adapter.build_inputs([[image] for image in images for _ in PROMPTS[:2]], [prompt for _ in images for prompt in PROMPTS[:2]])
    assert bool(inputs.model_kwargs["attention_mask"].all())
    direction = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(5))
    return inputs, [Steer("lm.resid_pre.0", image_positions(inputs), add_direction(direction, 1.5))]


def test_later_forwards_keep_the_root(family_adapter) -> None:
    RootKV.of_model(family_adapter.model).clear()
    engine, plain = Engine(family_adapter, share_prefix=True), Engine(family_adapter, share_prefix=False)
    first, steer_first = steered_batch(family_adapter, 0)
    second, steer_second = steered_batch(family_adapter, 2)
    torch.testing.assert_close(engine.logits(first, steer_first), plain.logits(first, steer_first), atol=ATOL, rtol=0)
    kept = engine.logits(second, steer_second)
    torch.testing.assert_close(kept, plain.logits(second, steer_second), atol=ATOL, rtol=0)
    if family_adapter.family in FALLBACK:
        assert engine.prefix_stats.shared == 0
        return
    assert engine.prefix_stats.roots_kept == 1, engine.prefix_stats
    RootKV.of_model(family_adapter.model).clear()  # the same forward with its root computed afresh: same numbers
    assert torch.equal(Engine(family_adapter, share_prefix=True).logits(second, steer_second), kept)


def test_the_root_is_forgotten_when_weights_change(family_adapter) -> None:
    engine, plain = Engine(family_adapter, share_prefix=True), Engine(family_adapter, share_prefix=False)
    inputs, steer = steered_batch(family_adapter, 0)
    engine.logits(inputs, steer)
    with torch.no_grad():
        next(family_adapter.decoder_layers()[0].parameters()).mul_(1.5)  # written in place
    kept_before = engine.prefix_stats.roots_kept
    torch.testing.assert_close(engine.logits(inputs, steer), plain.logits(inputs, steer), atol=ATOL, rtol=0)
    assert engine.prefix_stats.roots_kept == kept_before


def test_no_root_when_the_memo_is_off(family_adapter, monkeypatch) -> None:
    monkeypatch.setenv(ENV_LIMIT, "0")
    engine, plain = Engine(family_adapter, share_prefix=True), Engine(family_adapter, share_prefix=False)
    for first in (0, 2):
        inputs, steer = steered_batch(family_adapter, first)
        torch.testing.assert_close(engine.logits(inputs, steer), plain.logits(inputs, steer), atol=ATOL, rtol=0)
    assert engine.prefix_stats.roots_kept == 0 and RootKV.of_model(family_adapter.model).nbytes == 0
