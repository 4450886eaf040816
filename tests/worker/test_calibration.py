"""The worker's threshold calibration on every strategy's aggregate.

The margin shift measured on the previous adapter must move the offset the server keeps, and
the offset must land in the head bias of every adapter the worker publishes (for every
strategy, with the server optimizer around it), while the clients go on training from the
strategy's own state; it is recorded in the round's metrics, and nothing changes when the
federation turns it off or the head has three labels.
"""

from __future__ import annotations

import pytest
import torch

from fedlora_client.calibration import margin_histogram
from fedlora_client.protocol import LocalTraining, ModelSpec
from tests.worker.conftest import FINGERPRINT, fake_updates, make_ctx
from worker.calibration import calibrate_threshold
from worker.strategies import STRATEGY_NAMES, get_strategy
from worker.strategies.params import resolve_server_optimizer

BIAS = "base_model.model.classifier.bias"


def _two_label_model() -> ModelSpec:
    modules = {"layers.0.q_proj": (24, 16), "layers.0.o_proj": (16, 24)}
    head = {"base_model.model.classifier.weight": [2, 16], BIAS: [2]}
    return ModelSpec(fingerprint=FINGERPRINT, modules=modules, extra_trainable=head)


def _left_of_zero() -> list[list[int]]:
    """Counts from a model that ranks well with every margin below 0 (needs a shift of ~+1)."""
    labels = [0] * 50 + [1] * 50
    margins = [-1.5 + 0.01 * i for i in range(50)] + [-0.9 + 0.01 * i for i in range(50)]
    return margin_histogram(margins, labels)


def _margin(bias: torch.Tensor) -> float:
    return float(bias[1] - bias[0])


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_the_offset_is_published_and_the_clients_train_from_the_strategys_state(
    name: str,
) -> None:
    model = _two_label_model()
    ctx = make_ctx(name, model=model)
    strategy = get_strategy(
        name, ctx.params, device="cpu", server_optimizer=resolve_server_optimizer(name, None)
    )
    state = strategy.init_state(ctx)
    result = strategy.aggregate(state, ctx, fake_updates(strategy.plan(state, ctx)))
    before = result.adapter[BIAS].clone()
    calibrated = calibrate_threshold(result, state, ctx, LocalTraining(), [_left_of_zero()])
    shift = calibrated.metrics["calibration_shift"]
    assert 0.5 < shift < 1.0
    assert calibrated.metrics["calibration_offset"] == shift
    assert calibrated.metrics["calibration_balanced_accuracy_before"] == 0.5
    assert calibrated.metrics["calibration_balanced_accuracy_after"] == 1.0
    assert calibrated.metrics["calibration_examples"] == 100.0
    after = calibrated.adapter[BIAS]
    assert _margin(after) - _margin(before) == pytest.approx(shift)
    assert float(after.mean()) == pytest.approx(float(before.mean()))
    assert torch.equal(result.adapter[BIAS], before)  # the strategy's result is not modified
    # the clients train from the strategy's state, whose head is the uncalibrated one
    nxt = make_ctx(name, model=model, round_number=2)
    for assignment in strategy.plan(calibrated.state, nxt).values():
        assert torch.allclose(assignment.start[BIAS], before)
    # the next round keeps the offset without new counts and adds what it measures to it
    result2 = strategy.aggregate(
        calibrated.state, nxt, fake_updates(strategy.plan(calibrated.state, nxt), seed=5)
    )
    kept = calibrate_threshold(result2, calibrated.state, nxt, LocalTraining(), [])
    assert kept.metrics["calibration_offset"] == shift
    assert "calibration_shift" not in kept.metrics
    assert _margin(kept.adapter[BIAS]) - _margin(result2.adapter[BIAS]) == pytest.approx(shift)
    right_of_zero = margin_histogram([0.2, 0.4, 0.6, 0.8], [0, 0, 1, 1])
    moved = calibrate_threshold(result2, calibrated.state, nxt, LocalTraining(), [right_of_zero])
    assert moved.metrics["calibration_shift"] < -0.3
    assert moved.metrics["calibration_offset"] == pytest.approx(
        shift + moved.metrics["calibration_shift"]
    )
    assert moved.state.meta["calibration_offset"] == moved.metrics["calibration_offset"]


def test_off_or_three_labels_leave_the_aggregate_alone() -> None:
    ctx = make_ctx("fedavg", model=_two_label_model())
    strategy = get_strategy("fedavg", ctx.params, device="cpu")
    state = strategy.init_state(ctx)
    result = strategy.aggregate(state, ctx, fake_updates(strategy.plan(state, ctx)))
    off = LocalTraining(threshold_calibration="none")
    assert calibrate_threshold(result, state, ctx, off, [_left_of_zero()]) is result
    one_label = margin_histogram([0.2, -0.3], [1, 1])
    same = calibrate_threshold(result, state, ctx, LocalTraining(), [one_label])
    assert torch.equal(same.adapter[BIAS], result.adapter[BIAS])
    assert "calibration_offset" not in same.metrics  # nothing measured, nothing recorded
    three = make_ctx("fedavg")  # the conftest model's head has three labels
    start3 = strategy.init_state(three)
    result3 = strategy.aggregate(start3, three, fake_updates(strategy.plan(start3, three)))
    assert (
        calibrate_threshold(result3, start3, three, LocalTraining(), [_left_of_zero()]) is result3
    )
