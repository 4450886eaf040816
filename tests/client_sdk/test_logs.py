"""The RDP accountant's expected per-order warnings are dropped; its other records are not."""

from __future__ import annotations

import logging

import pytest

from fedlora_client._accounting import calibrate_noise, sample_level_event
from fedlora_client._logs import quiet_dp_accounting


def _calibrate() -> float:
    # the demo's DP-SGD: batch 16 of ~900 examples, 60 steps, epsilon 8 at delta 1e-5
    return calibrate_noise(lambda s: sample_level_event(s, 16 / 900, 60), 8.0, 1e-5)


def test_convergence_warnings_are_dropped_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    quiet_dp_accounting()
    sigma = _calibrate()
    assert 0.3 < sigma < 1.0
    assert not [r for r in caplog.records if r.name == "absl"]
    logging.getLogger("absl").warning("a different absl warning")
    assert [r.getMessage() for r in caplog.records] == ["a different absl warning"]


def test_without_the_filter_the_accountant_warns(caplog: pytest.LogCaptureFixture) -> None:
    """The case the filter exists for (if dp-accounting stops warning, it can go)."""
    absl = logging.getLogger("absl")
    saved = absl.filters[:]
    absl.filters.clear()
    try:
        caplog.set_level(logging.WARNING)
        _calibrate()
    finally:
        absl.filters[:] = saved
    assert any("failed to converge" in r.getMessage() for r in caplog.records)
