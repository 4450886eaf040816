"""The threshold calibration's arithmetic: margin histograms and the best margin shift.

The server sees only per-label counts of held-out margins in fixed bins; from them it must
find the threshold a full search over the margins would find (to a bin), leave a right
threshold alone, and refuse malformed counts with a message that says what to send.
"""

from __future__ import annotations

import random

import pytest
import torch
from pydantic import ValidationError

from fedlora_client import protocol as p
from fedlora_client.calibration import (
    MARGIN_EDGES,
    NUM_BINS,
    best_margin_shift,
    check_histogram,
    head_bias_key,
    margin_histogram,
    shift_head_bias,
)


def _balanced_accuracy(margins: list[float], labels: list[int], shift: float) -> float:
    recall = []
    for label in (0, 1):
        rows = [m + shift for m, y in zip(margins, labels, strict=True) if y == label]
        right = sum((m > 0) == bool(label) for m in rows)
        recall.append(right / len(rows))
    return sum(recall) / 2


def _skewed_clients(seed: int) -> list[tuple[list[float], list[int]]]:
    """Three clients whose models rank well but whose margins all sit left of 0."""
    rng = random.Random(seed)
    clients = []
    for n, prior in ((300, 0.9), (200, 0.2), (50, 0.5)):
        labels = [int(rng.random() < prior) for _ in range(n)]
        margins = [-0.8 + 0.3 * y + rng.gauss(0, 0.12) for y in labels]
        clients.append((margins, labels))
    return clients


def test_pooled_histograms_find_the_best_threshold_a_full_search_finds() -> None:
    clients = _skewed_clients(0)
    cal = best_margin_shift(margin_histogram(m, y) for m, y in clients)
    assert cal is not None
    margins = [m for ms, _ in clients for m in ms]
    labels = [y for _, ys in clients for y in ys]
    assert cal.num_examples == len(margins)
    assert cal.balanced_accuracy_before == pytest.approx(_balanced_accuracy(margins, labels, 0))
    assert cal.balanced_accuracy_before == 0.5  # every margin < 0: all predicted label 0
    # the shift found from the counts is as good as the best over every exact threshold
    exact = max(_balanced_accuracy(margins, labels, -m + 1e-9) for m in margins)
    assert cal.balanced_accuracy_after == pytest.approx(
        _balanced_accuracy(margins, labels, cal.shift)
    )
    assert cal.balanced_accuracy_after >= exact - 0.01
    assert cal.balanced_accuracy_after > 0.8
    assert 0.4 < cal.shift < 0.9


def test_a_threshold_that_is_already_right_is_left_alone() -> None:
    rng = random.Random(1)
    labels = [rng.randrange(2) for _ in range(400)]
    margins = [(2.0 if y else -2.0) + rng.gauss(0, 0.3) for y in labels]
    cal = best_margin_shift([margin_histogram(margins, labels)])
    assert cal is not None
    assert cal.shift == 0.0
    assert cal.balanced_accuracy_after == cal.balanced_accuracy_before == 1.0


def test_one_label_missing_gives_no_calibration() -> None:
    assert best_margin_shift([margin_histogram([0.3, -0.2], [1, 1])]) is None
    assert best_margin_shift([]) is None


def test_bins_are_closed_on_the_right_and_open_at_both_ends() -> None:
    counts = margin_histogram([0.0, 1e-9, -1e9, 1e9], [0, 0, 1, 1])
    zero = MARGIN_EDGES.index(0.0)
    assert counts[0][zero] == 1
    assert counts[0][zero + 1] == 1
    assert counts[1][0] == 1
    assert counts[1][NUM_BINS - 1] == 1
    assert list(MARGIN_EDGES) == sorted(MARGIN_EDGES)
    assert MARGIN_EDGES[-1] == -MARGIN_EDGES[0] > 30
    with pytest.raises(ValueError, match="two classes"):
        margin_histogram([0.1], [2])


def test_malformed_histograms_are_refused_by_name() -> None:
    good = margin_histogram([0.1, -0.1], [1, 0])
    check_histogram(good)
    for bad in ([good[0]], [good[0], good[1][:-1]], [good[0], [-1, *good[1][1:]]]):
        with pytest.raises(ValueError, match="margin_histogram"):
            check_histogram(bad)
    sha = "0" * 64
    body = {"adapter_sha256": sha, "num_examples": 2, "loss": 0.5, "margin_histogram": good}
    assert p.GlobalEvaluation.model_validate(body).margin_histogram == good
    with pytest.raises(ValidationError, match="counts 2 rows but num_examples is 3"):
        p.GlobalEvaluation.model_validate(body | {"num_examples": 3})
    with pytest.raises(ValidationError, match="margin_histogram must be 2 rows"):
        p.GlobalEvaluation.model_validate(body | {"margin_histogram": [[1, 1]]})


def test_the_bias_shift_moves_the_margin_and_keeps_the_mean_logit() -> None:
    bias = torch.tensor([0.3, -0.1])
    shifted = shift_head_bias(bias, 0.5)
    assert float(shifted[1] - shifted[0]) == pytest.approx(float(bias[1] - bias[0]) + 0.5)
    assert float(shifted.mean()) == pytest.approx(float(bias.mean()))
    assert bias.tolist() == pytest.approx([0.3, -0.1])  # the input is not modified
    head = {"base_model.model.classifier.weight": [2, 8], "base_model.model.classifier.bias": [2]}
    assert head_bias_key(head) == "base_model.model.classifier.bias"
    assert head_bias_key({"base_model.model.score.bias": [3]}) is None  # three labels
    assert head_bias_key({}) is None
