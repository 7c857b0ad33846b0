"""The picture memo (`engine.encodings`, issue 21): every picture through the image encoder once per model;
a batch's inputs from it give the raw inputs' logits on every family (pictures repeated, in any order,
with steering and ablation of picture tokens, sharing on and off), and the memo stays honest: bounded in
bytes, forgotten when the weights change, off with SPATIALMECH_ENCODING_MEMO_MB=0."""

from __future__ import annotations

import pytest
import torch
from conftest import square_pictures

from spatialmech.engine import Ablate, Engine, Steer, add_direction, image_positions
from spatialmech.engine.encodings import ENV_LIMIT, PictureEncodings, picture_encodings
from spatialmech.errors import UserInputError
from spatialmech.models.registry import available_families

ATOL = 1e-5
PROMPTS = ["The color of the square to the left of the green square is", "Which square is above?", "Red"]



def rows_of(adapter):
    """Pictures repeated and out of order across rows, prompts of different lengths (left padding)."""
    a, b, c = square_pictures(adapter, 3)
    images = [[a], [b], [a], [c], [b], [a]]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
    return images, prompts


def test_memo_inputs_give_the_raw_logits(family_adapter) -> None:
    images, prompts = rows_of(family_adapter)
    raw = family_adapter.build_inputs(images, prompts)
    memo = PictureEncodings()
    served = memo.inputs(family_adapter, images, raw)
    assert served.images_encoded and "pixel_values" not in served.model_kwargs and "pixel_values" in raw.model_kwargs
    assert (memo.misses, memo.hits) == (3, 3)  # three distinct pictures, each encoded once
    again = memo.inputs(family_adapter, images, family_adapter.build_inputs(images, prompts))
    assert (memo.misses, memo.hits) == (3, 9)
    for share in (False, True):
        engine = Engine(family_adapter, share_prefix=share)
        plain = Engine(family_adapter, share_prefix=False).logits(raw)
        torch.testing.assert_close(engine.logits(served), plain, atol=ATOL, rtol=0)
        torch.testing.assert_close(engine.logits(again), plain, atol=ATOL, rtol=0)


def test_memo_inputs_under_picture_interventions(family_adapter) -> None:
    """Steering and ablation at `projector.out` act on the served encoder output as on the raw one."""
    images, prompts = rows_of(family_adapter)
    raw = family_adapter.build_inputs(images, prompts)
    served = PictureEncodings().inputs(family_adapter, images, raw)
    positions = image_positions(raw)
    gen = torch.Generator().manual_seed(1)
    direction = torch.randn(family_adapter.hidden_size, generator=gen)
    half = [p[: len(p) // 2] for p in positions]
    for interventions in ([Steer("projector.out", positions, add_direction(direction, 3.0))], [Ablate("projector.out", half, "zero")]):
        plain = Engine(family_adapter, share_prefix=False).logits(raw, interventions)
        torch.testing.assert_close(Engine(family_adapter).logits(served, interventions), plain, atol=ATOL, rtol=0)
        assert float((plain - Engine(family_adapter, share_prefix=False).logits(raw)).abs().max()) > 1e-4


def test_memo_is_bounded_forgets_changed_weights_and_turns_off(monkeypatch) -> None:
    adapter = available_families()["qwen2-vl"].tiny()
    images = [[p] for p in square_pictures(adapter, 3)]
    raw = adapter.build_inputs(images, PROMPTS)
    memo = PictureEncodings()
    memo.inputs(adapter, images, raw)
    one = memo.nbytes // 3
    assert one > 0
    monkeypatch.setenv(ENV_LIMIT, str(2.5 * one / 2**20))  # room for two pictures
    memo.clear()
    memo.inputs(adapter, images, raw)
    assert memo.nbytes == 2 * one and memo.misses == 6
    memo.inputs(adapter, [images[2]], adapter.build_inputs([images[2]], PROMPTS[:1]))  # the most recent: kept
    assert memo.hits == 1
    memo.inputs(adapter, [images[0]], adapter.build_inputs([images[0]], PROMPTS[:1]))  # the oldest: dropped
    assert memo.misses == 7
    monkeypatch.setenv(ENV_LIMIT, "0")
    assert memo.inputs(adapter, images, raw) is raw and memo.nbytes == 0  # off: pixels through the encoder
    monkeypatch.setenv(ENV_LIMIT, "lots")
    with pytest.raises(UserInputError, match=ENV_LIMIT):
        memo.inputs(adapter, images, raw)
    monkeypatch.delenv(ENV_LIMIT)
    memo.inputs(adapter, images, raw)
    misses = memo.misses
    with torch.no_grad():
        adapter.model.model.visual.patch_embed.proj.weight.mul_(1.5)  # the encoder's weights change in place
    served = memo.inputs(adapter, images, adapter.build_inputs(images, PROMPTS))
    assert memo.misses == misses + 3
    torch.testing.assert_close(adapter.forward(served), adapter.forward(raw), atol=ATOL, rtol=0)


def test_one_memo_per_model_and_the_model_can_go() -> None:
    import gc
    import weakref

    adapter = available_families()["qwen2-vl"].tiny()
    assert picture_encodings(adapter) is picture_encodings(adapter)
    assert picture_encodings(available_families()["qwen2-vl"].tiny()) is not picture_encodings(adapter)
    images = [[p] for p in square_pictures(adapter, 1)]
    picture_encodings(adapter).inputs(adapter, images, adapter.build_inputs(images, PROMPTS[:1]))
    model = weakref.ref(adapter.model)
    del adapter
    gc.collect()
    assert model() is None  # the memo does not keep its model alive


def test_build_skips_preprocessing_pictures_the_memo_holds(family_adapter, monkeypatch) -> None:
    """`build` gives the raw inputs' logits; pictures already in the memo are not preprocessed again
    (families that declare `processes_images_alone`), and the pixels it leaves out are never used."""
    images, prompts = rows_of(family_adapter)
    memo = PictureEncodings()
    first = memo.build(family_adapter, images, prompts)
    processor = family_adapter.image_processor
    calls: list[int] = []
    original_call = type(processor).__call__

    def counting(self, images=None, **kwargs):
        calls.append(len(images))
        return original_call(self, images=images, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", counting)
    again = memo.build(family_adapter, images, prompts)
    once_per_size = list(calls)
    memo.build(family_adapter, images, prompts)
    monkeypatch.setattr(type(processor), "__call__", original_call)
    if getattr(family_adapter, "processes_images_alone", False):
        assert once_per_size in ([], [1]), "at most a blank picture of the size (the zero-pixel template)"
        assert calls == once_per_size, "every picture was in the memo: no preprocessing"
    plain = Engine(family_adapter, share_prefix=False).logits(family_adapter.build_inputs(images, prompts))
    for inputs in (first, again):
        assert "pixel_values" not in inputs.model_kwargs
        torch.testing.assert_close(Engine(family_adapter, share_prefix=False).logits(inputs), plain, atol=ATOL, rtol=0)


def test_new_pictures_encoded_together_get_their_alone_numbers(family_adapter) -> None:
    """A batch's new pictures may run through the encoder together, but only where that was shown to give
    each picture the very numbers it gets alone (bit for bit); a later run of the same sizes is cut by
    the kept layout and still equals the alone encodings, on every family."""
    from spatialmech.engine.encodings import _bitwise_equal
    from spatialmech.models.inputs import tensor_leaves

    pictures = square_pictures(family_adapter, 6)
    memo = PictureEncodings()
    alone = [PictureEncodings._alone(family_adapter, p) for p in pictures]
    for batch in (pictures[:3], pictures[3:]):  # the first decides (and checks), the second uses the verdict
        served = memo._parts(family_adapter, [[p] for p in batch] + [[batch[0]]])  # one picture asked twice
        assert len(served) == 4 and served[3] is served[0]
        expected = [alone[pictures.index(p)] for p in batch]
        assert _bitwise_equal(served[:3], expected)
        assert all(len(tensor_leaves(s)) == len(tensor_leaves(e)) > 0 for s, e in zip(served, expected))
    assert (memo.misses, memo.hits) == (6, 2)
    verdicts = list(memo._layouts.values())
    assert len(verdicts) == 1 and (verdicts[0] is False or len(verdicts[0]) == 3)
    images = [[p] for p in pictures[:3]]
    plain = Engine(family_adapter, share_prefix=False).logits(family_adapter.build_inputs(images, PROMPTS))
    torch.testing.assert_close(Engine(family_adapter).logits(memo.build(family_adapter, images, PROMPTS)), plain, atol=ATOL, rtol=0)


def test_split_like_undoes_concat_encoded() -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from spatialmech.models.inputs import concat_encoded, split_like

    gen = torch.Generator().manual_seed(0)
    parts = [BaseModelOutputWithPooling(last_hidden_state=torch.randn(n * 4, 3, generator=gen), pooler_output=torch.randn(n, 5, generator=gen))
             for n in (1, 2, 3)]
    pieces = split_like(concat_encoded(parts), parts)
    assert all(type(p) is BaseModelOutputWithPooling for p in pieces)
    assert all(torch.equal(p.last_hidden_state, q.last_hidden_state) and torch.equal(p.pooler_output, q.pooler_output) for p, q in zip(pieces, parts))
    per_image = [[torch.randn(2, 3, generator=gen)] * k for k in (1, 2)]  # lists of per-image tensors
    assert [len(p) for p in split_like(concat_encoded(per_image), per_image)] == [1, 2]
    nested = [(torch.randn(2, 3, generator=gen), {"a": torch.randn(1, 2, generator=gen)}) for _ in range(2)]
    back = split_like(concat_encoded(nested), nested)
    assert all(torch.equal(b[0], n[0]) and torch.equal(b[1]["a"], n[1]["a"]) for b, n in zip(back, nested))
    with pytest.raises(ValueError, match="laid out"):
        split_like(torch.randn(5, 3), [torch.randn(2, 3), torch.randn(2, 3)])
    with pytest.raises(ValueError, match="fields"):
        split_like({"b": torch.randn(2, 3)}, [{"a": torch.randn(1, 3)}, {"a": torch.randn(1, 3)}])


def test_pixels_left_out_take_no_memory(family_adapter) -> None:
    """Under `pixels_elsewhere`, a family that processes pictures alone gets zero pixels of the real shape
    as one broadcast zero (no memory written); other families process as usual."""
    from spatialmech.models.inputs import pixels_elsewhere

    images, prompts = rows_of(family_adapter)
    real = family_adapter.build_inputs(images, prompts).model_kwargs["pixel_values"]
    with pixels_elsewhere():
        left_out = family_adapter.build_inputs(images, prompts).model_kwargs["pixel_values"]
    assert left_out.shape == real.shape and left_out.dtype == real.dtype
    if getattr(family_adapter, "processes_images_alone", False):
        assert not bool(left_out.any()) and left_out.stride()[0] == 0
