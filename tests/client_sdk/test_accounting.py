"""The accountant reproduces known values and the library itself; calibration inverts it."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedlora_client import protocol as p
from fedlora_client._accounting import (
    LedgerEntry,
    PrivacyLedger,
    calibrate_noise,
    client_level_event,
    epsilon_of,
    sample_level_event,
)
from fedlora_client._privacy import resolve_noise_multiplier


def test_dp_sgd_known_values_rdp_and_pld() -> None:
    event = sample_level_event(1.5, 0.04, 2250)
    assert epsilon_of([event], 1e-5, "rdp") == pytest.approx(7.33, abs=0.01)
    assert epsilon_of([event], 1e-5, "pld") == pytest.approx(6.77, abs=0.01)


def test_client_level_matches_the_library_directly() -> None:
    sigma, rounds, delta = 2.0, 20, 1e-6
    ours = epsilon_of([client_level_event(sigma, rounds)], delta, "rdp")
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(sigma), rounds)
    assert ours == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
    pld_acc = pld.PLDAccountant()
    pld_acc.compose(dp_accounting.GaussianDpEvent(sigma), rounds)
    assert epsilon_of([client_level_event(sigma, rounds)], delta, "pld") == pytest.approx(
        pld_acc.get_epsilon(delta), rel=1e-9
    )
    assert 0 < pld_acc.get_epsilon(delta) < ours  # PLD is the tighter of the two


def test_no_noise_is_infinite_epsilon_and_no_events_is_zero() -> None:
    assert epsilon_of([], 1e-5) == 0.0
    assert epsilon_of([client_level_event(0.0, 1)], 1e-5) == float("inf")


@pytest.mark.parametrize("mode", [p.DPMode.SAMPLE, p.DPMode.CLIENT])
def test_calibrated_sigma_reaches_the_target_over_planned_rounds(mode: p.DPMode) -> None:
    dp = p.DPPlan(mode=mode, target_epsilon=4.0, planned_rounds=10)
    sigma = resolve_noise_multiplier(dp, sampling_rate=0.05, steps=20)
    if mode is p.DPMode.SAMPLE:
        event = sample_level_event(sigma, 0.05, 20 * 10)
    else:
        event = client_level_event(sigma, 10)
    assert epsilon_of([event], dp.delta) == pytest.approx(4.0, abs=0.02)
    assert epsilon_of([event], dp.delta) <= 4.0 + 1e-6 or sigma > 0


def test_calibration_inverts_the_known_value() -> None:
    sigma = calibrate_noise(lambda s: sample_level_event(s, 0.04, 2250), 7.3293, 1e-5)
    assert sigma == pytest.approx(1.5, abs=0.005)


def test_ledger_composes_and_is_idempotent_by_task(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    entry = LedgerEntry("t1", "client", 2.0, 1.0, 1)
    before, after = ledger.with_entry("f1", entry, 1e-5)
    assert before == 0.0
    assert after == pytest.approx(epsilon_of([client_level_event(2.0, 1)], 1e-5))
    ledger.record("f1", entry)
    ledger.record("f1", entry)  # the same task twice counts once
    ledger.record("f1", LedgerEntry("t2", "client", 2.0, 1.0, 1))
    assert ledger.spent("f1", 1e-5) == pytest.approx(epsilon_of([client_level_event(2.0, 2)], 1e-5))
    assert ledger.spent("other", 1e-5) == 0.0
