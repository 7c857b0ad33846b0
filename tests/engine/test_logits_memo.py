"""The logits memo (`engine.logits_memo`, issue 21): a plain batch seen before gets the very logits its
first forward gave; anything that changes the forward (other inputs, interventions, recordings, changed
weights, sharing off) runs afresh, and the memo is bounded and can be turned off."""

from __future__ import annotations

import pytest
import torch
from conftest import square_pictures

from spatialmech.engine import Engine, Steer, add_direction, image_positions
from spatialmech.engine.logits_memo import ENV_LIMIT, batch_key, logits_memo
from spatialmech.errors import UserInputError
from spatialmech.models.registry import available_families

PROMPTS = ["The color of the square to the left of the green square is", "Which square is above?"]


@pytest.fixture
def adapter():
    return available_families()["qwen2-vl"].tiny()  # its own model: the memo is per model object


def batch(adapter, prompts=PROMPTS):
    return adapter.build_inputs([[p] for p in square_pictures(adapter, len(prompts))], list(prompts))


def test_a_batch_seen_before_gets_its_first_logits(adapter) -> None:
    memo = logits_memo(adapter)
    engine = Engine(adapter, share_prefix=True)
    first = engine.logits(batch(adapter))
    assert (memo.misses, memo.hits) == (1, 0)
    again = Engine(adapter, share_prefix=True).logits(batch(adapter))  # rebuilt inputs, another engine
    assert (memo.misses, memo.hits) == (1, 1) and torch.equal(again, first)
    again.add_(1.0)  # callers get their own copy
    assert torch.equal(engine.logits(batch(adapter)), first)
    torch.testing.assert_close(first, Engine(adapter, share_prefix=False).logits(batch(adapter)), atol=1e-5, rtol=0)
    engine.logits(batch(adapter, PROMPTS[::-1]))  # other rows: a fresh forward
    assert memo.misses == 2


def test_interventions_recordings_and_sharing_off_do_not_use_it(adapter) -> None:
    memo = logits_memo(adapter)
    inputs = batch(adapter)
    plain = Engine(adapter, share_prefix=True).logits(inputs)
    seen = (memo.misses, memo.hits)
    direction = torch.ones(adapter.hidden_size)
    steered = Engine(adapter, share_prefix=True).logits(inputs, [Steer("projector.out", image_positions(inputs), add_direction(direction, 5.0))])
    assert not torch.allclose(steered, plain)
    Engine(adapter, share_prefix=True).run(inputs, record={"lm.resid_pre.0": image_positions(inputs)})
    Engine(adapter, share_prefix=False).logits(inputs)
    assert (memo.misses, memo.hits) == seen


def test_changed_weights_are_never_served_old_logits(adapter) -> None:
    engine = Engine(adapter, share_prefix=True)
    inputs = batch(adapter)
    before = engine.logits(inputs)
    with torch.no_grad():
        adapter.model.get_output_embeddings().weight.mul_(2.0)
    after = engine.logits(inputs)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, Engine(adapter, share_prefix=False).logits(inputs), atol=1e-4, rtol=0)


def test_bounded_off_and_bad_limit(adapter, monkeypatch) -> None:
    memo = logits_memo(adapter)
    engine = Engine(adapter, share_prefix=True)
    one = batch(adapter)
    engine.logits(one)
    size = memo.nbytes
    assert size == one.batch_size * adapter.model.get_output_embeddings().weight.shape[0] * 4
    monkeypatch.setenv(ENV_LIMIT, str(1.5 * size / 2**20))  # room for one batch
    engine.logits(batch(adapter, PROMPTS[::-1]))
    assert memo.nbytes == size
    engine.logits(one)  # the oldest was dropped
    assert memo.hits == 0
    monkeypatch.setenv(ENV_LIMIT, "0")
    engine.logits(one)
    assert memo.nbytes == 0 and memo.hits == 0
    monkeypatch.setenv(ENV_LIMIT, "-3")
    with pytest.raises(UserInputError, match=ENV_LIMIT):
        engine.logits(one)


def test_the_key_covers_every_input(adapter) -> None:
    inputs = batch(adapter)
    key = batch_key(inputs, "p")
    assert batch_key(batch(adapter), "p") == key and batch_key(inputs, "q") != key
    changed = dict(inputs.model_kwargs)
    changed["pixel_values"] = changed["pixel_values"].clone()
    changed["pixel_values"][0, 0] += 1e-3
    assert batch_key(type(inputs)(changed, inputs.images, inputs.prompts, dict(inputs.row_order)), "p") != key


def test_replaced_weights_are_never_served_old_logits(adapter) -> None:
    """Weights swapped for new tensors (fresh write counters) still invalidate the memo."""
    engine = Engine(adapter, share_prefix=True)
    inputs = batch(adapter)
    before = engine.logits(inputs)
    head = adapter.model.get_output_embeddings().weight
    head_name = next(name for name, p in adapter.model.named_parameters() if p is head)
    state = {name: value * 2.0 if name == head_name else value.clone() for name, value in adapter.model.state_dict().items()}
    adapter.model.load_state_dict(state, assign=True)
    after = engine.logits(inputs)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, Engine(adapter, share_prefix=False).logits(inputs), atol=1e-4, rtol=0)
