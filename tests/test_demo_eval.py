"""The evaluator's threshold-free score: ROC AUC of the logit margin."""

from __future__ import annotations

import math

import torch

from fedlora.demo_eval import roc_auc


def test_auc_of_perfect_inverted_and_tied_rankings() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.zeros(4), labels) == 0.5


def test_auc_ignores_the_threshold_and_counts_pairs() -> None:
    # all margins negative (argmax says "0" for every example), yet the ranking is informative:
    # pairs (pos, neg): -0.3 beats -0.9 and -0.5; -0.7 beats -0.9 only: 3 of 4 pairs ordered.
    margins = torch.tensor([-0.9, -0.5, -0.3, -0.7])
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(margins, labels) == 0.75
    shifted = roc_auc(margins + 5.0, labels)
    assert shifted == 0.75


def test_auc_is_nan_with_one_class() -> None:
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
