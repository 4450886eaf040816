"""Read-side helpers of the round lifecycle: configs, eligibility, previous adapter, inputs."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api.db import (
    AdapterEvaluation,
    Client,
    Federation,
    GlobalAdapter,
    Membership,
    Round,
    Task,
    Update,
)
from api.services.federations import epsilon_spent
from api.services.round_types import (
    AggregationInputs,
    FederationConfig,
    Member,
    PreviousAdapter,
    UpdateInput,
)
from fedlora_client.protocol import DPSettings, LocalTraining, ModelSpec, TaskType, TrainingPlan


def federation_config(fed: Federation) -> FederationConfig:
    return FederationConfig(
        federation_id=fed.id,
        name=fed.name,
        strategy=fed.strategy,
        strategy_params=dict(fed.strategy_params),
        server_optimizer=dict(fed.server_optimizer),
        task_type=TaskType(fed.task_type),
        base_model_id=fed.base_model_id,
        model=ModelSpec.model_validate(fed.model_spec),
        target_modules=list(fed.target_modules),
        global_rank=fed.global_rank,
        num_rounds=fed.num_rounds,
        clients_per_round=fed.clients_per_round,
        min_clients=fed.min_clients,
        round_deadline_seconds=fed.round_deadline_seconds,
        training=LocalTraining.model_validate(fed.local_training),
        dp=DPSettings.model_validate(fed.dp),
        robust_aggregation=dict(fed.robust_aggregation or {}),
    )


def previous_adapter(*, session: Session, federation_id: uuid.UUID) -> PreviousAdapter | None:
    row = session.scalar(
        sa.select(GlobalAdapter)
        .where(GlobalAdapter.federation_id == federation_id)
        .order_by(GlobalAdapter.round_number.desc())
        .limit(1)
    )
    if row is None:
        return None
    return PreviousAdapter(
        round_id=row.round_id,
        round_number=row.round_number,
        adapter_sha256=row.adapter_sha256,
        adapter_config_sha256=row.adapter_config_sha256,
        state_sha256=row.state_sha256,
        state_meta=dict(row.state_meta),
    )


def eligible_members(
    *, session: Session, federation: Federation, within_budget: bool = True
) -> list[Member]:
    """Active, unrevoked members whose fingerprint matches and whose epsilon is under budget
    (``within_budget=False``: whatever they spent, e.g. to evaluate, which spends none)."""
    dp = DPSettings.model_validate(federation.dp)
    budget = float("inf") if dp.mode == "none" or not within_budget else dp.epsilon_budget
    spent = epsilon_spent(session=session, federation_id=federation.id)
    rows = session.execute(
        sa.select(Membership, Client)
        .join(Client, Client.id == Membership.client_id)
        .where(
            Membership.federation_id == federation.id,
            Membership.active.is_(True),
            Membership.fingerprint == federation.model_spec["fingerprint"],
            Client.revoked_at.is_(None),
        )
        .order_by(Membership.client_id)
    )
    members = []
    for membership, client in rows:
        eps = spent.get(membership.client_id, 0.0)
        if eps >= budget:
            continue
        members.append(
            Member(
                membership_id=membership.id,
                client_id=membership.client_id,
                rank_budget=membership.rank_budget,
                num_examples=membership.num_examples,
                epsilon_spent=eps,
                hardware=dict(client.hardware),
            )
        )
    return members


def build_aggregation_inputs(*, session: Session, rnd: Round) -> AggregationInputs:
    fed = session.get_one(Federation, rnd.federation_id)
    rows = session.execute(
        sa.select(Update, Task, Membership.max_examples)
        .join(Task, Task.id == Update.task_id)
        .outerjoin(
            Membership,
            (Membership.federation_id == Update.federation_id)
            & (Membership.client_id == Update.client_id),
        )
        .where(Update.round_id == rnd.id)
        .order_by(Update.client_id)
    )
    updates = [
        UpdateInput(
            update_id=u.id,
            task_id=u.task_id,
            client_id=u.client_id,
            sha256=u.sha256,
            size=u.size,
            shapes={k: list(v) for k, v in u.shapes.items()},
            num_examples=u.num_examples,
            epsilon=u.epsilon,
            metrics={k: float(v) for k, v in u.metrics.items()},
            plan=TrainingPlan.model_validate(t.plan),
            max_examples=max_examples,
        )
        for u, t, max_examples in rows
    ]
    previous = previous_adapter(session=session, federation_id=fed.id)
    return AggregationInputs(
        federation=federation_config(fed),
        round_id=rnd.id,
        round_number=rnd.number,
        updates=updates,
        previous=previous,
        margin_histograms=[] if previous is None else margin_histograms(session, previous),
        min_updates=rnd.min_updates,
    )


def margin_histograms(session: Session, previous: PreviousAdapter) -> list[list[list[int]]]:
    """The held-out margin counts the clients reported for the adapter ``previous`` (one per
    client, the latest report of each; in client order, so a rerun sees the same list)."""
    rows = session.scalars(
        sa.select(AdapterEvaluation.margin_histogram)
        .join(GlobalAdapter, GlobalAdapter.id == AdapterEvaluation.adapter_id)
        .where(
            GlobalAdapter.round_id == previous.round_id,
            AdapterEvaluation.margin_histogram.is_not(None),
        )
        .order_by(AdapterEvaluation.client_id)
    )
    return [list(r) for r in rows if r is not None]
