"""Plain, torch-free values :mod:`api.services.rounds` hands to (and takes from) the worker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fedlora_client.protocol import DPSettings, LocalTraining, ModelSpec, TaskType, TrainingPlan


@dataclass(frozen=True)
class Member:
    """An eligible member: active, fingerprint matches, epsilon spent below the budget."""

    membership_id: uuid.UUID
    client_id: uuid.UUID
    rank_budget: int
    num_examples: int | None
    epsilon_spent: float
    hardware: dict[str, Any]


@dataclass(frozen=True)
class PreviousAdapter:
    """The latest published global adapter (what the next round starts from)."""

    round_id: uuid.UUID
    round_number: int
    adapter_sha256: str
    adapter_config_sha256: str
    state_sha256: str | None
    state_meta: dict[str, Any]


@dataclass(frozen=True)
class FederationConfig:
    federation_id: uuid.UUID
    name: str
    strategy: str
    strategy_params: dict[str, Any]
    server_optimizer: dict[str, Any]
    task_type: TaskType
    base_model_id: str
    model: ModelSpec
    target_modules: list[str]
    global_rank: int
    num_rounds: int
    clients_per_round: int
    min_clients: int
    round_deadline_seconds: int
    training: LocalTraining
    dp: DPSettings
    robust_aggregation: dict[str, Any] = field(default_factory=dict)
    """The stored robust-aggregation settings (``{}``: the defaults)."""


@dataclass(frozen=True)
class RoundToOpen:
    """Everything the worker needs to plan round ``number``.

    ``selected`` are the participants (a seeded sample of ``eligible`` of size
    ``clients_per_round``); the worker plans exactly these and passes the plans, keyed by
    client id, to ``open_round`` (or to ``publish_round(next_plans=...)``).
    """

    federation: FederationConfig
    number: int
    completed_rounds: int
    eligible: list[Member]
    selected: list[Member]
    previous: PreviousAdapter | None
    seed: int


@dataclass(frozen=True)
class UpdateInput:
    update_id: uuid.UUID
    task_id: uuid.UUID
    client_id: uuid.UUID
    sha256: str
    size: int
    shapes: dict[str, list[int]]
    num_examples: int
    epsilon: float
    metrics: dict[str, float]
    plan: TrainingPlan
    max_examples: int | None = None
    """The membership's cap on ``num_examples`` as an aggregation weight (None: none)."""


@dataclass(frozen=True)
class AggregationInputs:
    federation: FederationConfig
    round_id: uuid.UUID
    round_number: int
    updates: list[UpdateInput]
    previous: PreviousAdapter | None
    margin_histograms: list[list[list[int]]] = field(default_factory=list)
    """The clients' held-out margin counts of ``previous`` (threshold calibration)."""
    min_updates: int = 1
    """The fewest usable updates the round needs to publish (the round's ``min_updates``)."""


@dataclass(frozen=True)
class JobMetrics:
    duration_seconds: float | None = None
    device: str | None = None
    peak_memory_bytes: int | None = None


@dataclass
class SweepResult:
    leases_reoffered: int = 0
    leases_dropped: int = 0
    rounds_aggregating: list[uuid.UUID] = field(default_factory=list)
    rounds_failed: list[uuid.UUID] = field(default_factory=list)
    aggregations_reenqueued: list[uuid.UUID] = field(default_factory=list)
    opens_reenqueued: list[uuid.UUID] = field(default_factory=list)
