"""Shared experiment helpers on a real tiny Qwen2-VL: encoding, strict scoring, pair filtering."""

from __future__ import annotations

import pytest
import torch

from spatialmech.experiments.common import (
    encode_items,
    filter_correct_pairs,
    make_pairs,
    score_items,
    spelling_variants,
)
from spatialmech.models import adapter_class
from spatialmech.tasks import get_task


@pytest.fixture(scope="module")
def qwen():
    return adapter_class("qwen2-vl").tiny(0)


@pytest.fixture(scope="module")
def squares(qwen):
    return get_task("squares", geometry=qwen.grid_spec())


def _oracle_logits(adapter, wrong_ids):
    """Logits that put all mass on each item's answer, except items whose id is in `wrong_ids`."""

    def logits_fn(inputs, items):
        real = adapter.forward(inputs)
        out = torch.full_like(real, -30.0)
        for row, item in enumerate(items):
            ids = adapter.answer_token_ids(item.answer_variants)
            out[row, ids[0] if item.id not in wrong_ids else (ids[0] + 1) % out.shape[1]] = 30.0
        return out

    return logits_fn


def test_encode_and_score_real_model(qwen, squares):
    items = squares.items(3, seed=1)
    inputs = encode_items(qwen, squares, items)
    assert inputs.batch_size == 3
    scores = score_items(qwen, squares, items, batch_size=2)
    assert [s.item_id for s in scores] == [i.id for i in items]
    assert all(0.0 <= s.p_answer <= 1.0 for s in scores)


def test_filter_counts_drop_reasons(qwen, squares):
    items = squares.items(6, seed=2)
    pairs = make_pairs(squares, items, "opposite_query")
    assert len(pairs) == 6 and all(p.counterfactual.answer != p.clean.answer for p in pairs)
    wrong = {pairs[0].clean.id, pairs[1].counterfactual.id, pairs[2].clean.id, pairs[2].counterfactual.id}
    kept, report = filter_correct_pairs(qwen, squares, pairs, n=10, batch_size=4, logits_fn=_oracle_logits(qwen, wrong))
    assert [p.clean.id for p in kept] == [p.clean.id for p in pairs[3:]]
    assert report == {"candidates": 6, "kept": 3, "dropped_clean_wrong": 1, "dropped_counterfactual_wrong": 1, "dropped_both_wrong": 1}
    kept, report = filter_correct_pairs(qwen, squares, pairs, n=2, batch_size=4, logits_fn=_oracle_logits(qwen, set()))
    assert len(kept) == 2 and report["candidates"] == 2


def test_strict_scoring_needs_both_orders(qwen):
    scenes = get_task("scenes", geometry=qwen.grid_spec())
    items = scenes.items(2, seed=0)
    swapped_prompts = {item.meta["prompt_swapped"] for item in items}

    def right_only_in_natural_order(inputs, batch):
        out = _oracle_logits(qwen, set())(inputs, batch)
        if set(inputs.prompts) & swapped_prompts:
            out = -out
        return out

    assert all(s.correct for s in score_items(qwen, scenes, items, logits_fn=_oracle_logits(qwen, set())))
    assert not any(s.correct for s in score_items(qwen, scenes, items, logits_fn=right_only_in_natural_order))


def test_spelling_variants():
    assert spelling_variants("Red") == [" Red", "Red", " red", "red"]


def test_each_picture_is_encoded_once_and_scores_equal_the_plain_run(qwen, squares, monkeypatch):
    """A synthetic picture carries two questions: with sharing on, score_items runs the image encoder on
    each distinct picture once (the picture memo; besides the one check of encoding new pictures
    together), a second call on none, and every score equals the plain run's."""
    from spatialmech.engine.encodings import picture_encodings
    from spatialmech.experiments.common import picture_key

    items = squares.items(None, seed=0)[:12]
    assert len({picture_key(item) for item in items}) == 6  # six pictures, two questions each
    rows_seen: list[int] = []
    point = qwen.hook_point("projector.out")
    handle = point.module.register_forward_hook(lambda _m, _i, out: rows_seen.append((out[0] if isinstance(out, tuple) else out).shape[0]))
    try:
        results = {}
        picture_encodings(qwen).clear()
        for share in ("0", "1", "again"):
            monkeypatch.setenv("SPATIALMECH_PREFIX_SHARING", "0" if share == "0" else "1")
            rows_seen.clear()
            results[share] = score_items(qwen, squares, items, batch_size=4)
            results[f"rows-{share}"] = sum(rows_seen)
    finally:
        handle.remove()
    per_picture = qwen.build_inputs([[squares.image(items[0])]], [items[0].prompt]).images[0][0]
    # batches hold up to 4 pictures (8 rows): 4 new pictures, then 2. Each run of new pictures of sizes
    # not seen before also runs alone once, to prove their joint encoding equal to it
    # (`PictureEncodings._encode`); every other picture goes through once
    assert results["rows-0"] == 12 * len(per_picture) and results["rows-1"] == (6 + 4 + 2) * len(per_picture)
    assert results["rows-again"] == 0
    assert [s.item_id for s in results["1"]] == [i.id for i in items]
    for plain, shared in [*zip(results["0"], results["1"]), *zip(results["0"], results["again"])]:
        assert (plain.correct, plain.predicted_token) == (shared.correct, shared.predicted_token)
        assert abs(plain.p_answer - shared.p_answer) < 1e-5


def test_picture_batches_hold_every_question_about_up_to_batch_size_pictures() -> None:
    """A batch: up to batch_size pictures, each with all its items, and at most 2 x batch_size rows."""
    from spatialmech.experiments.common import picture_batches

    pictures = ["a", "b", "a", "c", "b", "d", "e", "a"]
    assert picture_batches(pictures, 2) == [[0, 2, 7], [1, 4, 3], [5, 6]]  # "a" x3 + "b" x2: over the cap of 4
    assert picture_batches(pictures, 3) == [[0, 2, 7, 1, 4, 3], [5, 6]]
    assert picture_batches(["a"] * 5 + ["b"], 1) == [[0, 1], [2, 3], [4], [5]]  # one picture over the cap: split
    assert picture_batches(pictures, 2, rows_per_item=2) == [[0, 2], [7], [1, 4], [3, 5], [6]]  # two rows an item
    assert picture_batches(list("abcdef"), 4) == [[0, 1, 2, 3], [4, 5]]  # one item a picture: batch_size items
    assert picture_batches([], 4) == []
    covered = sorted(i for batch in picture_batches(pictures, 1) for i in batch)
    assert covered == list(range(8))
    with pytest.raises(ValueError, match="batch_size"):
        picture_batches(pictures, 0)
