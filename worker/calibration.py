"""The federated threshold calibration, applied to a round's aggregate before it is published.

Round ``t``'s clients scored round ``t-1``'s published adapter on their held-out rows and sent
the margin counts (``fedlora_client.calibration``). The margin shift that maximizes their
pooled balanced accuracy is added to an offset the server keeps (``calibration_offset`` in the
state's meta), and every published adapter carries the strategy's head bias moved by that
offset. The clients keep training from the strategy's own state, without the offset: a shift
written into the state they train from is pulled back by their next round of training (the
threshold then swings from round to round), while an offset on the published adapter only
tracks where the training's threshold sits. Measurements: docs/benchmarks.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fedlora_client.calibration import best_margin_shift, head_bias_key, shift_head_bias
from fedlora_client.protocol import LocalTraining, TaskType
from worker.strategies.base import AggregationResult, PlanContext, ServerState

log = logging.getLogger(__name__)

OFFSET = "calibration_offset"
"""The server state's meta key of the margin offset the published adapters carry."""


def calibrate_threshold(
    result: AggregationResult,
    previous: ServerState,
    ctx: PlanContext,
    training: LocalTraining,
    histograms: Sequence[Sequence[Sequence[int]]],
) -> AggregationResult:
    """``result`` with the calibrated threshold on its published two-label head.

    ``previous`` is the state the round started from (its meta holds the offset the previous
    adapter was published with, which the clients' counts include). Unchanged when the
    federation turned calibration off or the task is not a two-label classifier with a
    trained head bias. Without counts from both labels the offset is kept as it was. The
    round's metrics record the offset, this round's change of it, and the pooled held-out
    balanced accuracy of the previous adapter before and after that change."""
    if training.threshold_calibration != "federated" or ctx.task_type is not TaskType.SEQ_CLS:
        return result
    key = head_bias_key(ctx.model.extra_trainable)
    if key is None or key not in result.adapter:
        return result
    offset = float(previous.meta.get(OFFSET, 0.0))
    cal = best_margin_shift(histograms) if histograms else None
    metrics = dict(result.metrics)
    if cal is not None:
        offset += cal.shift
        metrics |= {
            "calibration_shift": cal.shift,
            "calibration_balanced_accuracy_before": cal.balanced_accuracy_before,
            "calibration_balanced_accuracy_after": cal.balanced_accuracy_after,
            "calibration_examples": float(cal.num_examples),
        }
        log.info(
            "round %d: threshold calibration moves the margin offset by %+.4f to %+.4f "
            "(held-out balanced accuracy %.3f -> %.3f over %d rows)",
            ctx.round_number, cal.shift, offset, cal.balanced_accuracy_before,
            cal.balanced_accuracy_after, cal.num_examples,
        )  # fmt: skip
    if cal is not None or offset != 0.0:  # round 1 (nothing measured yet) records nothing
        metrics["calibration_offset"] = offset
    adapter = dict(result.adapter)
    if offset != 0.0:
        adapter[key] = shift_head_bias(adapter[key], offset)
    state = ServerState(tensors=result.state.tensors, meta=result.state.meta | {OFFSET: offset})
    return AggregationResult(state, adapter, result.lora, metrics)
