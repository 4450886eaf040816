"""Federations and memberships: create, change, and the start/pause/resume/cancel lifecycle."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queue
from api.db import (
    Admin,
    Client,
    Federation,
    FederationStatus,
    Membership,
    PrivacyLedgerEntry,
    Round,
    RoundKind,
    RoundState,
    Task,
    TaskStatus,
    utcnow,
)
from api.errors import ConflictError, InvalidInputError, NotFoundError
from api.schemas.federations import (
    FederationCreate,
    FederationUpdate,
    MembershipCreate,
    MembershipUpdate,
    check_strategy,
)
from api.services.common import audit, get_or_404
from fedlora_client.protocol import DPSettings, LocalTraining
from worker.celery_app import OPEN_ROUND
from worker.strategies.params import resolve_robust, resolve_server_optimizer, resolve_training

S = FederationStatus
DRAFT_ONLY = frozenset(FederationUpdate.model_fields) - {
    "name",
    "description",
    "robust_aggregation",
}


def get_federation(*, session: Session, federation_id: uuid.UUID) -> Federation:
    return get_or_404(session=session, model=Federation, object_id=federation_id, kind="federation")


def create_federation(*, session: Session, admin: Admin, body: FederationCreate) -> Federation:
    fed = Federation(
        name=body.name,
        description=body.description,
        base_model_id=body.base_model_id,
        task_type=body.task_type.value,
        model_spec=body.model.model_dump(mode="json"),
        target_modules=list(body.target_modules),
        strategy=body.strategy,
        strategy_params=body.strategy_params,
        server_optimizer=resolve_server_optimizer(body.strategy, body.server_optimizer).model_dump(
            mode="json"
        ),
        robust_aggregation=body.robust_aggregation.model_dump(mode="json"),
        global_rank=body.global_rank,
        num_rounds=body.num_rounds,
        clients_per_round=body.clients_per_round,
        min_clients=body.min_clients,
        round_deadline_seconds=body.round_deadline_seconds,
        local_training=body.training.model_dump(mode="json"),
        dp=body.dp.model_dump(mode="json"),
        status=S.DRAFT,
    )
    session.add(fed)
    audit(session=session, admin=admin, action="federation.create", obj=fed)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError(
            f"a federation named {body.name!r} exists; choose another name"
        ) from None
    return fed


def update_federation(
    *, session: Session, admin: Admin, federation_id: uuid.UUID, body: FederationUpdate
) -> Federation:
    fed = get_federation(session=session, federation_id=federation_id)
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude_none=True, mode="json")
    locked = sorted(DRAFT_ONLY & changes.keys())
    if locked and fed.status != S.DRAFT:
        raise ConflictError(
            f"{', '.join(locked)} can change only while the federation is a draft "
            f"(it is {fed.status}); create a new federation instead"
        )
    if "training" in changes:
        training = LocalTraining.model_validate(changes.pop("training"))
        changes["local_training"] = resolve_training(fed.strategy, training).model_dump(mode="json")
    if "dp" in changes:
        changes["dp"] = DPSettings.model_validate(changes["dp"]).model_dump(mode="json")
    if "strategy_params" in changes:
        try:
            changes["strategy_params"] = check_strategy(fed.strategy, changes["strategy_params"])
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
    if "server_optimizer" in changes:
        try:
            changes["server_optimizer"] = resolve_server_optimizer(
                fed.strategy, changes["server_optimizer"]
            ).model_dump(mode="json")
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
    if "robust_aggregation" in changes:
        try:
            changes["robust_aggregation"] = resolve_robust(
                fed.strategy, changes["robust_aggregation"]
            ).model_dump(mode="json")
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
    per_round = changes.get("clients_per_round", fed.clients_per_round)
    minimum = changes.get("min_clients", fed.min_clients)
    if minimum > per_round:
        raise InvalidInputError(
            f"min_clients ({minimum}) exceeds clients_per_round ({per_round}); lower min_clients"
        )
    for key, value in changes.items():
        setattr(fed, key, value)
    audit(session=session, admin=admin, action="federation.update", obj=fed, details=changes)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError("a federation with that name exists; choose another name") from None
    return fed


def delete_federation(*, session: Session, admin: Admin, federation_id: uuid.UUID) -> None:
    fed = get_federation(session=session, federation_id=federation_id)
    if fed.status in (S.RUNNING, S.PAUSED):
        raise ConflictError(f"federation is {fed.status}: cancel it before deleting it")
    audit(session=session, admin=admin, action="federation.delete", obj=fed)
    session.delete(fed)
    session.commit()


def _transition(
    *,
    session: Session,
    admin: Admin,
    federation_id: uuid.UUID,
    allowed: tuple[str, ...],
    to: str,
    action: str,
) -> Federation:
    fed = get_federation(session=session, federation_id=federation_id)
    if fed.status not in allowed:
        raise ConflictError(
            f"cannot {action} a federation that is {fed.status} "
            f"(allowed from: {', '.join(allowed)})"
        )
    moved = session.execute(
        sa.update(Federation)
        .where(Federation.id == fed.id, Federation.status == fed.status)
        .values(status=to, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ConflictError(f"the federation changed state concurrently; retry {action}")
    session.refresh(fed)
    audit(session=session, admin=admin, action=f"federation.{action}", obj=fed)
    return fed


def start_federation(
    *, session: Session, admin: Admin, federation_id: uuid.UUID, enqueue: queue.Enqueuer | None
) -> Federation:
    fed = get_federation(session=session, federation_id=federation_id)
    members = session.scalar(
        sa.select(sa.func.count())
        .select_from(Membership)
        .where(Membership.federation_id == fed.id, Membership.active.is_(True))
    )
    if fed.status == S.DRAFT and int(members or 0) < fed.min_clients:
        raise ConflictError(
            f"the federation has {members} active members but min_clients is {fed.min_clients}; "
            "add memberships first"
        )
    fed = _transition(
        session=session,
        admin=admin,
        federation_id=federation_id,
        allowed=(S.DRAFT,),
        to=S.RUNNING,
        action="start",
    )
    fed.started_at = fed.open_requested_at = utcnow()  # the sweeper re-sends a lost request
    queue.defer(session, OPEN_ROUND, str(fed.id))
    queue.commit_and_flush(session, enqueue)
    return fed


def pause_federation(*, session: Session, admin: Admin, federation_id: uuid.UUID) -> Federation:
    fed = _transition(
        session=session,
        admin=admin,
        federation_id=federation_id,
        allowed=(S.RUNNING,),
        to=S.PAUSED,
        action="pause",
    )
    session.commit()
    return fed


def resume_federation(
    *, session: Session, admin: Admin, federation_id: uuid.UUID, enqueue: queue.Enqueuer | None
) -> Federation:
    fed = _transition(
        session=session,
        admin=admin,
        federation_id=federation_id,
        allowed=(S.PAUSED,),
        to=S.RUNNING,
        action="resume",
    )
    fed.open_requested_at = utcnow()
    queue.defer(session, OPEN_ROUND, str(fed.id))  # a no-op in the worker if a round is open
    queue.commit_and_flush(session, enqueue)
    return fed


def cancel_federation(*, session: Session, admin: Admin, federation_id: uuid.UUID) -> Federation:
    fed = _transition(
        session=session,
        admin=admin,
        federation_id=federation_id,
        allowed=(S.DRAFT, S.RUNNING, S.PAUSED),
        to=S.CANCELLED,
        action="cancel",
    )
    now = utcnow()
    fed.finished_at = now
    session.execute(
        sa.update(Round)
        .where(Round.federation_id == fed.id, Round.state.in_([RoundState.OPEN]))
        .values(state=RoundState.FAILED, failed_at=now, failure_reason="federation cancelled")
        .execution_options(synchronize_session=False)
    )
    session.execute(
        sa.update(Task)
        .where(
            Task.federation_id == fed.id, Task.status.in_([TaskStatus.PENDING, TaskStatus.LEASED])
        )
        .values(status=TaskStatus.DROPPED, lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return fed


# ------------------------------------------------------------------ memberships


def epsilon_spent(*, session: Session, federation_id: uuid.UUID) -> dict[uuid.UUID, float]:
    """Epsilon each client has spent in a federation, from the privacy ledger."""
    rows = session.execute(
        sa.select(PrivacyLedgerEntry.client_id, sa.func.sum(PrivacyLedgerEntry.epsilon))
        .where(PrivacyLedgerEntry.federation_id == federation_id)
        .group_by(PrivacyLedgerEntry.client_id)
    )
    return {cid: float(total or 0.0) for cid, total in rows}


def round_counts(
    *, session: Session, federation_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    """Per federation, its training rounds by state: ``{"completed": n, "failed": m, ...}``.

    A failed round is replaced by a new one, so a round's number can exceed ``num_rounds``;
    these counts are what progress means. The evaluation pass is not a training round.
    """
    out: dict[uuid.UUID, dict[str, int]] = {fid: {} for fid in federation_ids}
    rows = session.execute(
        sa.select(Round.federation_id, Round.state, sa.func.count())
        .where(Round.federation_id.in_(federation_ids), Round.kind == RoundKind.TRAINING)
        .group_by(Round.federation_id, Round.state)
    )
    for fid, state, n in rows:
        out[fid][str(state)] = int(n)
    return out


def highest_trained_rank(fed: Federation) -> int | None:
    """The highest LoRA rank a member trains under ``fed``'s strategy; None: its full budget.

    Every strategy plans ``min(rank budget, rank of its global state)``: the federation's
    global rank, or FSLoRA's own ``global_rank`` parameter when set. FLoRA is the exception by
    design: each client trains a fresh LoRA at its whole budget and the server stacks them, so
    its budgets are not capped by the global rank.
    """
    if fed.strategy == "flora":
        return None
    if fed.strategy == "fslora":
        return int(fed.strategy_params.get("global_rank") or fed.global_rank)
    return fed.global_rank


def trained_rank(fed: Federation, rank_budget: int) -> tuple[int, str | None]:
    """(the rank a member with ``rank_budget`` trains, a warning when that is less).

    A budget says what the client can afford; a budget above the global rank is accepted (a
    federation may run below what its members could train, as the benchmark's FedAvg at the
    smallest rank does) but never silently: the membership shows the rank it really trains.
    """
    cap = highest_trained_rank(fed)
    if cap is None or rank_budget <= cap:
        return rank_budget, None
    return cap, (
        f"rank_budget {rank_budget} is above the global rank {cap}: strategy {fed.strategy!r} "
        f"trains this client at rank {cap}. Lower the budget to {cap} or raise the global rank "
        "while the federation is a draft to use it (FLoRA alone trains budgets above it)"
    )


def add_membership(
    *, session: Session, admin: Admin, federation_id: uuid.UUID, body: MembershipCreate
) -> Membership:
    fed = get_federation(session=session, federation_id=federation_id)
    if fed.status in (S.COMPLETED, S.CANCELLED):
        raise ConflictError(f"federation is {fed.status}: it takes no new members")
    client = get_or_404(session=session, model=Client, object_id=body.client_id, kind="client")
    if client.revoked_at is not None:
        raise ConflictError("client is revoked: rotate its key before adding it to a federation")
    row = Membership(
        federation_id=fed.id,
        client_id=client.id,
        rank_budget=body.rank_budget,
        max_examples=body.max_examples,
    )
    session.add(row)
    audit(
        session=session,
        admin=admin,
        action="membership.create",
        obj=row,
        details={"federation_id": str(fed.id), "client_id": str(client.id)},
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError("that client is already a member of this federation") from None
    return row


def _membership(
    *, session: Session, federation_id: uuid.UUID, membership_id: uuid.UUID
) -> Membership:
    row = get_or_404(session=session, model=Membership, object_id=membership_id, kind="membership")
    if row.federation_id != federation_id:
        raise NotFoundError.of("membership", membership_id)
    return row


def update_membership(
    *,
    session: Session,
    admin: Admin,
    federation_id: uuid.UUID,
    membership_id: uuid.UUID,
    body: MembershipUpdate,
) -> Membership:
    row = _membership(session=session, federation_id=federation_id, membership_id=membership_id)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    for key, value in changes.items():
        setattr(row, key, value)
    audit(session=session, admin=admin, action="membership.update", obj=row, details=changes)
    session.commit()
    return row


def delete_membership(
    *, session: Session, admin: Admin, federation_id: uuid.UUID, membership_id: uuid.UUID
) -> None:
    row = _membership(session=session, federation_id=federation_id, membership_id=membership_id)
    audit(session=session, admin=admin, action="membership.delete", obj=row)
    session.delete(row)
    session.commit()
