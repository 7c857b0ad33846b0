"""Helpers every experiment shares: items -> model inputs, answers -> token sets, scoring, pairs.

Scoring follows SPEC section 3: synthetic tasks use the one-token system prompt and are scored by
the top-1 next token over the answer's spelling variants; forced-choice items (`item.options`, e.g.
scenes / COCO-spatial) are scored strictly: correct only if right under both option orders.
Counterfactual pairs are kept only where the model is right on both the clean and the counterfactual
input (SPEC section 4), and the result says how many were dropped and why.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spatialmech.engine import Engine
from spatialmech.engine.encodings import picture_encodings
from spatialmech.engine.scoring import answer_probability, top1_correct
from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT, BatchInputs
from spatialmech.sharing import sharing_default
from spatialmech.tasks.base import Item, Task

LogitsFn = Callable[[BatchInputs, Sequence[Item]], torch.Tensor]
EncodeFn = Callable[[Any, Task, Sequence[Item], "Sequence[str] | None"], BatchInputs]


def system_prompt(task: Task) -> str | None:
    """SPEC: synthetic tasks use the one-token system prompt; real data uses the model's default."""
    return SYNTHETIC_SYSTEM_PROMPT if getattr(task, "synthetic", True) else None


def encode_items(adapter: Any, task: Task, items: Sequence[Item], prompts: Sequence[str] | None = None,
                 keep_pixels: bool = False) -> BatchInputs:
    """Model inputs for items (one image each), with their own prompts unless `prompts` is given. With
    sharing on, each picture's encoder output comes from the model's picture memo (computed once per
    picture, `engine.encodings`); `keep_pixels` gives the raw inputs (to hook `vision.out`)."""
    drawn: dict[int, Any] = {}  # an item asked twice in one batch (both option orders) is drawn once
    for item in items:
        if id(item) not in drawn:
            drawn[id(item)] = task.image(item)
    images = [[drawn[id(item)]] for item in items]
    texts = list(prompts) if prompts is not None else [item.prompt for item in items]
    if keep_pixels or not sharing_default():
        return adapter.build_inputs(images, texts, system=system_prompt(task))
    return picture_encodings(adapter).build(adapter, images, texts, system=system_prompt(task))


def answer_ids(adapter: Any, item: Item, answer: str | None = None) -> list[int]:
    """Token ids of an answer's spelling variants (the item's own answer by default)."""
    if answer is None or answer == item.answer:
        return adapter.answer_token_ids(item.answer_variants)
    return adapter.answer_token_ids(spelling_variants(answer))


def spelling_variants(word: str) -> list[str]:
    """SPEC's variant set: " Red", "Red", " red", "red" (deduplicated, in that order)."""
    forms = [f" {word}", word, f" {word.lower()}", word.lower(), f" {word.capitalize()}", word.capitalize()]
    return list(dict.fromkeys(forms))


def attribute_answer(item: Item, index: int) -> str:
    """The answer word naming object `index` of an item (e.g. its colour for squares)."""
    return item.objects[index].attribute


class ReusedEncodings:
    """An `encode` for `score_items` that builds each batch's inputs once per group of calls: the
    conditions of an ablation and the alphas of a sweep score the same batches again. With sharing on the
    pictures' encoder outputs come from the picture memo (`encode_items`); with it off, each batch's
    distinct pictures are encoded once for that batch (`encode_batch_once`: what the toolkit did before the
    memo, so the sharing-off baseline keeps it). Use one per group of items."""

    def __init__(self) -> None:
        self._inputs: dict[tuple[tuple[str, ...], tuple[str, ...]], BatchInputs] = {}

    def __call__(self, adapter: Any, task: Task, items: Sequence[Item], prompts: Sequence[str] | None = None) -> BatchInputs:
        texts = tuple(prompts) if prompts is not None else tuple(item.prompt for item in items)
        key = (tuple(item.id for item in items), texts)
        if key not in self._inputs:
            build = encode_items if sharing_default() else encode_batch_once
            self._inputs[key] = build(adapter, task, items, list(texts))
        return self._inputs[key]


def encode_batch_once(adapter: Any, task: Task, items: Sequence[Item], prompts: Sequence[str]) -> BatchInputs:
    """Raw inputs with the image encoder run once on the batch's distinct pictures (rows holding k copies
    of one picture order, e.g. both option orders, share them through `with_prompts`); no memo."""
    raw = encode_items(adapter, task, items, prompts, keep_pixels=True)
    period = picture_period([picture_key(item) for item in items])
    if period == len(items):
        return adapter.encode_images(raw)
    first = encode_items(adapter, task, items[:period], prompts[:period], keep_pixels=True)
    return adapter.with_prompts(adapter.encode_images(first), raw)


def picture_period(pictures: Sequence[str]) -> int:
    """The smallest p such that the batch is len/p copies of its first p pictures (len if none)."""
    n = len(pictures)
    for p in range(1, n):
        if n % p == 0 and all(pictures[i] == pictures[i % p] for i in range(p, n)):
            return p
    return n


def picture_batches(pictures: Sequence[Hashable], batch_size: int, rows_per_item: int = 1) -> list[list[int]]:
    """Indices of items (showing `pictures`) in batches: a picture's items together, pictures in first-seen
    order, each batch up to `batch_size` pictures and `2 * batch_size` rows (a forced-choice item is 2 rows,
    its option orders). Why pictures: the engine runs what a picture's rows share once, so a batch holding
    every question about its pictures does the least work; the row cap is what a batch of forced-choice
    items (both orders) always held, so a forward never grows past that, shared or not (a picture with
    more items than that is split)."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be at least 1")
    cap = max(1, 2 * batch_size // rows_per_item)  # items a batch may hold
    by_picture: dict[Hashable, list[int]] = {}
    for i, picture in enumerate(pictures):
        by_picture.setdefault(picture, []).append(i)
    batches: list[list[int]] = []
    count = 0
    for members in by_picture.values():
        if not batches or count == batch_size or len(batches[-1]) + len(members) > cap:
            batches.append([])
            count = 0
        count += 1
        for i in members:  # a picture alone over the cap goes on in further batches
            if len(batches[-1]) == cap:
                batches.append([])
                count = 1
            batches[-1].append(i)
    return batches


def default_logits(adapter: Any) -> LogitsFn:
    """Plain scoring through the engine, so rows sharing a picture and prompt start share that prefix."""
    engine = Engine(adapter)
    return lambda inputs, _items: engine.logits(inputs)


def picture_key(item: Item) -> str:
    """Items with equal keys show the same picture (the engine shares their prefix when batched together)."""
    return repr((item.image_path, item.image_size, item.grid, item.background, [o.__dict__ for o in item.objects]))



def get_task_for(adapter: Any, task_name: str, data_root: str | None) -> Task:
    """The one way experiments load their task: drawn on the model's own token grid, with its
    tokenizer (What'sUp keeps only side-object names that are one token for it; other tasks ignore it)."""
    from spatialmech.tasks import get_task

    return get_task(task_name, geometry=adapter.grid_spec(), data_root=data_root, tokenizer=adapter.tokenizer)


@dataclass
class ItemScore:
    """How the model did on one item. Forced-choice items also carry the swapped-order pass."""

    item_id: str
    correct: bool
    p_answer: float
    predicted_token: str
    forced_choice: bool = False
    predicted_token_swapped: str | None = None
    correct_natural_order: bool | None = None
    correct_swapped_order: bool | None = None


def is_forced_choice(item: Item) -> bool:
    """Items asked with explicit options in both orders (scenes, COCO-spatial) are scored strictly."""
    return bool(item.options) and bool((item.meta or {}).get("prompt_swapped"))


def score_items(
    adapter: Any,
    task: Task,
    items: Sequence[Item],
    batch_size: int = 8,
    logits_fn: LogitsFn | None = None,
    progress: Callable[[int], None] | None = None,
    encode: EncodeFn = encode_items,
) -> list[ItemScore]:
    """Score items in batches. Forced-choice items are asked in both option orders (strict), both in one
    forward; a batch holds every item about up to `batch_size` pictures (`picture_batches`; results come
    back in `items` order), so the engine runs what their inputs share once. `encode` builds each batch's inputs (e.g.
    `ReusedEncodings` to reuse them across calls)."""
    logits_fn = logits_fn or default_logits(adapter)
    scores: list[ItemScore | None] = [None] * len(items)
    forced_all = [is_forced_choice(item) for item in items]
    rows_each = 2 if any(forced_all) else 1  # a batch with a forced-choice item asks every item twice
    for batch_index in picture_batches([picture_key(item) for item in items], batch_size, rows_each):
        batch = [items[i] for i in batch_index]
        answers = [answer_ids(adapter, item) for item in batch]
        forced = [forced_all[i] for i in batch_index]
        # both option orders in one forward: they share the picture and the text before the options
        swapped_rows = list(range(len(batch))) if any(forced) else []
        rows = batch + [batch[i] for i in swapped_rows]
        prompts = [item.prompt for item in batch] + [b.meta["prompt_swapped"] if f else b.prompt for b, f in zip(batch, forced)][: len(swapped_rows)]
        # sharing off: both orders still share the batch's encoded pictures (as before the picture memo)
        batch_encode = encode_batch_once if swapped_rows and encode is encode_items and not sharing_default() else encode
        all_logits = logits_fn(batch_encode(adapter, task, rows, prompts), rows)
        logits = all_logits[: len(batch)]
        correct = top1_correct(logits, answers)
        p_answer = answer_probability(logits, answers)
        tokens = logits.argmax(-1).tolist()
        swapped_correct: list[bool | None] = [None] * len(batch)
        swapped_tokens: list[int | None] = [None] * len(batch)
        if swapped_rows:  # rows len(batch)+i: item i in the swapped order (only forced-choice items count)
            swapped_logits = all_logits[len(batch) :]
            swapped_p = answer_probability(swapped_logits, answers)
            swapped_ok = top1_correct(swapped_logits, answers).tolist()
            swapped_top = swapped_logits.argmax(-1).tolist()
            for i in (i for i in swapped_rows if forced[i]):
                swapped_correct[i], swapped_tokens[i] = swapped_ok[i], swapped_top[i]
                p_answer[i] = torch.minimum(p_answer[i], swapped_p[i])
        for i, item in enumerate(batch):
            natural = bool(correct[i])
            scores[batch_index[i]] = ItemScore(
                item_id=item.id,
                correct=natural and bool(swapped_correct[i]) if forced[i] else natural,
                p_answer=float(p_answer[i]),
                predicted_token=adapter.tokenizer.decode([tokens[i]]),
                forced_choice=forced[i],
                predicted_token_swapped=adapter.tokenizer.decode([swapped_tokens[i]]) if forced[i] else None,
                correct_natural_order=natural if forced[i] else None,
                correct_swapped_order=bool(swapped_correct[i]) if forced[i] else None,
            )
        if progress is not None:
            progress(len(batch))
    return [score for score in scores if score is not None]


@dataclass
class Pair:
    """A clean item and its counterfactual for one experiment."""

    clean: Item
    counterfactual: Item
    kind: str


def make_pairs(task: Task, items: Sequence[Item], kind: str) -> list[Pair]:
    return [Pair(item, cf.item, kind) for item in items for cf in task.counterfactuals(item, kind)]


def filter_correct_pairs(
    adapter: Any,
    task: Task,
    pairs: Sequence[Pair],
    n: int,
    batch_size: int = 8,
    logits_fn: LogitsFn | None = None,
) -> tuple[list[Pair], dict[str, int]]:
    """Keep the first `n` pairs the model answers correctly on both inputs; count the rest by reason."""
    kept: list[Pair] = []
    report = {"candidates": 0, "kept": 0, "dropped_clean_wrong": 0, "dropped_counterfactual_wrong": 0, "dropped_both_wrong": 0}
    for start in range(0, len(pairs), batch_size):
        if len(kept) >= n:
            break
        chunk = list(pairs[start : start + batch_size])
        clean = score_items(adapter, task, [p.clean for p in chunk], batch_size, logits_fn)
        counter = score_items(adapter, task, [p.counterfactual for p in chunk], batch_size, logits_fn)
        for pair, c, k in zip(chunk, clean, counter):
            if len(kept) >= n:
                break
            report["candidates"] += 1
            if c.correct and k.correct:
                kept.append(pair)
            elif not c.correct and not k.correct:
                report["dropped_both_wrong"] += 1
            elif not c.correct:
                report["dropped_clean_wrong"] += 1
            else:
                report["dropped_counterfactual_wrong"] += 1
    report["kept"] = len(kept)
    return kept, report
