"""What a client sees and does: its memberships, leasing its next task, its task, reports.

Every lookup is scoped to the calling client: a task or membership of anyone else is "not
found". Leasing is race-free: on Postgres the candidate row is taken with
``SELECT ... FOR UPDATE SKIP LOCKED``; on every database the lease itself is a conditional
``UPDATE ... WHERE <lease is free>`` whose rowcount decides who won.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api import queue
from api.db import (
    Client,
    Federation,
    FederationStatus,
    Membership,
    Round,
    RoundKind,
    RoundState,
    Task,
    TaskStatus,
    utcnow,
)
from api.errors import ConflictError, InvalidInputError, NotFoundError
from api.services.federations import epsilon_spent
from api.services.round_steps import ACTIVE_ROUND_STATES, request_open
from fedlora_client.protocol import (
    DPSettings,
    MembershipInfo,
    MembershipReport,
    ModelSpec,
    TaskAssignment,
    TaskReport,
    TaskType,
    TrainingPlan,
)


def _info(session: Session, fed: Federation, m: Membership) -> MembershipInfo:
    spent = epsilon_spent(session=session, federation_id=fed.id).get(m.client_id, 0.0)
    return MembershipInfo(
        federation_id=str(fed.id),
        federation_name=fed.name,
        status=fed.status,
        base_model_id=fed.base_model_id,
        task_type=TaskType(fed.task_type),
        model=ModelSpec.model_validate(fed.model_spec),
        rank_budget=m.rank_budget,
        epsilon_budget=DPSettings.model_validate(fed.dp).epsilon_budget,
        epsilon_spent=spent,
        fingerprint_reported=m.fingerprint,
    )


def list_memberships(*, session: Session, client: Client) -> list[MembershipInfo]:
    rows = session.execute(
        sa.select(Federation, Membership)
        .join(Membership, Membership.federation_id == Federation.id)
        .where(Membership.client_id == client.id, Membership.active.is_(True))
        .order_by(Federation.created_at)
    )
    return [_info(session, fed, m) for fed, m in rows]


def report_fingerprint(
    *,
    session: Session,
    client: Client,
    federation_id: uuid.UUID,
    body: MembershipReport,
    enqueue: queue.Enqueuer | None,
) -> MembershipInfo:
    """Record the client's base-model fingerprint; a match makes it eligible for rounds."""
    row = session.execute(
        sa.select(Federation, Membership)
        .join(Membership, Membership.federation_id == Federation.id)
        .where(Membership.client_id == client.id, Federation.id == federation_id)
    ).first()
    if row is None:
        raise NotFoundError.of("federation membership", federation_id)
    fed, m = row
    expected = fed.model_spec["fingerprint"]
    if body.fingerprint != expected:
        raise InvalidInputError(
            f"fingerprint {body.fingerprint[:12]}... does not match the federation's base model "
            f"({expected[:12]}...): load {fed.base_model_id} at the exact revision and "
            "configuration the federation uses, then report again"
        )
    m.fingerprint = body.fingerprint
    m.fingerprint_reported_at = utcnow()
    if fed.status == FederationStatus.RUNNING and not session.scalar(
        sa.select(sa.func.count())
        .select_from(Round)
        .where(Round.federation_id == fed.id, Round.state.in_(ACTIVE_ROUND_STATES))
    ):
        request_open(session, fed.id, utcnow())  # a newly eligible member may unblock a round
    queue.commit_and_flush(session, enqueue)
    return _info(session, fed, m)


def _leasable(client_id: uuid.UUID, now: datetime) -> sa.Select[Any]:
    return (
        sa.select(Task.id)
        .join(Round, Round.id == Task.round_id)
        .join(Federation, Federation.id == Task.federation_id)
        .where(
            Task.client_id == client_id,
            Round.state == RoundState.OPEN,
            Round.deadline_at > now,
            sa.or_(
                Federation.status == FederationStatus.RUNNING,
                # the evaluation pass scores the final adapter after the federation completed
                sa.and_(
                    Round.kind == RoundKind.EVALUATION,
                    Federation.status == FederationStatus.COMPLETED,
                ),
            ),
            _lease_free(now),
        )
        .order_by(Round.opened_at, Task.id)
    )


def _lease_free(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        Task.status == TaskStatus.PENDING,
        sa.and_(Task.status == TaskStatus.LEASED, Task.lease_expires_at < now),
    )


def lease_next_task(
    *, session: Session, client_id: uuid.UUID, lease_seconds: float, now: datetime | None = None
) -> Task | None:
    """Lease the calling client's oldest free task, or return ``None``; commits."""
    now = now or utcnow()
    stmt = _leasable(client_id, now).limit(5)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=Task)
    candidates = list(session.scalars(stmt))
    for task_id in candidates:
        res = session.execute(
            sa.update(Task)
            .where(Task.id == task_id, _lease_free(now))
            .values(
                status=TaskStatus.LEASED,
                lease_owner=client_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                leased_at=now,
                lease_count=Task.lease_count + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if int(res.rowcount) == 1:  # type: ignore[attr-defined]
            session.commit()
            return session.get_one(Task, task_id, populate_existing=True)
    session.rollback()
    return None


def client_task(*, session: Session, client: Client, task_id: uuid.UUID) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.client_id != client.id:
        raise NotFoundError.of("task", task_id)
    return task


def leased_task(*, session: Session, client: Client, task_id: uuid.UUID) -> Task:
    """The client's task, which it must hold the lease of (to download or upload for it)."""
    task = client_task(session=session, client=client, task_id=task_id)
    if task.status != TaskStatus.LEASED or task.lease_owner != client.id:
        raise ConflictError(
            f"task {task_id} is {task.status}, not leased by you: "
            "take it with GET /api/v1/client/tasks/next first"
        )
    return task


def assignment(*, session: Session, task: Task) -> TaskAssignment:
    rnd = session.get_one(Round, task.round_id)
    expires = task.lease_expires_at or rnd.deadline_at
    return TaskAssignment(
        task_id=str(task.id),
        federation_id=str(task.federation_id),
        round_number=rnd.number,
        lease_expires_at=expires.isoformat(),
        deadline_at=rnd.deadline_at.isoformat(),
        plan=TrainingPlan.model_validate(task.plan),
    )


def report_task(*, session: Session, client: Client, task_id: uuid.UUID, body: TaskReport) -> Task:
    """Attach evaluation metrics to an uploaded task (optional; after the upload)."""
    task = client_task(session=session, client=client, task_id=task_id)
    if task.status not in (TaskStatus.UPLOADED, TaskStatus.REPORTED):
        raise ConflictError(
            f"task {task_id} is {task.status}: upload the update before reporting metrics"
        )
    task.report_metrics = dict(body.metrics)
    task.reported_at = utcnow()
    task.status = TaskStatus.REPORTED
    session.commit()
    return task
