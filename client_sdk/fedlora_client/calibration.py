"""Federated calibration of a binary classifier's decision threshold (pure Python, no torch).

Under label skew a federation often learns to rank examples well (high ROC AUC) while its
decision threshold sits off the data: every prediction lands on one side and accuracy is the
majority class. Differential privacy makes it worse (the head's logits stay close together, so
a small offset decides everything). The server has no data to set the threshold, but every
client already scores the incoming global model on its own held-out evaluation split. For a
two-class head, each client also reports how the logit margins ``logit[1] - logit[0]`` of its
held-out examples fall into fixed bins (:data:`MARGIN_EDGES`), per true label
(:func:`margin_histogram`). Summed over clients, these counts give the federation's held-out
balanced accuracy at every candidate threshold; the server moves the head's bias by the margin
shift that maximizes it (:func:`best_margin_shift`, :func:`shift_head_bias`).

The counts describe evaluation rows, which are never trained on: like the evaluation's loss
and accuracy they are sent in the clear and are not covered by the DP guarantee of training.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_POSITIVE = tuple(0.005 * 1.12**k for k in range(80))  # 0.005 ... about 38, 12% apart
MARGIN_EDGES: tuple[float, ...] = (*(-x for x in reversed(_POSITIVE)), 0.0, *_POSITIVE)
"""Bin edges of the logit margin: 0, and +-0.005 growing by 12% per edge up to about +-38.
Bin ``j`` counts margins in ``(MARGIN_EDGES[j-1], MARGIN_EDGES[j]]``; the first and last bins
are open. The relative spacing keeps thresholds near 0 as finely resolved as large ones."""
NUM_BINS = len(MARGIN_EDGES) + 1


def margin_histogram(margins: Iterable[float], labels: Iterable[int]) -> list[list[int]]:
    """Counts of ``margins`` per bin of :data:`MARGIN_EDGES`, one row per true label (0, 1)."""
    counts = [[0] * NUM_BINS, [0] * NUM_BINS]
    for margin, label in zip(margins, labels, strict=True):
        if label not in (0, 1):
            raise ValueError(f"label {label!r}: margin histograms are for two classes (0, 1)")
        counts[label][bisect.bisect_left(MARGIN_EDGES, margin)] += 1
    return counts


def check_histogram(counts: Sequence[Sequence[int]]) -> None:
    """Raise ``ValueError`` unless ``counts`` is two rows of :data:`NUM_BINS` counts >= 0."""
    if len(counts) != 2 or any(len(row) != NUM_BINS for row in counts):
        raise ValueError(
            f"margin_histogram must be 2 rows (labels 0 and 1) of {NUM_BINS} counts, one per "
            "bin of fedlora_client.calibration.MARGIN_EDGES"
        )
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for row in counts for c in row):
        raise ValueError("margin_histogram counts must be integers >= 0")


@dataclass(frozen=True)
class Calibration:
    """The shift to add to the margin, and the pooled held-out balanced accuracy (the mean of
    the two labels' recalls) before and after it."""

    shift: float
    balanced_accuracy_before: float
    balanced_accuracy_after: float
    num_examples: int


def best_margin_shift(histograms: Iterable[Sequence[Sequence[int]]]) -> Calibration | None:
    """The margin shift that maximizes the balanced accuracy of the pooled ``histograms``.

    Balanced accuracy (the mean of the per-label recalls) rather than accuracy: the clients'
    held-out rows are a label-skewed sample (each holds out at most a fixed number of rows, so
    a large organization's labels are under-represented), and balanced error is also what
    logit adjustment trains for. Predicting label 1 when ``margin + shift > 0`` is predicting
    it when ``margin > -shift``, so the candidates are ``-edge`` for every edge (accuracy
    within a bin is not known). Ties go to the smallest shift, so a model whose threshold is
    already right is left alone. None when the clients reported no rows of one of the labels.
    """
    totals = [[0] * NUM_BINS, [0] * NUM_BINS]
    for counts in histograms:
        check_histogram(counts)
        for label in (0, 1):
            for j, c in enumerate(counts[label]):
                totals[label][j] += c
    n0, n1 = sum(totals[0]), sum(totals[1])
    if n0 == 0 or n1 == 0:
        return None
    # threshold at edge j: label-0 rows in bins <= j are right, label-1 rows in bins > j too;
    # compared as n0 * n1 * balanced accuracy * 2, in integers (exact ties)
    below0, above1, scores = 0, n1, []
    for j in range(len(MARGIN_EDGES)):
        below0 += totals[0][j]
        above1 -= totals[1][j]
        scores.append(below0 * n1 + above1 * n0)
    best = max(range(len(scores)), key=lambda j: (scores[j], -abs(MARGIN_EDGES[j])))
    zero = MARGIN_EDGES.index(0.0)
    return Calibration(
        shift=-MARGIN_EDGES[best],
        balanced_accuracy_before=scores[zero] / (2 * n0 * n1),
        balanced_accuracy_after=scores[best] / (2 * n0 * n1),
        num_examples=n0 + n1,
    )


def head_bias_key(extra_trainable: Mapping[str, Sequence[int]]) -> str | None:
    """The two-class head's bias among a model's ``extra_trainable`` tensors, else None."""
    keys = [k for k, shape in extra_trainable.items() if k.endswith(".bias") and list(shape) == [2]]
    return keys[0] if len(keys) == 1 else None


def shift_head_bias(bias: Any, shift: float) -> Any:
    """``bias`` (a 2-vector) with the margin ``bias[1] - bias[0]`` moved by ``shift``.

    Half goes to each logit, so the mean logit (and the softmax of a balanced input) is kept."""
    out = bias.clone()
    out[0] -= shift / 2
    out[1] += shift / 2
    return out
