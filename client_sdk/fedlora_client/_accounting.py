"""Privacy accounting with Google's dp-accounting library (never a formula of our own).

* Sample-level DP-SGD: each local step is a Poisson-subsampled Gaussian mechanism
  (``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``) with ``q = batch_size / N``; a task is
  ``steps`` of them, composed.
* Client-level: each upload is one Gaussian mechanism on the clipped update
  (``GaussianDpEvent(sigma)``); participation across rounds composes. No amplification by the
  server's client sampling is claimed (the client cannot verify it).

Epsilon is reported by the RDP accountant (default; conservative) or the PLD accountant
(tighter), both under the add-or-remove-one neighbouring relation of the protected unit.
:class:`PrivacyLedger` keeps the events a client has released per federation on local disk, so
the budget check survives restarts and does not depend on the server's bookkeeping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp

AccountantName = Literal["rdp", "pld"]


def _accountant(name: AccountantName) -> dp_accounting.PrivacyAccountant:
    if name == "rdp":
        return rdp.RdpAccountant()
    if name == "pld":
        return pld.PLDAccountant()
    raise ValueError(f"unknown accountant {name!r}: use 'rdp' or 'pld'")


def sample_level_event(noise_multiplier: float, sampling_rate: float, steps: int) -> object:
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism (DP-SGD)."""
    step = dp_accounting.PoissonSampledDpEvent(
        min(1.0, sampling_rate), dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    return dp_accounting.SelfComposedDpEvent(step, steps)


def client_level_event(noise_multiplier: float, rounds: int) -> object:
    """``rounds`` compositions of the Gaussian mechanism on a clipped update."""
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), rounds
    )


def epsilon_of(events: list[object], delta: float, accountant: AccountantName = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (0 for no events)."""
    if not events:
        return 0.0
    acc = _accountant(accountant)
    acc.compose(dp_accounting.ComposedDpEvent(list(events)))
    value = float(acc.get_epsilon(delta))
    return value if math.isfinite(value) else math.inf


def calibrate_noise(
    make_event: Callable[[float], object],
    target_epsilon: float,
    delta: float,
    accountant: AccountantName = "rdp",
) -> float:
    """The smallest noise multiplier whose event reaches ``target_epsilon`` at ``delta``."""
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            make_event,
            target_epsilon,
            delta,
            dp_accounting.mechanism_calibration.ExplicitBracketInterval(1e-3, 1e3),
        )
    )


@dataclass(frozen=True)
class LedgerEntry:
    """One released task: the mechanism's parameters, enough to rebuild its DpEvent."""

    task_id: str
    mode: str
    noise_multiplier: float
    sampling_rate: float
    steps: int

    def event(self) -> object:
        if self.mode == "sample":
            return sample_level_event(self.noise_multiplier, self.sampling_rate, self.steps)
        return client_level_event(self.noise_multiplier, self.steps)


class PrivacyLedger:
    """Per-federation record of released tasks, stored as JSON at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def entries(self, federation_id: str) -> list[LedgerEntry]:
        if not self.path.is_file():
            return []
        data = json.loads(self.path.read_text(encoding="utf-8"))
        return [LedgerEntry(**item) for item in data.get(federation_id, [])]

    def spent(self, federation_id: str, delta: float, accountant: AccountantName = "rdp") -> float:
        return epsilon_of([e.event() for e in self.entries(federation_id)], delta, accountant)

    def with_entry(
        self,
        federation_id: str,
        entry: LedgerEntry,
        delta: float,
        accountant: AccountantName = "rdp",
    ) -> tuple[float, float]:
        """(epsilon spent before, epsilon after) if ``entry`` were released."""
        entries = [e for e in self.entries(federation_id) if e.task_id != entry.task_id]
        before = epsilon_of([e.event() for e in entries], delta, accountant)
        after = epsilon_of([e.event() for e in [*entries, entry]], delta, accountant)
        return before, after

    def record(self, federation_id: str, entry: LedgerEntry) -> None:
        """Add ``entry`` (idempotent by task id), writing the file atomically."""
        data: dict[str, list[dict[str, object]]] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text(encoding="utf-8"))
        items = [i for i in data.get(federation_id, []) if i.get("task_id") != entry.task_id]
        data[federation_id] = [*items, asdict(entry)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(self.path)
