import torch

from spatialmech.engine.scoring import (
    answer_probabilities,
    answer_probability,
    choice_correct,
    interchange_intervention_accuracy,
    strict_correct,
    top1_correct,
)


def test_probability_sums_variants_and_top1():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9], [0.1, 0.1, 0.1, 0.7]]))
    p = answer_probability(logits, [[1, 2], [0]])
    assert torch.allclose(p, torch.tensor([0.5, 0.1]), atol=1e-6)
    assert top1_correct(logits, [[0, 3], [1, 2]]).tolist() == [True, False]
    both = answer_probabilities(logits, [[[0], [1, 2]], [[3], [0]]])
    assert torch.allclose(both, torch.tensor([[0.5, 0.5], [0.7, 0.1]]), atol=1e-6)
    assert choice_correct(logits, [[0], [3]], [[1], [0]]).tolist() == [True, True]
    assert strict_correct(torch.tensor([True, True]), torch.tensor([True, False])).tolist() == [True, False]
    assert abs(interchange_intervention_accuracy(torch.tensor([0.2, 0.4])) - 0.3) < 1e-7
