"""Scoring answers from next-token logits (SPEC sections 3-4).

An answer is a set of token ids (its single-token spelling variants: " Red", "Red", " red", "red");
its probability is the sum over the set, and it is the model's answer when the top-1 token is in the set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TokenSet = Sequence[int]


def answer_probability(logits: torch.Tensor, answers: Sequence[TokenSet]) -> torch.Tensor:
    """P(answer) per row: softmax over the vocabulary, summed over the row's answer variants. (batch,)"""
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.stack([probs[row, list(ids)].sum() for row, ids in enumerate(answers)])


def answer_probabilities(logits: torch.Tensor, answers: Sequence[Sequence[TokenSet]]) -> torch.Tensor:
    """P of several tracked answers per row: answers[row][k] -> (batch, k)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.stack([torch.stack([probs[row, list(ids)].sum() for ids in tracked]) for row, tracked in enumerate(answers)])


def top1_correct(logits: torch.Tensor, answers: Sequence[TokenSet]) -> torch.Tensor:
    """True where the arg-max next token is one of the row's answer variants. (batch,) bool"""
    top = logits.argmax(dim=-1).tolist()
    return torch.tensor([token in set(ids) for token, ids in zip(top, answers)], dtype=torch.bool)


def choice_correct(logits: torch.Tensor, correct: Sequence[TokenSet], wrong: Sequence[TokenSet]) -> torch.Tensor:
    """Forced choice: the correct option's summed probability beats the wrong one's. (batch,) bool"""
    return answer_probability(logits, correct) > answer_probability(logits, wrong)


def strict_correct(first_order: torch.Tensor, swapped_order: torch.Tensor) -> torch.Tensor:
    """SPEC's strict scoring: right under both option orders ("left or right" / "right or left")."""
    return first_order & swapped_order


def interchange_intervention_accuracy(target_probability: torch.Tensor) -> float:
    """IIA as SPEC defines it: the mean probability of the target answer over the kept pairs."""
    return float(target_probability.float().mean()) if target_probability.numel() else float("nan")
